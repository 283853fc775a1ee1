//! The repository's `examples/`.

use std::path::{Path, PathBuf};

/// The repository's root (where `examples/` is).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Copies every file of `examples/NAME` but its lock (and a local run's
/// `testbed-artifacts`) into `dst`, with `edit` applied to its
/// testbed.toml; returns the names of the files copied. Without the lock,
/// a test locks against today's archive and does not break when Debian
/// publishes a point release.
pub fn copy_example(name: &str, dst: &Path, edit: impl Fn(String) -> String) -> Vec<String> {
    let src = repo_root().join("examples").join(name);
    std::fs::create_dir_all(dst).expect("mkdir");
    let mut copied = Vec::new();
    for entry in std::fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("examples/{name}: {e}"))
        .flatten()
    {
        let file = entry.file_name();
        let skip = file == "testbed.lock" || file == "testbed-artifacts";
        if skip || !entry.path().is_file() {
            continue;
        }
        std::fs::copy(entry.path(), dst.join(&file)).expect("copy");
        copied.push(file.to_string_lossy().into_owned());
    }
    let toml = dst.join("testbed.toml");
    let text = std::fs::read_to_string(&toml).expect("read");
    std::fs::write(&toml, edit(text)).expect("write");
    copied
}
