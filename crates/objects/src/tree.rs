//! Object trees: the shape of a message's objects, children before parents when walked.

use crate::id::ObjectId;

/// An object and its children, mirroring the child lists of the object heads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectTree {
    /// The object.
    pub id: ObjectId,
    /// Its children, in head order.
    pub children: Vec<ObjectTree>,
}

impl ObjectTree {
    /// A leaf.
    pub fn leaf(id: ObjectId) -> Self {
        Self {
            id,
            children: Vec::new(),
        }
    }

    /// Visits every node in post-order (children first, the root last), as Flower walks trees
    /// to pre-register, push and pull them.
    pub fn post_order(&self) -> Vec<&ObjectTree> {
        let mut out = Vec::new();
        fn walk<'a>(t: &'a ObjectTree, out: &mut Vec<&'a ObjectTree>) {
            for c in &t.children {
                walk(c, out);
            }
            out.push(t);
        }
        walk(self, &mut out);
        out
    }

    /// Number of nodes (with repetitions).
    pub fn len(&self) -> usize {
        1 + self.children.iter().map(ObjectTree::len).sum::<usize>()
    }

    /// Never empty: a tree has at least its root.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_order_puts_the_root_last() {
        let a = ObjectId::of(b"a");
        let b = ObjectId::of(b"b");
        let c = ObjectId::of(b"c");
        let t = ObjectTree {
            id: c,
            children: vec![ObjectTree {
                id: b,
                children: vec![ObjectTree::leaf(a)],
            }],
        };
        let ids: Vec<ObjectId> = t.post_order().iter().map(|n| n.id).collect();
        assert_eq!(ids, vec![a, b, c]);
        assert_eq!(t.len(), 3);
    }
}
