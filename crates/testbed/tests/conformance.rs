//! The backend contract, one scenario for every backend this machine runs:
//! the same composition (two nodes of a role without packages), the same
//! verbs, the same expectations, so a backend that drifts fails here.
//!
//! - `up` brings both nodes to ready and `status` names the backend;
//! - `exec` returns output, standard error and the exit status, and feeds
//!   standard input; `cp` copies both ways with contents and mode;
//! - a partition and a blocked node cut the cluster network between nodes
//!   (their agents stay reachable), `heal` and `unblock` restore it, and
//!   the fault history records it;
//! - `crash` stops a node at once, `start` boots it fresh (its writable
//!   layer is gone), `reboot` brings it back ready, `pause` freezes it
//!   (its services stop answering) and `resume` thaws it;
//! - `snapshot save` saves the running cluster where the backend can
//!   (QEMU, libvirt): a file written on a node and a partition in force
//!   come back with `snapshot restore` after both were undone, and again
//!   in a new `up --from` after `down`; the restored nodes go on through
//!   the rest of the scenario; elsewhere the
//!   verb says plainly that the backend cannot;
//! - `console` attaches where the backend has one and says plainly where it
//!   has none;
//! - `down` leaves no process, no state and nothing in the backend.
//!
//! Reachability is probed from the guest with SSH's banner over
//! `/dev/tcp` (bash, coreutils' `timeout`): a frozen container's kernel
//! still answers pings and completes TCP handshakes, but its sshd sends
//! nothing.
//!
//! The docker backend is not in this list: no docker engine runs on the
//! CI machine (issue 18 installs one), and a test that skips itself would
//! prove nothing.

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use support::{testbed_command, Env};
use testbed_test_support::text;

/// One cluster at a time: two side by side on 2 emulated cores would only
/// make both slow.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn composition(name: &str, subnet: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("testbed.toml"),
        format!(
            r#"
[cluster]
name = "{name}"
distro = "debian/bookworm"

[defaults]
memory = "384MiB"
cpus = 1

[roles.node]
count = 2

[networks.lan]
subnet = "{subnet}"
"#
        ),
    )
    .unwrap();
    Env::at(tmp, dir)
}

