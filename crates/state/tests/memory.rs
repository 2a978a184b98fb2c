//! The conformance suite on the in-memory engine, with every object in memory and with every
//! object's bytes in files; and where the spilling engine keeps which bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

flwr_state::conformance_tests!(|clock| async move { flwr_state::in_memory(clock) });

mod spilling {
    flwr_state::conformance_tests!(|clock| async move {
        let all_to_files = flwr_state::spill::SpillPolicy {
            dir: std::env::temp_dir(),
            threshold: 0,
            budget: 0,
            max_files: usize::MAX,
        };
        flwr_state::in_memory_spilling(clock, Some(all_to_files))
    });
}

mod where_bytes_wait {
    use bytes::Bytes;
    use flwr_objects::store::Lookup;
    use flwr_objects::{ObjectId, ObjectTree};
    use flwr_state::objects::MemoryObjects;
    use flwr_state::spill::SpillPolicy;
    use flwr_state::ObjectStore;

    /// A root with one leaf per content; the contents by id.
    fn tree(contents: &[Bytes]) -> (ObjectTree, Vec<(ObjectId, Bytes)>) {
        let leaves: Vec<(ObjectId, Bytes)> = contents
            .iter()
            .map(|c| (ObjectId::of(c), c.clone()))
            .collect();
        let root = Bytes::from_static(b"root");
        let t = ObjectTree {
            id: ObjectId::of(&root),
            children: leaves.iter().map(|(id, _)| ObjectTree::leaf(*id)).collect(),
        };
        let mut all = leaves;
        all.push((t.id, root));
        (t, all)
    }

