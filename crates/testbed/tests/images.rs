//! `testbed lock`, `testbed build` and `testbed verify` on the bundled
//! example, as a user runs them: these use the host's apt sources and
//! mmdebstrap (installed by scripts/setup-host.sh), and build real images
//! into a store. The example is built once (or found in the store the VM
//! tests share); `verify` then rebuilds it in a fresh store and compares
//! every output, which is the reproducibility proof of the example's
//! images.

mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Output;

use support::testbed_command;
use testbed_test_support::{agent_binary, copy_example, text};

/// `testbed ARGS` in `cwd` with its own store (these tests measure what a
/// build puts there), the agent found the way an installed testbed finds
/// it.
fn testbed(args: &[&str], cwd: &Path, store: &Path) -> Output {
    agent_binary();
    testbed_command(args, cwd)
        .env("TESTBED_STORE", store)
        // The CLI must find the agent beside itself, as an installed
        // testbed does.
        .env_remove("TESTBED_AGENT")
        .output()
        .expect("run testbed")
}

/// One entry of a `rootfs.tar.gz`: its type, mode and link target.
#[derive(Debug)]
struct TarEntry {
    kind: tar::EntryType,
    mode: u32,
    link: Option<String>,
}

/// Every entry of a container archive by path (`etc/hostname`), and the
/// bytes of the few files named in `read`.
fn read_tar(
    path: &Path,
    read: &[&str],
) -> (
    std::collections::BTreeMap<String, TarEntry>,
    std::collections::BTreeMap<String, Vec<u8>>,
) {
    use std::io::Read;
    let mut entries = std::collections::BTreeMap::new();
    let mut contents = std::collections::BTreeMap::new();
    let gz = File::open(path).expect("open rootfs.tar.gz");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(gz)));
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        let header = entry.header();
        let info = TarEntry {
            kind: header.entry_type(),
            mode: header.mode().expect("mode"),
            link: entry
                .link_name()
                .expect("link")
                .map(|l| l.to_string_lossy().into_owned()),
        };
        if read.contains(&name.as_str()) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("read");
            contents.insert(name.clone(), bytes);
        }
        entries.insert(name, info);
    }
    (entries, contents)
}