fn ok(env: &Env, args: &[&str]) -> String {
    let out = env.testbed(args);
    assert!(
        out.status.success(),
        "testbed {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Whether `from` reads the SSH banner of `to` within 5 seconds.
fn reaches(env: &Env, from: &str, to: &str) -> bool {
    let probe = format!("exec 3<>/dev/tcp/{to}/22; head -c3 <&3");
    let out = env.testbed(&["exec", from, "--", "timeout", "5", "bash", "-c", &probe]);
    out.status.success() && text(&out.stdout) == "SSH"
}

fn state_of(env: &Env, node: &str) -> String {
    let status: serde_json::Value =
        serde_json::from_str(&ok(env, &["status", "--json"])).expect("status JSON");
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .map(|n| n["state"].as_str().unwrap().to_owned())
        .unwrap()
}

/// The scenario; `up` is the backend's flags; `backend` the name `status`
/// shows; `console` whether it has interactive consoles. The caller checks
/// what only its backend could leave behind. `snapshots`: whether it
/// saves cluster snapshots.
fn contract(env: &Env, up: &[&str], backend: &str, console: bool, snapshots: bool) {
    let mut args = vec!["up", "--json"];
    args.extend(up);
    let status: serde_json::Value = serde_json::from_str(&ok(env, &args)).expect("up --json");
    assert_eq!(status["backend"], backend, "{status}");
    let nodes = status["nodes"].as_array().unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["node1", "node2"]);
    assert!(nodes.iter().all(|n| n["state"] == "ready"), "{status}");

    // exec: output, standard error, exit status, standard input.
    assert_eq!(
        ok(env, &["exec", "node1", "--", "hostname"]).trim(),
        "node1"
    );
    let out = env.testbed(&["exec", "node2", "--", "sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stderr).trim(), "oops");
    let mut child = testbed_command(
        &["exec", "-i", "node2", "--", "tr", "a-z", "A-Z"],
        &env.comp,
    )
    .env("TESTBED_STORE", support::store())
    .env("TESTBED_STATE_DIR", &env.state)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        text(&out.stdout),
        "THROUGH STDIN\n",
        "{}",
        text(&out.stderr)
    );

    // cp both ways, contents and mode kept.
    let host = env.comp.join("payload");
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&host, &payload).unwrap();
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o640)).unwrap();
    let path = host.to_str().unwrap();
    ok(env, &["cp", path, "node1:/root/payload"]);
    let back = env.comp.join("back");
    ok(env, &["cp", "node1:/root/payload", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), payload);
    let mode = std::fs::metadata(&back).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640, "mode {mode:o}");
    assert_eq!(
        ok(
            env,
            &["exec", "node1", "--", "stat", "-c", "%s", "/root/payload"]
        )
        .trim(),
        "100000"
    );

    // Faults cut the cluster network, not the agents.
    assert!(reaches(env, "node1", "node2"));
    ok(env, &["fault", "partition", "node1", "node2"]);
    assert!(
        !reaches(env, "node1", "node2"),
        "a partition cuts node1 off"
    );
    ok(env, &["fault", "heal"]);
    assert!(reaches(env, "node1", "node2"), "heal restores the link");
    ok(env, &["fault", "block", "node2"]);
    assert!(!reaches(env, "node1", "node2"), "a blocked node is cut off");
    assert_eq!(
        ok(env, &["exec", "node2", "--", "hostname"]).trim(),
        "node2"
    );
    ok(env, &["fault", "unblock", "node2"]);
    assert!(reaches(env, "node1", "node2"));
    let history: serde_json::Value =
        serde_json::from_str(&ok(env, &["fault", "history", "--json"])).expect("history JSON");
    assert!(
        history.as_array().is_some_and(|h| h.len() >= 4),
        "{history}"
    );

    // Cluster snapshots: a file written and a partition in force come back.
    ok(
        env,
        &["exec", "node1", "--", "sh", "-c", "echo kept > /root/kept"],
    );
    ok(env, &["fault", "partition", "node1", "node2"]);
    let out = env.testbed(&["snapshot", "save", "base"]);
    if snapshots {
        assert!(out.status.success(), "{}", text(&out.stderr));
        ok(env, &["fault", "heal"]);
        ok(env, &["exec", "node1", "--", "rm", "/root/kept"]);
        assert!(reaches(env, "node1", "node2"));
        ok(env, &["snapshot", "restore", "base"]);
        assert_eq!(state_of(env, "node1"), "ready");
        assert_eq!(state_of(env, "node2"), "ready");
        // The file written before the save and the partition in force
        // then are back after `how`.
        let saved_state_is_back = |how: &str| {
            assert_eq!(
                ok(env, &["exec", "node1", "--", "cat", "/root/kept"]).trim(),
                "kept",
                "{how} brings the file back"
            );
            assert!(
                !reaches(env, "node1", "node2"),
                "{how} brings the partition back"
            );
        };
        saved_state_is_back("snapshot restore");
        // A new `up` from it: new switch ports, the same machines.
        ok(env, &["down"]);
        let mut from = vec!["up", "--from", "base"];
        from.extend(up);
        ok(env, &from);
        saved_state_is_back("up --from");
        ok(env, &["snapshot", "rm", "base"]);
    } else {
        assert_eq!(out.status.code(), Some(1));
        let said = text(&out.stderr);
        assert!(
            said.contains(&format!(
                "the {backend} backend cannot save a cluster snapshot"
            )),
            "{said}"
        );
    }
    ok(env, &["fault", "heal"]);
    assert!(reaches(env, "node1", "node2"));

    // Power: a crash is instant, a start is fresh, a reboot comes back.
    ok(env, &["exec", "node2", "--", "touch", "/root/before-crash"]);
    ok(env, &["power", "crash", "node2"]);
    assert_eq!(state_of(env, "node2"), "stopped");
    assert!(!reaches(env, "node1", "node2"), "a crashed node is silent");
    ok(env, &["power", "start", "node2"]);
    assert_eq!(state_of(env, "node2"), "ready");
    let out = env.testbed(&["exec", "node2", "--", "test", "-e", "/root/before-crash"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a crash loses the writable layer"
    );
    assert!(reaches(env, "node1", "node2"));
    ok(env, &["power", "reboot", "node2"]);
    assert_eq!(state_of(env, "node2"), "ready");
    ok(env, &["power", "pause", "node2"]);
    assert_eq!(state_of(env, "node2"), "paused");
    assert!(
        !reaches(env, "node1", "node2"),
        "a paused node does not answer"
    );
    ok(env, &["power", "resume", "node2"]);
    assert_eq!(state_of(env, "node2"), "ready");
    assert!(reaches(env, "node1", "node2"));

    // console: attached where there is one, a plain refusal elsewhere.
    let out = env.testbed(&["console", "node1"]);
    if console {
        // Standard input is empty: attached, then detached at its end.
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("connected to the console of node1"));
    } else {
        assert_eq!(out.status.code(), Some(1));
        let said = text(&out.stderr);
        assert!(
            said.contains(&format!(
                "the {backend} backend gives nodes no interactive console"
            )) && said.contains("testbed logs node1"),
            "{said}"
        );
    }

    ok(env, &["down"]);
    assert!(!env.running(), "state left after down");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

fn lines(cmd: &mut Command) -> Vec<String> {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn qemu_keeps_the_contract() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let env = composition("conform-qemu", "10.91.0.0/24");
    contract(&env, &["--backend", "qemu"], "qemu", true, true);
}

#[test]
fn libvirt_keeps_the_contract() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let env = composition("conform-libvirt", "10.92.0.0/24");
    contract(
        &env,
        &["--backend", "libvirt", "--connect", "qemu:///system"],
        "libvirt",
        false,
        true,
    );
    let left: Vec<String> =
        lines(Command::new("virsh").args(["-c", "qemu:///system", "list", "--all", "--name"]))
            .into_iter()
            .filter(|d| d.starts_with("testbed-conform-libvirt-"))
            .collect();
    assert!(left.is_empty(), "domains left: {left:?}");
}

#[test]
fn podman_keeps_the_contract() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let env = composition("conform-podman", "10.93.0.0/24");
    contract(&env, &["--backend", "podman"], "podman", false, false);
    let left: Vec<String> =
        lines(Command::new("podman").args(["ps", "--all", "--format", "{{.Names}}"]))
            .into_iter()
            .filter(|c| c.starts_with("testbed-conform-podman-"))
            .collect();
    assert!(left.is_empty(), "containers left: {left:?}");
    let nets = lines(Command::new("podman").args(["network", "ls", "--format", "{{.Name}}"]));
    assert!(
        !nets
            .iter()
            .any(|n| n.starts_with("testbed-conform-podman-")),
        "{nets:?}"
    );
}
