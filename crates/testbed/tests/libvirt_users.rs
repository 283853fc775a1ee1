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

use std::process::Command;

use support::{doctor_check, readable_store, Account, Env};
use testbed_test_support::text;

/// libvirt's session daemons, which a connection to qemu:///session
/// starts and which end after two idle minutes, by libvirt's design.
const SESSION_DAEMONS: [&str; 2] = ["libvirtd --timeout", "virtlogd --timeout"];

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

fn domains(uri: &str, user: &str) -> String {
    let out = Command::new("runuser")
        .args([
            "-u", user, "--", "virsh", "-c", uri, "list", "--all", "--name",
        ])
        .output()
        .expect("virsh");
    text(&out.stdout)
}

/// `testbed test` of the cluster `cluster` on libvirt at `uri`, as `user`
/// (whom `env` runs as), passes, and leaves no state and no domain.
fn passes_on(env: &Env, uri: &str, user: &Account, cluster: &str) {
    let out = env.testbed(&["test", "--backend", "libvirt", "--connect", uri]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(all.contains("1 passed, 0 failed"), "{all}");
    assert!(!env.running());
    assert!(
        !domains(uri, &user.name).contains(cluster),
        "a domain of {cluster} left at {uri}"
    );
}

#[test]
fn users_without_root_run_libvirt_clusters_through_polkit_and_their_own_daemon() {
    // Root builds the image once, into a store every user may read.
    let store = readable_store("libvirt");
    let root = env("virtroot", store.path());
    let out = root.testbed(&["build"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(root);

    // 1. A member of the polkit rule's group, on the system daemon.
    let user = Account::get("testbed-virt");
    user.check_unprivileged(&["libvirt", "docker"]);
    assert!(user.in_group("testbed-libvirt"), "{user:?}");
    let env1 = env("virtsys", store.path()).run_as(&user.name);
    let out = env1.testbed(&["doctor", "--json"]);
    // Its probes' daemons (the session's, rootless podman's) stopped.
    user.stop_processes();
    for name in ["libvirt", "libvirt (system)"] {
        let c = doctor_check(&out, name);
        assert_eq!(c["level"], "ok", "{c}");
    }
    passes_on(&env1, "qemu:///system", &user, "virtsys");

    // 2. A user outside the group: refused, clearly, by doctor and up.
    let outsider = Account::get("testbed-novirt");
    outsider.check_unprivileged(&["libvirt", "docker", "testbed-libvirt"]);
    let env2 = env("virtses", store.path()).run_as(&outsider.name);
    let out = env2.testbed(&["doctor", "--json"]);
    outsider.stop_processes();
    let system = doctor_check(&out, "libvirt (system)");
    assert_eq!(system["level"], "warn", "{system}");
    let found = system["found"].as_str().unwrap_or_default();
    assert!(
        found.contains("qemu:///system refuses testbed-novirt") && found.contains("polkit"),
        "{system}"
    );
    assert_eq!(doctor_check(&out, "libvirt")["level"], "ok", "the session");
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
    passes_on(&env2, "qemu:///session", &outsider, "virtses");

    // 3. Nothing of theirs runs but libvirt's session daemons, stopped here.
    for who in [&user, &outsider] {
        who.check_no_processes(&SESSION_DAEMONS);
        who.stop_processes();
    }
}
