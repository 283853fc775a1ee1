//! testbed as a user that is not root (docs/rootless.md): the users made
//! by `scripts/setup-users.sh` (no password, no sudo, subordinate ids).
//!
//! One test, in order, with a copy of the `testbed` binary and its agent
//! where the users may run them, and a folder of each user's own for its
//! store, state, runtime folder and copy of the composition:
//!
//! 1. as `testbed-user`, `testbed doctor --json` says rootless builds are
//!    usable;
//! 2. as `testbed-user`, `testbed build` of examples/slurm into its own
//!    store builds every role (nothing from a cache: the store starts
//!    empty) with the very digests of root's build of the same lock (the
//!    rootless build is reproducible: `testbed verify` itself is shown by
//!    root's, in `tests/images.rs`);
//! 3. as `testbed-user2`, who may not write that store, `testbed test` on
//!    QEMU of the same composition (one compute node: three VMs) from that
//!    store, with a script that crashes a node and partitions the network:
//!    nothing is built, the role snapshots go to its own store, and the
//!    test ends with the cluster down (one user's QEMU cluster is enough
//!    for "a QEMU test as a user without root": CI time);
//! 4. nothing of either user's is left: no process, no file in the
//!    temporary folders (the rootless build's scratch tree, the cluster's
//!    state), nothing in their state folders.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::Env;
use testbed_test_support::{agent_binary, text, wait_until};

/// A script for the cluster: a crash and a partition. (With one compute
/// node, the node is named after its role.)
const SCRIPT: &str = r#"// The rootless test's script (crates/testbed/tests/rootless.rs).
start_all();
let c = role("compute")[0];

subtest("the controller sees its compute node", || {
    ctl.wait_for_unit("slurmctld");
    c.wait_for_unit("slurmd");
    ctl.wait_until_succeeds(`sinfo -h -n ${c.name} -o %T | grep -Eqx 'idle|allocated|mixed'`, 300);
});

subtest("a crashed node comes back", || {
    c.crash();
    c.start();
    c.wait_for_unit("slurmd");
});

subtest("a partition cuts a node off until healed", || {
    partition([[ctl, nfs], [c]]);
    let r = c.execute("timeout 20 sinfo");
    assert(r.status != 0 && r.status != 127, `sinfo across the partition: ${r}`);
    heal();
    c.wait_until_succeeds("sinfo", 120);
});
"#;

/// A user account (its id, home and groups) and the folder of its own
/// the test gives it (its store, state and runtime folders).
struct User {
    name: &'static str,
    account: support::Account,
    mine: PathBuf,
}

impl User {
    /// `name`, made by scripts/setup-users.sh, with a folder of its own
    /// in `base`.
    fn new(name: &'static str, base: &Path) -> User {
        let account = support::Account::get(name);
        let mine = base.join(name);
        for dir in ["", "run", "xdg", "cache"] {
            std::fs::create_dir_all(mine.join(dir)).unwrap();
        }
        std::fs::set_permissions(mine.join("xdg"), std::fs::Permissions::from_mode(0o700)).unwrap();
        chown_tree(&mine, name);
        User {
            name,
            account,
            mine,
        }
    }

    /// `PROGRAM ARGS` as this user, in `cwd`, with a clean environment:
    /// its home, its own runtime and cache folders, its own state folder
    /// and the store `store`; nothing of root's.
    fn run(&self, env: &Env, program: &Path, store: &Path, cwd: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", self.name, "--", "env", "-i"])
            .arg(format!("HOME={}", self.account.home.display()))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .arg("NO_COLOR=1")
            .arg(format!(
                "XDG_RUNTIME_DIR={}",
                self.mine.join("xdg").display()
            ))
            .arg(format!(
                "XDG_CACHE_HOME={}",
                self.mine.join("cache").display()
            ))
            .arg(format!("TESTBED_STORE={}", store.display()))
            .arg(format!(
                "TESTBED_STATE_DIR={}",
                self.mine.join("run").display()
            ))
            .arg(program)
            .args(args)
            .current_dir(cwd);
        let name = program.file_name().unwrap_or_default().to_string_lossy();
        env.run_echoed(
            &format!("(as {}) {name}", self.name),
            args,
            &mut cmd,
            support::limit(args),
        )
    }

