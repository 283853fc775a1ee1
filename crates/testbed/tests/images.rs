//! `testbed lock` and `testbed build` on the bundled example, as a user runs
//! them: these use the host's apt sources and mmdebstrap (installed by
//! scripts/setup-host.sh), and build real images into a temporary store.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn testbed(args: &[&str], cwd: &Path, store: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env("TESTBED_STORE", store)
        .output()
        .expect("run testbed")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A copy of examples/slurm without its lock, so the test locks against
/// today's archive and does not break when Debian publishes a point release.
fn example_copy(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/slurm");
    let dst = dir.join("slurm");
    std::fs::create_dir_all(&dst).expect("mkdir");
    for f in ["testbed.toml", "slurm.conf.j2"] {
        std::fs::copy(src.join(f), dst.join(f)).expect("copy");
    }
    dst
}

#[test]
fn unknown_package_fails_with_suggestions_and_leaves_the_store_alone() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = dir.path().join("store");
    std::fs::write(
        dir.path().join("testbed.toml"),
        "[roles.ctl]\npackages = [\"slurmctl\"]\n",
    )
    .expect("write");
    let out = testbed(&["build"], dir.path(), &store);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("role `ctl`: package `slurmctl` does not exist"),
        "{err}"
    );
    assert!(err.contains("slurmctld"), "suggests the close name: {err}");
    assert!(
        !dir.path().join("testbed.lock").exists(),
        "no lock is written"
    );
    let entries = std::fs::read_dir(&store).map(|d| d.count()).unwrap_or(0);
    assert_eq!(entries, 0, "the store is unchanged");
}

#[test]
fn build_example_then_nothing_to_rebuild() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = dir.path().join("store");
    let comp = example_copy(dir.path());

    let first = testbed(&["build", "--json"], &comp, &store);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stderr).contains("created"),
        "a missing lock is created and reported"
    );
    assert!(comp.join("testbed.lock").exists());
    let built: serde_json::Value = serde_json::from_slice(&first.stdout).expect("json");
    let roles: Vec<&str> = built
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|b| b["role"].as_str())
        .collect();
    assert_eq!(roles, ["ctl", "compute"]);
    for b in built.as_array().expect("array") {
        let entry = PathBuf::from(b["dir"].as_str().expect("dir"));
        for f in [
            "kernel",
            "initramfs",
            "rootfs.erofs",
            "rootfs.tar",
            "manifest.json",
        ] {
            assert!(entry.join(f).is_file(), "{} has {f}", entry.display());
        }
    }

    let lock_before = std::fs::read(comp.join("testbed.lock")).expect("lock");
    let second = testbed(&["build"], &comp, &store);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).contains("nothing to rebuild"),
        "{}",
        text(&second.stdout)
    );
    assert_eq!(
        std::fs::read(comp.join("testbed.lock")).expect("lock"),
        lock_before,
        "build never changes the lock"
    );

    // Re-locking with nothing changed keeps the file byte for byte.
    let relock = testbed(&["lock", "--update"], &comp, &store);
    assert!(relock.status.success(), "{}", text(&relock.stderr));
    assert_eq!(
        std::fs::read(comp.join("testbed.lock")).expect("lock"),
        lock_before
    );

    // A role package the lock does not know makes the lock stale.
    let toml = std::fs::read_to_string(comp.join("testbed.toml")).expect("read");
    std::fs::write(
        comp.join("testbed.toml"),
        toml.replace(
            "packages = [\"slurmd\"]",
            "packages = [\"slurmd\", \"hwloc\"]",
        ),
    )
    .expect("write");
    let stale = testbed(&["build"], &comp, &store);
    assert_eq!(stale.status.code(), Some(2), "{}", text(&stale.stderr));
    assert!(
        text(&stale.stderr).contains("run `testbed lock`"),
        "{}",
        text(&stale.stderr)
    );

    let ls = testbed(&["store", "ls", "--json"], &comp, &store);
    assert!(ls.status.success(), "{}", text(&ls.stderr));
    let entries: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("json");
    assert_eq!(entries.as_array().map(Vec::len), Some(2));
}
