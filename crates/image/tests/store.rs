//! Locking, building and the store against the real archive: the lock is
//! stable under re-locking, an unknown package is reported with suggestions
//! and leaves the store alone, two builds in two empty stores are
//! bit-identical (the CI reproducibility proof), a second build is a cache
//! hit, and `gc` removes what no lock uses.
//!
//! Needs root (mmdebstrap in root mode), network access to the host's apt
//! sources, and the packages of `scripts/host-packages.txt`. The package
//! set is the smallest a node image has (the always-needed set and the
//! kernel), to keep CI fast: each build takes 30-60 s here.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use testbed_image::lock::{lock, LockOptions, Lockfile};
use testbed_image::{build, BuildOptions, Event, ImageError, ImageSpec, StaticFile, Store};

fn spec(role: &str, packages: &[&str]) -> ImageSpec {
    ImageSpec {
        role: role.into(),
        vendor: "debian".into(),
        suite: "bookworm".into(),
        mirror: None,
        kernel: "linux-image-cloud-amd64".into(),
        packages: packages.iter().map(|p| p.to_string()).collect(),
        debconf: vec![],
        files: vec![StaticFile {
            path: "/etc/testbed/role.conf".into(),
            content: b"answer = 42\n".to_vec(),
            mode: 0o640,
            owner: Some("root:adm".into()),
        }],
        agent: None,
    }
}

/// Records progress events, to check what the builder did.
#[derive(Default)]
struct Log(Mutex<Vec<Event>>);

impl testbed_image::Progress for Log {
    fn event(&self, event: Event) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event);
        }
    }
}

impl Log {
    fn take(&self) -> Vec<Event> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// Every file under `dir` with its size: a cheap fingerprint of a store.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = p.symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p, m.len());
        }
    }
    out
}

