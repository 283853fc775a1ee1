//! Role snapshots on the QEMU backend (`docs/snapshots.md`), as a user
//! sees them: `up` makes the role's snapshot and starts both nodes from
//! it, the two clones are distinct machines, a snapshot that does not
//! restore means a boot with a warning (and is replaced), and `--cold`
//! boots. The Slurm example's own test passes with `--cold` (with
//! snapshots, the default, it passes in `driver.rs`).

mod support;

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use support::Env;
use testbed_test_support::text;

const COMPOSITION: &str = r#"
[cluster]
name = "clones"
distro = "debian/bookworm"

[defaults]
memory = "384MiB"
cpus = 1

[roles.node]
count = 2
packages = ["openssh-server"]

[networks.lan]
subnet = "10.81.0.0/24"
"#;

/// The tests of this file boot one cluster at a time: two side by side on
/// 2 emulated cores would only make both slow.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn env() -> Env {
    let tmp = tempfile::tempdir().expect("tmp");
    let comp = tmp.path().join("clones");
    std::fs::create_dir_all(&comp).unwrap();
    std::fs::write(comp.join("testbed.toml"), COMPOSITION).unwrap();
    Env::at(tmp, comp)
}

fn ok(env: &Env, args: &[&str]) -> String {
    let out = env.testbed(args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stderr)
}

