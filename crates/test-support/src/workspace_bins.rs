//! Builds the workspace's binaries an integration test runs (the guest
//! agent every image carries, the CLI) into the test's own target directory
//! and profile: an integration test cannot depend on another package's
//! binary, and `cargo test -p PACKAGE` does not build it.
//!
//! The build selects the whole workspace, as `cargo test --workspace` does,
//! so that it is a no-op after that and never replaces its binaries: built
//! alone (`-p testbed-agent`) the agent's dependencies' features unify
//! differently and give another binary — hence another key for every image
//! and a rebuild of them all (this once filled CI's disk).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds `bins` with the workspace's features and returns the folder they
/// are in (`<target>/<profile>`, the parent of the test's `deps`).
pub fn build_workspace_bins(bins: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("the target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--locked", "--workspace"]);
    for bin in bins {
        cmd.args(["--bin", bin]);
    }
    let out = cmd
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for bin in bins {
        let path = profile_dir.join(bin);
        assert!(path.is_file(), "no {bin} at {}", path.display());
    }
    profile_dir.to_path_buf()
}

/// The guest agent binary, built once per test process with
/// [`build_workspace_bins`]; it is beside the test's `testbed` binary,
/// where the CLI looks for it. `cargo test --workspace` has built it
/// already (then this is a no-op), `cargo test -p PACKAGE` has not.
pub fn agent_binary() -> &'static Path {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT.get_or_init(|| build_workspace_bins(&["testbed-agent"]).join("testbed-agent"))
}
