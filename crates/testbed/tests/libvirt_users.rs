//! libvirt without root, both ways (docs/rootless.md), as users made by
//! scripts/setup-users.sh, from a store root built (which they may not
//! write), on a one-node cluster:
//!
//! 1. `testbed-virt`, a member of `testbed-libvirt` (the group
//!    scripts/test.sh gives qemu:///system through polkit:
//!    `setup-libvirt.sh --polkit-group`): `doctor --json` says both the
//!    system daemon and its own session daemon are usable, and its test
//!    passes on qemu:///system;
//! 2. `testbed-novirt`, outside that group: `doctor` and `up` on
//!    qemu:///system say it is refused, by whom and what to do; nothing is
//!    left; its test passes on its own daemon, qemu:///session;
//! 3. no domain of either is left, and no process but the session daemons
//!    libvirt leaves by its design (they end after two idle minutes).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use support::Env;
use testbed_test_support::{text, wait_until};

const COMPOSITION: &str = r#"
[cluster]
name = "CLUSTER"
distro = "debian/bookworm"

[defaults]
memory = "512MiB"
cpus = 1

[roles.node]
count = 1

[networks.lan]
subnet = "10.73.0.0/24"

[test]
script = "users.rhai"
"#;

const SCRIPT: &str = r#"
start_all();
subtest("the node runs and keeps what is written", || {
    node.succeed("echo kept > /var/tmp/kept");
    assert(node.succeed("cat /var/tmp/kept").contains("kept"), "the file");
    node.wait_for_unit("multi-user.target");
});
"#;

fn env(cluster: &str, store: &std::path::Path) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(cluster);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("testbed.toml"),
        COMPOSITION.replace("CLUSTER", cluster),
    )
    .unwrap();
    std::fs::write(dir.join("users.rhai"), SCRIPT).unwrap();
    Env::at(tmp, dir).with_store(store)
}

fn check(checks: &serde_json::Value, name: &str) -> serde_json::Value {
    checks
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("a {name} check in {checks}"))
        .clone()
}

/// `doctor --json` as `user`; then the daemons its probes leave by their
/// own design (libvirt's session daemon, rootless podman's pause process)
/// are stopped, so that what is left at the end is testbed's.
fn doctor(env: &Env, user: &str) -> serde_json::Value {
    let out = env.testbed(&["doctor", "--json"]);
    let _ = Command::new("pkill").args(["-KILL", "-u", user]).status();
    serde_json::from_slice(&out.stdout).expect("doctor --json")
}

/// The user's processes, but zombies and libvirt's session daemons
/// (`libvirtd` and `virtlogd`, which end after two idle minutes).
fn processes(user: &str) -> String {
    let out = Command::new("ps")
        .args(["-u", user, "-o", "stat=,pid=,args="])
        .output()
        .expect("ps");
    text(&out.stdout)
        .lines()
        .filter(|l| {
            !l.trim_start().starts_with('Z')
                && !l.contains("libvirtd --timeout")
                && !l.contains("virtlogd --timeout")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn domains(uri: &str, user: &str) -> String {
    let out = Command::new("runuser")
        .args([
            "-u", user, "--", "virsh", "-c", uri, "list", "--all", "--name",
        ])
        .output()
        .expect("virsh");
    text(&out.stdout)
}

fn not_root(user: &str) {
    let groups = text(
        &Command::new("id")
            .args(["-nG", user])
            .output()
            .unwrap()
            .stdout,
    );
    for group in ["root", "sudo", "wheel", "adm", "libvirt", "docker"] {
        assert!(
            !groups.split_whitespace().any(|g| g == group),
            "{user} is in {group}"
        );
    }
}

#[test]
fn users_without_root_run_libvirt_clusters_through_polkit_and_their_own_daemon() {
    let store = tempfile::Builder::new()
        .prefix("testbed-libvirt-store-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Root builds the image once.
    let root = env("virtroot", store.path());
    let out = root.testbed(&["build"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(root);

    // 1. A member of the polkit rule's group, on the system daemon.
    let user = "testbed-virt";
    not_root(user);
    let env1 = env("virtsys", store.path()).run_as(user);
    let checks = doctor(&env1, user);
    for name in ["libvirt", "libvirt (system)"] {
        let c = check(&checks, name);
        assert_eq!(c["level"], "ok", "{c}");
    }
    let out = env1.testbed(&[
        "test",
        "--backend",
        "libvirt",
        "--connect",
        "qemu:///system",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(all.contains("1 passed, 0 failed"), "{all}");
    assert!(!env1.running());
    assert!(
        !domains("qemu:///system", user).contains("virtsys"),
        "a domain left"
    );

    // 2. A user outside the group: refused, clearly, by doctor and up.
    let outsider = "testbed-novirt";
    not_root(outsider);
    let groups = text(
        &Command::new("id")
            .args(["-nG", outsider])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(!groups.split_whitespace().any(|g| g == "testbed-libvirt"));
    let env2 = env("virtses", store.path()).run_as(outsider);
    let checks = doctor(&env2, outsider);
    let system = check(&checks, "libvirt (system)");
    assert_eq!(system["level"], "warn", "{system}");
    let found = system["found"].as_str().unwrap_or_default();
    assert!(
        found.contains("qemu:///system refuses testbed-novirt") && found.contains("polkit"),
        "{system}"
    );
    assert_eq!(check(&checks, "libvirt")["level"], "ok", "the session");
    let out = env2.testbed(&["up", "--backend", "libvirt", "--connect", "qemu:///system"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(
        said.contains("qemu:///system refuses testbed-novirt")
            && said.contains("--polkit-group")
            && said.contains("qemu:///session"),
        "{said}"
    );
    assert!(!env2.running(), "a refused up leaves no state");
    // Its own daemon serves it.
    let out = env2.testbed(&[
        "test",
        "--backend",
        "libvirt",
        "--connect",
        "qemu:///session",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(all.contains("1 passed, 0 failed"), "{all}");
    assert!(!env2.running());
    assert!(
        !domains("qemu:///session", outsider).contains("virtses"),
        "a domain left"
    );

    // 3. Nothing of theirs runs but libvirt's session daemons, stopped here.
    for who in [user, outsider] {
        let gone = wait_until(Duration::from_secs(30), || {
            processes(who).trim().is_empty().then_some(())
        });
        assert!(gone.is_some(), "{who}'s processes left: {}", processes(who));
        let _ = Command::new("pkill").args(["-KILL", "-u", who]).status();
    }
}