    #[tokio::test]
    async fn large_objects_in_files_small_ones_in_memory_up_to_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryObjects::new(Some(SpillPolicy {
            dir: dir.path().to_owned(),
            threshold: 1000,
            budget: 3000,
            max_files: 2,
        }));
        let big = Bytes::from(vec![7u8; 2000]);
        let smalls: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(vec![i; 800])).collect();
        let mut contents = vec![big.clone()];
        contents.extend(smalls.iter().cloned());
        let (t, objects) = tree(&contents);
        store.preregister(1, &t).await.unwrap();

        assert!(store.put(&ObjectId::of(&big), big.clone()).await.unwrap());
        assert_eq!(store.inline_bytes(), 0, "at the threshold: in a file");
        for s in &smalls[..3] {
            assert!(store.put(&ObjectId::of(s), s.clone()).await.unwrap());
        }
        assert_eq!(store.inline_bytes(), 2400, "small ones in memory");
        assert!(store
            .put(&ObjectId::of(&smalls[3]), smalls[3].clone())
            .await
            .unwrap());
        assert_eq!(store.inline_bytes(), 2400, "beyond the budget: in a file");
        assert!(store
            .put(&t.id, objects.last().unwrap().1.clone())
            .await
            .unwrap());
        assert_eq!(store.content_bytes().await.unwrap(), 2000 + 4 * 800 + 4);
        assert_eq!(store.open_files(), 2);
        // At the cap of open files, a large object stays in memory.
        let large = Bytes::from(vec![9u8; 1500]);
        let other = ObjectTree::leaf(ObjectId::of(&large));
        store.preregister(2, &other).await.unwrap();
        assert!(store.put(&other.id, large).await.unwrap());
        assert_eq!(store.open_files(), 2, "no third file");
        assert_eq!(store.inline_bytes(), 2404 + 1500);
        store.delete(&other.id).await.unwrap();

        for (id, content) in &objects {
            assert_eq!(
                store.get(id).await.unwrap(),
                Lookup::Available(content.clone()),
                "{id} reads back whole"
            );
        }
        store.delete(&t.id).await.unwrap();
        assert_eq!(store.len().await.unwrap(), 0);
        assert_eq!(
            store.inline_bytes(),
            0,
            "memory given back with the objects"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing left in the directory (the files have no names)"
        );
    }

    #[tokio::test]
    async fn a_directory_that_takes_no_files_keeps_objects_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let policy = SpillPolicy {
            dir: dir.path().join("missing"),
            threshold: 0,
            budget: 0,
            max_files: usize::MAX,
        };
        let store = MemoryObjects::new(Some(policy));
        let content = Bytes::from(vec![1u8; 5000]);
        let (t, objects) = tree(std::slice::from_ref(&content));
        store.preregister(1, &t).await.unwrap();
        for (id, c) in &objects {
            assert!(store.put(id, c.clone()).await.unwrap());
        }
        assert_eq!(store.inline_bytes(), 5000 + 4, "kept in memory");
        assert_eq!(
            store.get(&ObjectId::of(&content)).await.unwrap(),
            Lookup::Available(content)
        );
    }

    /// A store that spills every object, holding `contents` (all in files).
    async fn spilling(dir: &std::path::Path, contents: &[Bytes]) -> MemoryObjects {
        let store = MemoryObjects::new(Some(SpillPolicy {
            dir: dir.to_owned(),
            threshold: 0,
            budget: 0,
            max_files: usize::MAX,
        }));
        let (t, objects) = tree(contents);
        store.preregister(1, &t).await.unwrap();
        for (id, c) in &objects {
            assert!(store.put(id, c.clone()).await.unwrap());
        }
        assert_eq!(store.inline_bytes(), 0, "in files");
        store
    }

    /// The bytes of `content` read back from `store`.
    async fn read_back(store: &MemoryObjects, content: &Bytes) -> Bytes {
        match store.get(&ObjectId::of(content)).await.unwrap() {
            Lookup::Available(b) => b,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn readers_of_a_spilled_object_at_the_same_time_share_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let content = Bytes::from(vec![3u8; 100_000]);
        let store = spilling(dir.path(), std::slice::from_ref(&content)).await;
        let read = || read_back(&store, &content);
        let first = read().await;
        let second = read().await;
        assert_eq!(first, content);
        assert_eq!(
            first.as_ptr(),
            second.as_ptr(),
            "the second reader gets the first one's bytes"
        );
        drop((first, second));
        // Nobody holds them any more: the next reader reads the file again, and gets it whole.
        let third = read().await;
        assert_eq!(third, content);
    }

    #[tokio::test]
    async fn a_spilled_read_reuses_the_buffer_of_an_earlier_one_and_reads_exactly_its_object() {
        let dir = tempfile::tempdir().unwrap();
        // A large object, then a smaller one: the second read lands in the first one's buffer
        // and must see none of its bytes.
        let large = Bytes::from(vec![1u8; 300_000]);
        let small = Bytes::from((0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let store = spilling(dir.path(), &[large.clone(), small.clone()]).await;
        let read = |c: Bytes| {
            let store = &store;
            async move { read_back(store, &c).await }
        };
        let first = read(large.clone()).await;
        assert_eq!(first, large);
        let at = first.as_ptr();
        drop(first);
        let second = read(small.clone()).await;
        assert_eq!(second.as_ptr(), at, "the first read's buffer is reused");
        assert_eq!(second, small);
        // While a reader holds it, a read of the same object shares it and others get their own.
        let third = read(large.clone()).await;
        assert_ne!(third.as_ptr(), at);
        assert_eq!((second, third), (small, large));
    }

    #[tokio::test]
    async fn the_file_of_a_delivered_object_takes_the_next_one_which_reads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let first = Bytes::from(vec![1u8; 300_000]);
        let store = spilling(dir.path(), std::slice::from_ref(&first)).await;
        // A tree of one leaf and the root: two files.
        assert_eq!(store.open_files(), 2);
        for (i, len) in [(2u8, 200_000), (3, 250_000)] {
            store.delete_objects_in_run(1).await.unwrap();
            assert_eq!(
                store.open_files(),
                2,
                "the files are kept for the next objects"
            );
            // Smaller than the file it lands in: its read must not run into the old bytes.
            let next = Bytes::from(vec![i; len]);
            let (t, objects) = tree(std::slice::from_ref(&next));
            store.preregister(1, &t).await.unwrap();
            for (id, c) in &objects {
                assert!(store.put(id, c.clone()).await.unwrap());
            }
            assert_eq!(store.open_files(), 2, "no new file");
            assert_eq!(read_back(&store, &next).await, next);
        }
        // Larger than every kept file: one grows, and reads back whole.
        store.delete_objects_in_run(1).await.unwrap();
        let large = Bytes::from(vec![4u8; 500_000]);
        let (t, objects) = tree(std::slice::from_ref(&large));
        store.preregister(1, &t).await.unwrap();
        for (id, c) in &objects {
            assert!(store.put(id, c.clone()).await.unwrap());
        }
        assert_eq!(store.open_files(), 2);
        assert_eq!(read_back(&store, &large).await, large);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
