//! Fleet and ServerAppIo message pushes as peers send them: decoded, converted to the domain and
//! validated as the SuperLink does.
#![no_main]

use flwr_proto::convert::{message_from_pb, tree_from_pb};
use flwr_proto::proto as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let (messages, trees) = if which % 2 == 0 {
        let Ok(r) = pb::PushMessagesRequest::decode(bytes) else {
            return;
        };
        (r.messages_list, r.message_object_trees)
    } else {
        let Ok(r) = pb::PushAppMessagesRequest::decode(bytes) else {
            return;
        };
        (r.messages_list, r.message_object_trees)
    };
    for m in &messages {
        if let Ok(meta) = message_from_pb(m) {
            let _ = meta.validate(which % 4 < 2, 1.7e9);
        }
    }
    for t in &trees {
        let _ = tree_from_pb(t);
    }
});
