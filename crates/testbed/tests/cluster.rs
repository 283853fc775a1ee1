//! Real clusters: `testbed up` boots the example under QEMU (TCG here, KVM
//! where it works), and the verbs drive the nodes through the supervisor.
//! These tests build the example's images (cached in a store shared by the
//! test binaries of this crate) and boot VMs, so they take minutes; the
//! clusters are kept small (`--scale compute=2`) for 2-core CI machines.

mod support;

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use support::Env;
use testbed_test_support::{eventually, text};

/// The tests of this file boot VMs one cluster at a time: two clusters
/// side by side on 2 emulated cores would only make both slow.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A copy of examples/slurm without its lock (locked against today's
/// archive, like `tests/images.rs`), with `edit` applied to its
/// testbed.toml.
fn slurm(edit: impl Fn(String) -> String) -> Env {
    Env::edited_example("slurm", "slurm", edit)
}

/// The example without its NFS server: these tests are about the runtime,
/// and `/home` is only mounted on first use, so nothing misses it. Three
/// nodes boot faster than four on a 2-core CI machine.
fn without_nfs(t: String) -> String {
    let start = t.find("[roles.nfs]").expect("the example has an nfs role");
    let end = t
        .find("[roles.compute]")
        .expect("and a compute role after it");
    format!("{}{}", &t[..start], &t[end..])
}