/// What every image must carry: the agent (the very binary the CLI found)
/// with its unit enabled, OpenSSH without host keys and not enabled, the
/// TCG trims.
fn check_image(role: &str, entry: &Path) {
    let agent = "usr/local/bin/testbed-agent";
    let (entries, contents) = read_tar(&entry.join("rootfs.tar.gz"), &[agent]);
    let get = |p: &str| {
        entries
            .get(p)
            .unwrap_or_else(|| panic!("{role}: {p} is not in rootfs.tar.gz"))
    };
    let bin = get(agent);
    assert_eq!((bin.kind, bin.mode), (tar::EntryType::Regular, 0o755));
    assert_eq!(
        contents.get(agent),
        Some(&std::fs::read(agent_binary()).expect("agent")),
        "{role}: the installed agent is the one beside testbed"
    );
    assert_eq!(
        get("etc/systemd/system/testbed-agent.service").kind,
        tar::EntryType::Regular
    );
    let enabled = get("etc/systemd/system/sysinit.target.wants/testbed-agent.service");
    assert_eq!(
        (enabled.kind, enabled.link.as_deref()),
        (
            tar::EntryType::Symlink,
            Some("/etc/systemd/system/testbed-agent.service")
        ),
        "{role}: the agent's unit is enabled"
    );
    assert_eq!(get("usr/sbin/sshd").kind, tar::EntryType::Regular);
    let keys: Vec<&String> = entries
        .keys()
        .filter(|p| p.starts_with("etc/ssh/ssh_host_"))
        .collect();
    assert!(keys.is_empty(), "{role}: host keys in the image: {keys:?}");
    // Enablement links live in /etc/systemd/system (deb-systemd-helper's
    // records under /var/lib/systemd only remember what the package asked
    // for).
    let enabled_ssh: Vec<&String> = entries
        .keys()
        .filter(|p| p.starts_with("etc/systemd/system/"))
        .filter(|p| p.ends_with(".wants/ssh.service") || p.ends_with(".wants/ssh.socket"))
        .collect();
    assert!(enabled_ssh.is_empty(), "{role}: {enabled_ssh:?}");
    assert_eq!(
        get("etc/systemd/system/getty-static.service")
            .link
            .as_deref(),
        Some("/dev/null"),
        "{role}: masked"
    );
    get("etc/systemd/journald.conf.d/testbed.conf");
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
fn build_example_then_nothing_to_rebuild_and_verify_finds_it_identical() {
    let dir = tempfile::tempdir().expect("tmp");
    // The store the VM tests share: when one of them ran first, the build
    // finds its images there (and `verify` below still rebuilds every role
    // from scratch and compares); run alone, this test builds them. Either
    // way CI builds the example's images once instead of twice.
    let store = support::store();
    // A copy of examples/slurm without its lock, so the test locks against
    // today's archive and does not break when Debian publishes a point
    // release.
    let comp = dir.path().join("slurm");
    copy_example("slurm", &comp, |t| t);

    let first = testbed(&["build", "--json"], &comp, &store);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stderr).contains("created"),
        "a missing lock is created and reported"
    );
    assert!(comp.join("testbed.lock").exists());
    let built: serde_json::Value = serde_json::from_slice(&first.stdout).expect("json");
    let built = built.as_array().expect("array");
    let roles: Vec<&str> = built.iter().filter_map(|b| b["role"].as_str()).collect();
    assert_eq!(roles, ["ctl", "nfs", "compute"]);
    for b in built {
        let role = b["role"].as_str().expect("role");
        let entry = PathBuf::from(b["dir"].as_str().expect("dir"));
        for f in [
            "kernel",
            "initramfs",
            "rootfs.erofs",
            "rootfs.tar.gz",
            "rootfs.files",
            "manifest.json",
        ] {
            assert!(entry.join(f).is_file(), "{} has {f}", entry.display());
        }
        check_image(role, &entry);
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

    // `verify` rebuilds every role in a fresh store and compares each
    // output's digest with the store's: the example's images are
    // reproducible.
    let verify = testbed(&["verify"], &comp, &store);
    let (stdout, stderr) = (text(&verify.stdout), text(&verify.stderr));
    assert!(verify.status.success(), "{stdout}\n{stderr}");
    for b in built {
        let role = b["role"].as_str().expect("role");
        let key = b["key"].as_str().expect("key");
        // Every output of the entry is compared (all but the manifest).
        let outputs = std::fs::read_dir(b["dir"].as_str().expect("dir"))
            .expect("entry")
            .flatten()
            .filter(|e| e.file_name() != "manifest.json")
            .count();
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(role))
            .unwrap_or_else(|| panic!("no verdict for {role}: {stdout}"));
        assert!(
            line.contains(&format!("identical ({outputs} outputs, {})", &key[..12])),
            "{line}"
        );
        // It really rebuilt, rather than comparing the store with itself.
        assert!(
            stderr.contains(&format!("{role}: built {}", &key[..12])),
            "{stderr}"
        );
    }
    let leftovers: Vec<String> = std::fs::read_dir(store.join(".tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.iter().all(|n| !n.starts_with("verify")),
        "an identical rebuild is removed: {leftovers:?}"
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
    let edited = toml.replace(
        "packages = [\"nfs-kernel-server\"]",
        "packages = [\"nfs-kernel-server\", \"hwloc\"]",
    );
    assert_ne!(edited, toml, "the example changed; update this test");
    std::fs::write(comp.join("testbed.toml"), edited).expect("write");
    let stale = testbed(&["build"], &comp, &store);
    assert_eq!(stale.status.code(), Some(2), "{}", text(&stale.stderr));
    assert!(
        text(&stale.stderr).contains("run `testbed lock`"),
        "{}",
        text(&stale.stderr)
    );

    let ls = testbed(&["store", "ls", "--json"], &comp, &store);
    assert!(ls.status.success(), "{}", text(&ls.stderr));
    let ls: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("json");
    let entries = ls["entries"].as_array().expect("array");
    // Every package the example's lock names is in the package cache.
    assert!(
        ls["packages"]["count"].as_u64().expect("count") >= 145,
        "{ls}"
    );
    // The shared store may hold other tests' images too.
    for b in built {
        assert!(
            entries.iter().any(|e| e["key"] == b["key"]),
            "{} is listed: {entries:?}",
            b["key"]
        );
    }
}