#[test]
fn lock_is_stable_and_unknown_packages_get_suggestions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = vec![spec("ctl", &["curl"]), spec("compute", &[])];
    let first = lock(&specs, None, &LockOptions::default(), &Log::default()).expect("locks");
    let ctl = &first.roles["ctl"];
    let names: Vec<&str> = ctl.packages.iter().map(|p| p.name.as_str()).collect();
    for needed in [
        "curl",
        "systemd",
        "udev",
        "busybox-static",
        "apt",
        "dpkg",
        "base-files",
    ] {
        assert!(names.contains(&needed), "{needed} missing from {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("linux-image-")));
    assert!(ctl.packages.iter().all(|p| p.sha256.len() == 64));
    assert!(
        ctl.packages.windows(2).all(|w| w[0].name < w[1].name),
        "sorted"
    );
    assert!(first.roles["compute"].packages.len() < ctl.packages.len());

    let path = dir.path().join("testbed.lock");
    first.write(&path).expect("writes");
    let text = fs::read_to_string(&path).expect("reads");
    let reread = Lockfile::read(&path).expect("parses");
    assert_eq!(reread, first);
    first.check_fresh(&specs, &path).expect("fresh");

    // Re-locking with nothing changed gives the same bytes.
    let second = lock(
        &specs,
        Some(&reread),
        &LockOptions::default(),
        &Log::default(),
    )
    .expect("re-locks");
    assert_eq!(second.to_toml(), text);

    // A role that gained a package is stale.
    let grown = vec![spec("ctl", &["curl", "jq"]), spec("compute", &[])];
    let err = first.check_fresh(&grown, &path).expect_err("stale");
    assert!(err.to_string().contains("`jq`") && err.to_string().contains("testbed lock"));

    // An unknown package names the role, the package and close names, and
    // touches neither the lock nor the store.
    let store_dir = dir.path().join("store");
    let store = Store::open(&store_dir).expect("store");
    let before = snapshot(&store_dir);
    let typo = vec![spec("ctl", &["curll"])];
    let err = lock(
        &typo,
        Some(&first),
        &LockOptions::default(),
        &Log::default(),
    )
    .expect_err("unknown package");
    match &err {
        ImageError::UnknownPackage {
            role,
            package,
            suggestions,
            ..
        } => {
            assert_eq!(role, "ctl");
            assert_eq!(package, "curll");
            assert!(suggestions.iter().any(|s| s == "curl"), "{suggestions:?}");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("did you mean `curl`"), "{err}");
    // Building with the stale lock fails before touching the store.
    let err = build(
        &store,
        &typo,
        &first,
        &BuildOptions {
            lock_path: Some(path.clone()),
            ..Default::default()
        },
        &Log::default(),
    )
    .expect_err("stale lock");
    assert!(err.to_string().contains("run `testbed lock`"), "{err}");
    assert_eq!(snapshot(&store_dir), before);
    assert_eq!(fs::read_to_string(&path).expect("reads"), text);
}

#[test]
fn builds_are_reproducible_cached_shared_and_collected() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two roles with identical inputs share one image.
    let specs = vec![spec("a", &[]), spec("b", &[])];
    let lockfile = lock(&specs, None, &LockOptions::default(), &Log::default()).expect("locks");
    let lock_path = dir.path().join("testbed.lock");
    lockfile.write(&lock_path).expect("writes");
    let options = BuildOptions {
        lock_path: Some(lock_path.clone()),
        ..Default::default()
    };

    let store_a = Store::open(&dir.path().join("a")).expect("store a");
    let store_b = Store::open(&dir.path().join("b")).expect("store b");
    // Both stores build at once: the CI reproducibility proof costs one
    // build's wall time on a machine with two cores.
    let log_a = Log::default();
    let (built_a, built_b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| build(&store_a, &specs, &lockfile, &options, &log_a));
        let b = scope.spawn(|| {
            build(
                &store_b,
                &specs[..1],
                &lockfile,
                &BuildOptions::default(),
                &Log::default(),
            )
        });
        (a.join(), b.join())
    });
    let built_a = built_a.expect("thread a").expect("build a");
    let built_b = built_b.expect("thread b").expect("build b");
    assert_eq!(built_a.len(), 2);
    assert_eq!(
        built_a[0].key, built_a[1].key,
        "identical inputs share a key"
    );
    let events = log_a.take();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Built { .. }))
            .count(),
        1,
        "built once: {events:?}"
    );
    let entry = &built_a[0];
    for name in [
        "kernel",
        "initramfs",
        "rootfs.erofs",
        "rootfs.tar.gz",
        "manifest.json",
    ] {
        assert!(entry.output(name).is_file(), "{name} missing");
    }
    let listing = fs::read_to_string(entry.output("rootfs.files")).expect("listing");
    assert!(
        listing.contains("/etc/testbed/role.conf\t100640\t0:4\t"),
        "static file"
    );
    // OpenSSH is in every image, without host keys (sent per node at
    // activation) and not enabled (activation starts services).
    assert!(listing.contains("\n/usr/sbin/sshd\t"), "sshd installed");
    assert!(!listing.contains("/etc/ssh/ssh_host_"));
    for unit in ["ssh.service", "ssh.socket"] {
        assert!(
            !listing
                .lines()
                .any(|l| l.starts_with("/etc/systemd/system/")
                    && l.contains(&format!(".wants/{unit}\t"))),
            "{unit} not enabled"
        );
    }
    let machine_id = listing
        .lines()
        .find(|l| l.starts_with("/etc/machine-id\t"))
        .expect("machine-id listed");
    assert!(
        machine_id
            .ends_with("\tfile 0 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        "{machine_id}"
    );
    assert!(
        !listing.contains("/etc/systemd/system/timers.target.wants/apt-daily"),
        "services disabled"
    );

    // Two builds from two empty stores are bit-identical.
    assert_eq!(built_b[0].key, entry.key);
    for (name, out) in &entry.manifest.outputs {
        assert_eq!(
            Some(&out.sha256),
            built_b[0].manifest.outputs.get(name).map(|o| &o.sha256),
            "{name} differs between two builds"
        );
    }

    // A second build is a cache hit: no work (only cache-hit events). Its
    // speed is measured by bench/, not asserted here: this machine is noisy.
    let log = Log::default();
    let again = build(&store_a, &specs, &lockfile, &options, &log).expect("cached");
    assert!(again.iter().all(|b| b.cached));
    assert!(log
        .take()
        .iter()
        .all(|e| matches!(e, Event::CacheHit { .. })));

    // `ls` shows who uses the entry; `gc` keeps it while the lock exists.
    let ls = store_a.list().expect("ls");
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0].users.len(), 1);
    assert_eq!(ls[0].users[0].1, ["a", "b"]);
    assert!(ls[0].size > 10 << 20);
    let report = store_a.gc(&Log::default()).expect("gc");
    assert!(report.removed.is_empty());
    fs::remove_file(&lock_path).expect("rm lock");
    let report = store_a.gc(&Log::default()).expect("gc");
    assert_eq!(report.removed, std::slice::from_ref(&entry.key));
    assert!(store_a.list().expect("ls").is_empty());
}
