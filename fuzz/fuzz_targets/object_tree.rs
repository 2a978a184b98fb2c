//! Object trees as peers send them (protobuf), converted and pre-registered in the store, then
//! rebuilt from the store.
#![no_main]

use flwr_objects::store::MemoryObjectStore;
use flwr_proto::convert::tree_from_pb;
use flwr_proto::proto as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(wire) = pb::ObjectTree::decode(data) else {
        return;
    };
    let Ok(tree) = tree_from_pb(&wire) else {
        return;
    };
    let store: MemoryObjectStore = MemoryObjectStore::new();
    let to_push = store.preregister(1, &tree).expect("memory store");
    assert!(to_push.len() <= tree.len());
    let _ = store.tree(&tree.id).expect("memory store");
    store.delete_objects_in_run(1).expect("memory store");
});