    /// Files the user owns under the host's temporary and runtime
    /// folders, besides the test's own folder.
    fn files_outside(&self, place: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut dirs: Vec<PathBuf> = ["/tmp", "/var/tmp", "/dev/shm", "/run"]
            .iter()
            .map(PathBuf::from)
            .collect();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.starts_with(place) {
                    continue;
                }
                let Ok(meta) = path.symlink_metadata() else {
                    continue;
                };
                if std::os::unix::fs::MetadataExt::uid(&meta) == self.account.uid {
                    found.push(path);
                } else if meta.is_dir() {
                    dirs.push(path);
                }
            }
        }
        found
    }

    /// Ends every process of the user and removes its files in the
    /// temporary and runtime folders: what earlier runs of this test left
    /// (a failed one), and podman's pause process and runtime files, which
    /// any rootless podman command leaves by design (doctor's probe).
    fn reset(&self, place: &Path) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", self.name])
            .status();
        wait_until(Duration::from_secs(10), || {
            self.account.processes(&[]).trim().is_empty().then_some(())
        });
        for path in self.files_outside(place) {
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }

    /// No process, no file outside `place`, nothing in its state folder.
    fn check_nothing_left(&self, place: &Path) {
        self.account.check_no_processes(&[]);
        let files = self.files_outside(place);
        assert!(files.is_empty(), "{}'s files left: {files:?}", self.name);
        let state: Vec<_> = std::fs::read_dir(self.mine.join("run"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            state.is_empty(),
            "left in {}'s state folder: {state:?}",
            self.name
        );
    }
}

