//! What the cache's tests share.

use testbed_image::manifest::KeyInputs;

/// The inputs of a made-up image (its key changes with `kernel`).
pub fn inputs(kernel: &str) -> KeyInputs {
    KeyInputs {
        builder: "test".into(),
        vendor: "debian".into(),
        suite: "bookworm".into(),
        mirror: None,
        architecture: "amd64".into(),
        kernel: kernel.into(),
        always: vec![],
        source_date_epoch: 0,
        packages: vec![],
        debconf: vec![],
        files: vec![],
        agent: None,
    }
}
