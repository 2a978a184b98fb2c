//! Object contents as peers push them: the head parser and the id/structure check.
#![no_main]

use flwr_objects::{content, ObjectId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = content::parse(data) {
        // What the parser accepted must check out against its own id.
        let id = ObjectId::of(data);
        let verified = content::verify(&id, data).expect("a parsed head verifies");
        assert_eq!(verified.object_type, head.object_type);
    }
    let _ = content::verify(&ObjectId::of(b"other"), data);
});