fn status(env: &Env) -> serde_json::Value {
    let out = env.testbed(&["status", "--json"]);
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

#[test]
fn example_cluster_comes_up_is_driven_and_survives_a_killed_supervisor() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let env = slurm(without_nfs);

    let out = env.testbed(&["up", "--scale", "compute=2"]);
    assert!(out.status.success(), "up failed:\n{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("cluster slurm is up: 3 nodes ready"), "{err}");

    // status --json: every node ready, with its address.
    let st = status(&env);
    let nodes = st["nodes"].as_array().expect("nodes");
    let names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ctl", "compute1", "compute2"]);
    for n in nodes {
        assert_eq!(n["state"], "ready", "{n}");
        assert!(n["addresses"][0].as_str().unwrap().contains("(lan)"), "{n}");
    }

    // exec: names resolve across the cluster network, output and exit
    // status come back.
    let out = env.testbed(&["exec", "ctl", "--", "ping", "-c1", "-W5", "compute2"]);
    assert!(out.status.success(), "ping by name: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 received"),
        "{}",
        text(&out.stdout)
    );
    let out = env.testbed(&["exec", "compute1", "--", "hostname"]);
    assert_eq!(text(&out.stdout).trim(), "compute1");
    let out = env.testbed(&["exec", "ctl", "--", "sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stderr).trim(), "oops");
    let out = env.testbed(&["exec", "nosuch", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no node nosuch"),
        "{}",
        text(&out.stderr)
    );

    // The role's services were started by activation, with the shared
    // munge key and the rendered slurm.conf.
    let out = env.testbed(&[
        "exec",
        "ctl",
        "--",
        "systemctl",
        "is-active",
        "munge",
        "slurmctld",
    ]);
    assert_eq!(text(&out.stdout), "active\nactive\n");
    let out = env.testbed(&[
        "exec",
        "compute2",
        "--",
        "grep",
        "-c",
        "NodeName=compute",
        "/etc/slurm/slurm.conf",
    ]);
    assert_eq!(text(&out.stdout).trim(), "2", "slurm.conf follows --scale");

    // cp both ways, contents and mode kept.
    let host = env.comp.join("payload.bin");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&host, &payload).unwrap();
    let out = env.testbed(&["cp", host.to_str().unwrap(), "compute1:/root/payload.bin"]);
    assert!(out.status.success(), "cp to: {}", text(&out.stderr));
    let back = env.comp.join("back.bin");
    let out = env.testbed(&["cp", "compute1:/root/payload.bin", back.to_str().unwrap()]);
    assert!(out.status.success(), "cp from: {}", text(&out.stderr));
    assert_eq!(std::fs::read(&back).unwrap(), payload);

    // ssh through the agent's forwarding, host key checked strictly.
    let out = env.testbed(&["ssh", "compute2", "--", "cat", "/etc/hostname"]);
    assert!(out.status.success(), "ssh: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "compute2");
    let out = env.testbed(&["ssh-config"]);
    assert!(text(&out.stdout).contains("Host compute2"));

    // logs: the console log holds the boot.
    let out = env.testbed(&["logs", "ctl"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("testbed-stage1"), "console log");

    faults_are_seen_from_inside_the_guests(&env);
    a_second_cluster_runs_beside_the_first(&env);

    // The supervisor dies with SIGKILL: its VMs die with it, and `down`
    // still removes everything.
    let pid = st["supervisor_pid"].as_u64().unwrap() as i32;
    let vm_pids: Vec<u64> = nodes.iter().map(|n| n["pid"].as_u64().unwrap()).collect();
    assert_eq!(vm_pids.len(), 3);
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || env.leftovers().is_empty()),
        "processes left after the supervisor was killed: {:?}",
        env.leftovers()
    );
    let out = env.testbed(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not running"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        env.state.read_dir().unwrap().next().is_some(),
        "state is left"
    );
    let out = env.testbed(&["down"]);
    assert!(out.status.success(), "down: {}", text(&out.stderr));
    assert!(env.leftovers().is_empty());
    let left: Vec<_> = env.state.read_dir().unwrap().flatten().collect();
    assert!(left.is_empty(), "state left behind: {left:?}");
}

#[test]
fn a_service_that_fails_fails_up_with_its_node_unit_and_journal() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // The compute role without its slurm.conf: slurmd cannot start. Same
    // packages as the example's compute role, so the image is shared.
    let env = slurm(|t| {
        let t = t.replace(
            "files.\"/etc/slurm/slurm.conf\" = { template = \"slurm.conf.j2\" }\nfiles.\"/usr/local/bin/mpi-hello\"",
            "files.\"/usr/local/bin/mpi-hello\"",
        );
        let t = t.replace(
            "count = 4                       # nodes compute1..compute4",
            "count = 1",
        );
        assert!(
            !t.contains("count = 4"),
            "the example changed; update this test"
        );
        // Only the broken role, no ctl, no nfs; and a copy of it (same
        // packages and static files, so the same image) whose service
        // never finishes starting: `up` must not wait for it once compute
        // has failed.
        let start = t.find("[roles.ctl]").unwrap();
        let end = t.find("[roles.compute]").unwrap();
        let t = format!("{}{}", &t[..start], &t[end..]);
        let block_end = t.find("[secrets.munge]").unwrap();
        let block = &t[t.find("[roles.compute]").unwrap()..block_end];
        let services = block
            .lines()
            .find(|l| l.starts_with("services = "))
            .unwrap();
        let waiter = block.replace("[roles.compute]", "[roles.waiter]").replace(
            services,
            "services = [\"hang\"]\nfiles.\"/etc/systemd/system/hang.service\" = { template = \"hang.service.j2\" }",
        );
        let t = format!("{}{waiter}{}", &t[..block_end], &t[block_end..]);
        t.replace("name = \"slurm\"", "name = \"broken\"")
    });
    std::fs::write(
        env.comp.join("hang.service.j2"),
        "[Unit]\nDescription=never finishes starting\n[Service]\nType=oneshot\nExecStart=/bin/sleep infinity\nTimeoutStartSec=infinity\n",
    )
    .unwrap();
    let out = env.testbed(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("node compute (compute) failed: service slurmd"),
        "{err}"
    );
    assert!(
        err.contains("node waiter (waiter) was still"),
        "up gives up at the first failure: {err}"
    );
    assert!(err.contains("slurmd"), "names the unit: {err}");
    assert!(err.contains("journal"), "quotes the journal: {err}");
    assert!(err.contains("taken down"), "{err}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    let left = env.state.read_dir().map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "the failed cluster's state is removed");
}

/// Pings `to` from `from` `count` times; returns (received, min RTT in ms).
fn ping(env: &Env, from: &str, to: &str, count: u32) -> (u32, Option<f64>) {
    let out = env.testbed(&[
        "exec",
        from,
        "--",
        "ping",
        "-n",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
        to,
    ]);
    let stdout = text(&out.stdout);
    // "5 packets transmitted, 5 received, 0% packet loss, time 803ms"
    let received = stdout
        .split(" received")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // "rtt min/avg/max/mdev = 0.512/0.700/0.901/0.120 ms"
    let min = stdout
        .split("= ")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|n| n.parse().ok());
    (received, min)
}

/// Partition, heal, block, link delay and pause, each applied with the CLI
/// in the virtual switch and observed with `ping` inside the guests.
fn faults_are_seen_from_inside_the_guests(env: &Env) {
    assert_eq!(ping(env, "compute1", "compute2", 2).0, 2, "baseline");

    let out = env.testbed(&["fault", "partition", "ctl,compute1", "compute2"]);
    assert!(out.status.success(), "partition: {}", text(&out.stderr));
    assert_eq!(ping(env, "ctl", "compute1", 2).0, 2, "same side");
    assert_eq!(ping(env, "ctl", "compute2", 2).0, 0, "across the partition");
    assert_eq!(ping(env, "compute2", "compute1", 2).0, 0, "other way");
    let out = env.testbed(&["fault", "heal"]);
    assert!(out.status.success());
    assert_eq!(ping(env, "ctl", "compute2", 2).0, 2, "healed");

    let out = env.testbed(&["fault", "block", "compute1"]);
    assert!(out.status.success());
    assert_eq!(ping(env, "ctl", "compute1", 2).0, 0, "blocked");
    assert_eq!(ping(env, "ctl", "compute2", 2).0, 2, "others unaffected");
    let out = env.testbed(&["exec", "compute1", "--", "true"]);
    assert!(out.status.success(), "a blocked node is still driven");
    env.testbed(&["fault", "unblock", "compute1"]);
    assert_eq!(ping(env, "ctl", "compute1", 2).0, 2, "unblocked");

    // 100 ms each way: every round trip takes at least 200 ms.
    let out = env.testbed(&["fault", "link", "compute1", "compute2", "--delay", "100ms"]);
    assert!(out.status.success(), "link: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("delay 100ms"),
        "{}",
        text(&out.stderr)
    );
    let (got, min) = ping(env, "compute1", "compute2", 5);
    assert_eq!(got, 5);
    let min = min.expect("rtt");
    assert!(min >= 200.0, "round trip {min} ms with 2 x 100 ms of delay");
    let (_, other) = ping(env, "ctl", "compute2", 3);
    assert!(other.expect("rtt") < 200.0, "only that link is slowed");
    env.testbed(&["fault", "link", "compute1", "compute2", "--clear"]);
    let (_, after) = ping(env, "compute1", "compute2", 3);
    assert!(after.expect("rtt") < 200.0, "delay removed");

    let out = env.testbed(&["fault", "history", "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).expect("history");
    let changes: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["change"].as_str().unwrap())
        .collect();
    assert_eq!(
        changes,
        [
            "partition [ctl,compute1] [compute2]",
            "heal",
            "block compute1",
            "unblock compute1",
            "link compute1-compute2 delay=100ms",
            "link compute1-compute2 clear",
        ]
    );
    let out = env.testbed(&["fault", "partition", "ctl", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown node \"nosuch\""));

    // A paused node answers nothing, and catches up when resumed.
    let out = env.testbed(&["power", "pause", "compute2"]);
    assert!(out.status.success(), "pause: {}", text(&out.stderr));
    let st = status(env);
    assert_eq!(st["nodes"][2]["state"], "paused");
    assert_eq!(ping(env, "ctl", "compute2", 1).0, 0, "paused");
    let out = env.testbed(&["power", "resume", "compute2"]);
    assert!(out.status.success(), "resume: {}", text(&out.stderr));
    assert_eq!(ping(env, "ctl", "compute2", 2).0, 2, "resumed");
}

/// A copy of the same composition in another folder is another cluster
/// (same name, its own state directory, switch and VMs); taking it down
/// leaves the first one alone.
fn a_second_cluster_runs_beside_the_first(first: &Env) {
    let second = Env::edited_example("slurm", "other", without_nfs);
    // The same composition, so the first one's lock fits it; with its
    // images and packages in the store, `up --offline` needs no network.
    std::fs::copy(
        first.comp.join("testbed.lock"),
        second.comp.join("testbed.lock"),
    )
    .expect("copy the lock");
    let out = second.testbed(&["up", "--offline", "--scale", "compute=1"]);
    assert!(out.status.success(), "second up: {}", text(&out.stderr));
    let names: Vec<String> = status(&second)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["ctl", "compute"]);
    assert_eq!(ping(&second, "ctl", "compute", 2).0, 2);
    // The same addresses exist in both clusters; each reaches its own.
    let out = second.testbed(&["exec", "ctl", "--", "getent", "hosts", "compute1"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "compute1 is not in the second cluster"
    );
    let out = first.testbed(&["exec", "compute1", "--", "hostname"]);
    assert_eq!(text(&out.stdout).trim(), "compute1");
    assert_ne!(
        status(first)["state_dir"],
        status(&second)["state_dir"],
        "separate state"
    );
    let out = second.testbed(&["down"]);
    assert!(out.status.success(), "second down: {}", text(&out.stderr));
    assert!(second.leftovers().is_empty(), "{:?}", second.leftovers());
    assert_eq!(status(first)["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(ping(first, "ctl", "compute2", 2).0, 2, "first still works");
}