/// A root-owned folder everyone may pass, with the binaries the users run.
struct Place {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Place {
    fn new() -> Place {
        let dir = tempfile::Builder::new()
            .prefix("testbed-rootless-")
            .tempdir_in("/tmp")
            .expect("tmp");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for (from, name) in [
            (Path::new(env!("CARGO_BIN_EXE_testbed")), "testbed"),
            (agent_binary(), "testbed-agent"),
        ] {
            std::fs::copy(from, bin.join(name)).unwrap();
            std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Place { dir, bin }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn testbed(&self) -> PathBuf {
        self.bin.join("testbed")
    }
}

fn chown_tree(path: &Path, user: &str) {
    let out = Command::new("chown")
        .args(["-R", &format!("{user}:{user}")])
        .arg(path)
        .output()
        .expect("chown");
    assert!(out.status.success(), "chown: {}", text(&out.stderr));
}

/// Role → (key, whether it came from the store, each output's digest)
/// from `testbed build --json`.
type Built = BTreeMap<String, (String, bool, BTreeMap<String, String>)>;

fn built(out: &Output) -> Built {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("build --json");
    v.as_array()
        .expect("an array")
        .iter()
        .map(|b| {
            let dir = PathBuf::from(b["dir"].as_str().expect("dir"));
            let manifest: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap())
                    .expect("manifest");
            let outputs = manifest["outputs"]
                .as_object()
                .expect("outputs")
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect();
            (
                b["role"].as_str().expect("role").to_owned(),
                (
                    b["key"].as_str().expect("key").to_owned(),
                    b["cached"].as_bool().expect("cached"),
                    outputs,
                ),
            )
        })
        .collect()
}

#[test]
fn users_without_root_build_the_slurm_example_as_root_does_and_share_it() {
    // Root's build of the example, in the tests' shared store: the
    // digests to compare with.
    let env = Env::example("slurm");
    let out = env.testbed(&["build", "--json"]);
    assert!(out.status.success(), "root's build: {}", text(&out.stderr));
    let root = built(&out);
    assert_eq!(root.len(), 3, "{root:?}");

    let place = Place::new();
    let first = User::new("testbed-user", place.path());
    let second = User::new("testbed-user2", place.path());
    first.account.check_unprivileged(&[]);
    second.account.check_unprivileged(&[]);
    first.reset(place.path());
    second.reset(place.path());
    let first_store = first.mine.join("store");
    let comp_of = |user: &User| {
        let comp = user.mine.join("slurm");
        let copied = Command::new("cp")
            .arg("-r")
            .arg(&env.comp)
            .arg(&comp)
            .status()
            .expect("cp");
        assert!(copied.success());
        assert!(comp.join("testbed.lock").is_file(), "root's lock is copied");
        std::fs::write(comp.join("rootless.rhai"), SCRIPT).unwrap();
        chown_tree(&user.mine, user.name);
        comp
    };

    // 1. doctor says the first user may build.
    let comp = comp_of(&first);
    let out = first.run(
        &env,
        &place.testbed(),
        &first_store,
        &comp,
        &["doctor", "--json"],
    );
    let builder = support::doctor_check(&out, "image builder");
    assert_eq!(builder["level"], "ok", "{builder}");
    assert!(
        builder["found"].as_str().unwrap().contains("rootless"),
        "{builder}"
    );
    // Rootless podman cannot run systemd containers on a host with cgroup
    // v1 (this CI machine) without a cgroup delegated to the user, which
    // this user has not: doctor says so and what to change.
    let cgroup2 = Command::new("stat")
        .args(["-fc", "%T", "/sys/fs/cgroup"])
        .output()
        .is_ok_and(|o| text(&o.stdout).trim() == "cgroup2fs");
    if !cgroup2 {
        let containers = support::doctor_check(&out, "containers");
        assert_eq!(containers["level"], "warn", "{containers}");
        let found = containers["found"].as_str().unwrap_or_default();
        assert!(found.contains("cgroup v1"), "{containers}");
        assert!(
            containers["fix"]
                .as_str()
                .unwrap_or_default()
                .contains("unified cgroup hierarchy"),
            "{containers}"
        );
    }
    // Its podman probe left podman's pause process and runtime files.
    first.reset(place.path());

    // 2. The first user's build, into a store of its own: every role built
    // (the store started empty), bit for bit root's.
    let out = first.run(
        &env,
        &place.testbed(),
        &first_store,
        &comp,
        &["build", "--json"],
    );
    assert!(out.status.success(), "the first user's build failed");
    let mine = built(&out);
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        root.keys().collect::<Vec<_>>()
    );
    for (role, (key, cached, outputs)) in &mine {
        let (root_key, _, root_outputs) = &root[role];
        assert!(!cached, "{role}: the user's store started empty");
        assert_eq!(key, root_key, "{role}: the same lock, the same key");
        assert_eq!(outputs, root_outputs, "{role}: the digests of root's build");
        let meta = std::fs::metadata(first_store.join(key).join("rootfs.erofs")).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&meta),
            first.account.uid,
            "{role}: the outputs belong to the user, not to a subordinate id"
        );
    }
    first.check_nothing_left(place.path());

    // 3. The second user, who may not write the first one's store, runs
    // the example's cluster on QEMU from it (one compute node: three VMs)
    // with a crash and a partition: no build, its role snapshots in its
    // own store.
    let comp = comp_of(&second);
    let junit = comp.join("report.xml");
    let out = second.run(
        &env,
        &place.testbed(),
        &first_store,
        &comp,
        &[
            "test",
            "--scale",
            "compute=1",
            "--script",
            "rootless.rhai",
            "--junit",
            junit.to_str().unwrap(),
            "--backend",
            "qemu",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "the second user's test failed");
    let report = std::fs::read_to_string(&junit).expect("the JUnit report");
    assert!(
        report.contains(r#"tests="3""#) && report.contains(r#"failures="0""#),
        "{report}"
    );
    let printed = text(&out.stderr);
    assert!(
        !printed.contains(": built "),
        "the second user built images: {printed}"
    );
    let own_store = second.mine.join("cache/testbed/store");
    let own_entries: Vec<String> = std::fs::read_dir(&own_store)
        .expect("the second user's own store")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(own_entries.is_empty(), "{own_entries:?}");
    assert!(
        own_store.join(".snapshots").is_dir(),
        "the role snapshots go to the second user's own store"
    );

    // 4. Nothing of either user's is left.
    first.check_nothing_left(place.path());
    second.check_nothing_left(place.path());
}