fn exec(env: &Env, node: &str, script: &str) -> String {
    let out = env.testbed(&["exec", node, "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// Each node's `snapshot` and `warning` as `status --json` shows them.
fn starts(env: &Env) -> Vec<(Option<String>, Option<String>)> {
    let out = env.testbed(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let field = |n: &serde_json::Value, k: &str| n[k].as_str().map(str::to_owned);
    status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| (field(n, "snapshot"), field(n, "warning")))
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// What must differ between two clones, one line each.
const IDENTITY: &str = "cat /etc/machine-id; \
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
    cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub; \
    ip -br link | grep -v '^lo' | tr -s ' ' | cut -d' ' -f3";

#[test]
fn clones_of_a_role_snapshot_are_distinct_machines_and_a_bad_snapshot_means_a_boot() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let env = env();

    let stderr = ok(&env, &["up"]);
    assert!(stderr.contains("from snapshot"), "{stderr}");
    let first = starts(&env);
    assert_eq!(first.len(), 2);
    for (snapshot, warning) in &first {
        assert!(snapshot.is_some(), "{first:?}");
        assert_eq!(warning, &None);
    }
    assert_eq!(first[0].0, first[1].0, "one role, one snapshot");

    // Two clones of one snapshot: their own machine id, random stream,
    // SSH host key and MAC (the plan's, not the template's placeholder).
    let a = exec(&env, "node1", IDENTITY);
    let b = exec(&env, "node2", IDENTITY);
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    assert_eq!((a.len(), b.len()), (4, 4), "{a:?} {b:?}");
    for (what, (x, y)) in ["machine id", "urandom", "ssh host key", "MAC"]
        .iter()
        .zip(a.iter().zip(&b))
    {
        assert_ne!(x, y, "the clones share their {what}");
    }
    assert_eq!(a[0].len(), 32, "{a:?}");
    for mac in [a[3], b[3]] {
        assert!(mac.starts_with("52:54:00:"), "{mac}: not the plan's MAC");
    }
    // The clock is the host's, not the snapshot's.
    let before = now();
    let guest: f64 = exec(&env, "node2", "date +%s.%N").trim().parse().unwrap();
    let after = now();
    assert!(
        guest > before - 1.0 && guest < after + 1.0,
        "guest {guest}, host between {before} and {after}"
    );
    // The switch learnt the new MACs.
    exec(&env, "node1", "ping -c1 -W5 node2");
    // The agent set the MAC and the address over rtnetlink and read the
    // units' states from systemd's socket, not through the slower
    // fallbacks (`ip`, `systemctl show`), and logged its steps.
    let journal = exec(
        &env,
        "node2",
        "journalctl -u testbed-agent --no-pager -o cat",
    );
    assert!(journal.contains("activation of node2: "), "{journal}");
    for fallback in ["over rtnetlink", "asking systemctl"] {
        assert!(!journal.contains(fallback), "{fallback}: {journal}");
    }
    // The console log shows the boot the clone skipped, and says so.
    let out = env.testbed(&["logs", "node2"]);
    let log = text(&out.stdout);
    assert!(log.contains("testbed-stage1"), "{log}");
    assert!(log.contains("restored from it here"), "{log}");

    whole_cluster_snapshots(&env);
    ok(&env, &["down"]);

    // A snapshot whose device state is corrupt: both nodes boot instead,
    // each with a warning, and the snapshot is gone from the store.
    let dir = support::store()
        .join(".snapshots")
        .join(snapshot_dir(&first[0].0.clone().unwrap()));
    std::fs::write(dir.join("state"), b"not a migration stream").unwrap();
    let stderr = ok(&env, &["up"]);
    assert!(stderr.contains("did not restore"), "{stderr}");
    for (snapshot, warning) in starts(&env) {
        assert_eq!(snapshot, None);
        assert!(warning.unwrap_or_default().contains("did not restore"));
    }
    assert!(!dir.exists(), "the bad snapshot is removed");
    exec(&env, "node1", "ping -c1 -W5 node2");
    ok(&env, &["down"]);

    // --cold boots without a snapshot, and makes none.
    let stderr = ok(&env, &["up", "--cold"]);
    assert!(!stderr.contains("from snapshot"), "{stderr}");
    assert_eq!(starts(&env), [(None, None), (None, None)]);
    assert!(!dir.exists());
    ok(&env, &["down"]);
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

/// `testbed test examples/slurm --cold`: every node boots (none from a
/// snapshot), the example's six subtests pass, and the cluster is taken
/// down after.
#[test]
fn the_slurm_example_passes_cold() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let env = Env::example("slurm");
    let (out, junit, json) = env.test_with_reports(&["--cold", "--scale", "compute=2"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let ready: Vec<&str> = stderr.lines().filter(|l| l.contains(" ready (")).collect();
    assert_eq!(ready.len(), 4, "ctl, nfs, compute1, compute2: {stderr}");
    assert!(
        ready.iter().all(|l| !l.contains("from snapshot")),
        "{stderr}"
    );
    support::check_passed_reports(&junit, &json, "slurm", &support::SLURM_SUBTESTS);
    assert!(!env.running(), "the cluster is taken down after the test");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

/// Whether node1 reaches node2 over the cluster network.
fn reaches(env: &Env) -> bool {
    let out = env.testbed(&["exec", "node1", "--", "ping", "-c1", "-W2", "node2"]);
    out.status.code() == Some(0)
}

/// The cluster (running, both nodes ready) saved with a partition and a
/// file written on a node, changed, restored: both come back; taken down
/// and started again from the snapshot: both are there, and the saved
/// keys let `ssh` in. Leaves the cluster running, without the snapshot.
fn whole_cluster_snapshots(env: &Env) {
    exec(env, "node1", "echo one > /root/mark");
    ok(env, &["fault", "partition", "node1", "node2"]);
    assert!(!reaches(env));
    let out = env.testbed(&["snapshot", "save", "base", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(info["name"], "base");
    assert_eq!(info["nodes"].as_array().map(Vec::len), Some(2));
    assert!(info["nodes"][0]["bytes"].as_u64().unwrap_or(0) > 1 << 20);
    // The save changed nothing: the cluster runs on as it was.
    assert_eq!(exec(env, "node1", "cat /root/mark"), "one\n");

    exec(env, "node1", "echo two > /root/mark");
    ok(env, &["fault", "heal"]);
    assert!(reaches(env));

    let stderr = ok(env, &["snapshot", "restore", "base"]);
    assert!(stderr.contains("restoring"), "{stderr}");
    assert_eq!(exec(env, "node1", "cat /root/mark"), "one\n");
    assert!(!reaches(env), "the partition is in force again");
    let history = exec_ok(env, &["fault", "history"]);
    assert!(history.contains("restore snapshot base"), "{history}");
    let before = now();
    let guest: f64 = exec(env, "node2", "date +%s.%N").trim().parse().unwrap();
    assert!(guest > before - 1.0 && guest < now() + 1.0, "clock {guest}");

    let listed = exec_ok(env, &["snapshot", "ls"]);
    assert!(
        listed.contains("base") && listed.contains("2/2"),
        "{listed}"
    );

    // Another up of the cluster: restore refuses, up --from resumes it.
    ok(env, &["down"]);
    ok(env, &["up", "--from", "base"]);
    assert_eq!(exec(env, "node1", "cat /root/mark"), "one\n");
    assert!(!reaches(env), "the partition is in force");
    let out = env.testbed(&["ssh", "node2", "--", "cat", "/etc/hostname"]);
    assert_eq!(text(&out.stdout), "node2\n", "{}", text(&out.stderr));
    ok(env, &["fault", "heal"]);
    assert!(reaches(env));

    ok(env, &["snapshot", "rm", "base"]);
    let out = env.testbed(&["snapshot", "restore", "base"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("has no snapshot base"));
}

fn exec_ok(env: &Env, args: &[&str]) -> String {
    let out = env.testbed(args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// The folder of the snapshot whose key starts with `short`.
fn snapshot_dir(short: &str) -> String {
    std::fs::read_dir(support::store().join(".snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with(short))
        .unwrap_or_else(|| panic!("no snapshot {short}"))
}
