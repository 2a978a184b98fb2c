//! Only tests live here (`tests/docker.rs`): they build the images and run them as the Flower TLS
//! page shows.
