//! Chaos on real VMs: at a random point of `up`, `test` or `down` of a
//! one-node QEMU cluster, one of the CLI, the supervisor, the node's QEMU
//! or the agent inside the guest is killed with SIGKILL. Then `down`:
//! no process that names the cluster's state directory, no state, and the
//! next `up` of the same composition (the next trial's, and a last one)
//! works.
//!
//! The supervisor's state machine gets many more trials on the fake
//! backend (`crates/runtime/tests/chaos.rs`); these are few and slow (a
//! node from its role snapshot takes seconds under TCG).
//! `TESTBED_CHAOS_VM_TRIALS` sets their number (default 4); the counts are
//! recorded in `target/tmp/robustness.txt`. Kill points are drawn within
//! each phase's duration, measured undisturbed first on this machine.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{testbed_command, Env};
use testbed_test_support::{count_from_env, record_robustness, text, SeededRng};

fn composition() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("chaos");
    std::fs::create_dir_all(&dir).unwrap();
    // The backend contract's machine (conformance.rs): its image and its
    // role snapshot are shared with that test through the store.
    std::fs::write(
        dir.join("testbed.toml"),
        r#"
[cluster]
name = "chaos"
distro = "debian/bookworm"

[defaults]
memory = "384MiB"
cpus = 1

[roles.vm]
count = 1

[networks.lan]
subnet = "10.94.0.0/24"

[test]
script = "chaos.rhai"
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("chaos.rhai"),
        "subtest(\"a command that runs a while\", || {\n    vm.succeed(\"sleep 6\");\n});\n",
    )
    .unwrap();
    Env::at(tmp, dir)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Cli,
    Supervisor,
    Qemu,
    Agent,
}

/// A verb of the CLI started in the background, as a user's shell does.
fn spawn(env: &Env, args: &[&str]) -> Child {
    testbed_command(args, &env.comp)
        .env("TESTBED_STORE", support::store())
        .env("TESTBED_STATE_DIR", &env.state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn testbed")
}

fn sigkill(pid: u32) -> bool {
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The pids of processes of this environment whose command line contains
/// `needle` (the supervisor, the QEMUs).
fn pids(env: &Env, needle: &str) -> Vec<u32> {
    env.leftovers()
        .iter()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Kills `victim`; whether there was one to kill.
fn kill(env: &Env, victim: Victim, cli: &mut Child) -> bool {
    match victim {
        // Not if it ended already (a kill of the zombie would succeed).
        Victim::Cli => matches!(cli.try_wait(), Ok(None)) && cli.kill().is_ok(),
        Victim::Supervisor => pids(env, " supervise ")
            .into_iter()
            .map(sigkill)
            .fold(false, |a, b| a | b),
        Victim::Qemu => pids(env, "qemu-system")
            .into_iter()
            .map(sigkill)
            .fold(false, |a, b| a | b),
        // From inside, once the node answers, by the very `exec` that
        // the agent serves (a request in flight when it dies; others may
        // be, such as the test script's); systemd then starts the agent
        // again. It landed if the exec failed.
        Victim::Agent => {
            let ready = env.testbed(&["status", "--json"]);
            if !text(&ready.stdout).contains("\"ready\"") {
                return false;
            }
            kill_agent_in_flight(env).is_ok_and(|out| !out.status.success())
        }
    }
}

/// `testbed exec vm` of a command that kills the agent serving it, then
/// waits far longer than the test allows: at most a minute (`timeout`).
fn kill_agent_in_flight(env: &Env) -> std::io::Result<std::process::Output> {
    Command::new("timeout")
        .args(["60", env!("CARGO_BIN_EXE_testbed")])
        .args(["exec", "vm", "--", "sh", "-c"])
        .arg("kill -KILL $(pidof testbed-agent); sleep 120")
        .current_dir(&env.comp)
        .env("TESTBED_STORE", support::store())
        .env("TESTBED_STATE_DIR", &env.state)
        .stdin(Stdio::null())
        .output()
}

/// Waits at most `limit` for `child`; kills it and says so if it hangs.
fn wait(child: &mut Child, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!(
        "the CLI did not end within {limit:?} after the kill"
    ))
}

/// `down`, then nothing of the cluster may be left.
fn down_leaves_nothing(env: &Env) -> Result<(), String> {
    let out = env.testbed(&["down"]);
    let said = text(&out.stderr);
    if !out.status.success() && !said.contains("not running") {
        return Err(format!("down failed: {said}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.leftovers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    if !env.leftovers().is_empty() {
        return Err(format!("processes left: {:?}", env.leftovers()));
    }
    if env.running() {
        return Err(format!("state left in {}", env.state.display()));
    }
    Ok(())
}

/// How long each phase takes undisturbed here, in ms (`up`, `test`,
/// `down`): kill points are drawn within them, so that a kill lands while
/// the phase runs whatever the machine's speed.
struct Durations {
    up: u64,
    test: u64,
    down: u64,
}

/// One undisturbed `up`, `down` and `test` (which also makes the image and
/// the role snapshot on first use: done before the timed runs).
fn calibrate(env: &Env) -> Durations {
    let timed = |args: &[&str]| {
        let start = Instant::now();
        let out = env.testbed(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        (start.elapsed().as_millis() as u64).max(1)
    };
    timed(&["up"]);
    timed(&["down"]);
    let up = timed(&["up"]);
    let down = timed(&["down"]);
    let test = timed(&["test"]);
    Durations { up, test, down }
}

fn trial(env: &Env, seed: u64, took: &Durations) -> Result<(String, bool), String> {
    let mut rng = SeededRng::new(seed);
    let victim =
        [Victim::Cli, Victim::Supervisor, Victim::Qemu, Victim::Agent][rng.below(4) as usize];
    let phase = ["up", "test", "down"][rng.below(3) as usize];
    let (mut cli, delay_ms) = match phase {
        "up" => (spawn(env, &["up"]), rng.below(took.up)),
        // `test` brings the cluster up, runs the script (6 s), downs it.
        "test" => (spawn(env, &["test"]), rng.below(took.test)),
        _ => {
            let out = env.testbed(&["up"]);
            if !out.status.success() {
                return Err(format!("up failed: {}", text(&out.stderr)));
            }
            (spawn(env, &["down"]), rng.below(took.down))
        }
    };
    std::thread::sleep(Duration::from_millis(delay_ms));
    let landed = kill(env, victim, &mut cli);
    wait(&mut cli, Duration::from_secs(6 * 60))?;
    down_leaves_nothing(env)?;
    Ok((format!("{phase}/{victim:?}").to_lowercase(), landed))
}

#[test]
fn killing_the_cli_the_supervisor_qemu_or_the_agent_leaks_nothing() {
    let trials: u64 = count_from_env("TESTBED_CHAOS_VM_TRIALS", 4);
    let env = composition();
    let took = calibrate(&env);
    let mut kinds = std::collections::BTreeMap::<String, u32>::new();
    let mut landed = 0;
    let mut failures = Vec::new();
    for seed in 0..trials {
        match trial(&env, seed, &took) {
            Ok((kind, hit)) => {
                *kinds.entry(kind).or_default() += 1;
                landed += u32::from(hit);
            }
            Err(e) => {
                failures.push(format!("seed {seed}: {e}"));
                // The next trial starts clean or not at all.
                if down_leaves_nothing(&env).is_err() {
                    break;
                }
            }
        }
    }
    // After all of it, the composition comes up and answers.
    let out = env.testbed(&["up"]);
    assert!(out.status.success(), "the last up: {}", text(&out.stderr));
    let out = env.testbed(&["exec", "vm", "--", "hostname"]);
    assert_eq!(text(&out.stdout).trim(), "vm");
    // An agent killed while it serves a request: the request fails within
    // seconds and says why (it used to wait for ever), and the node's
    // next request is served by the agent systemd started again.
    let started = Instant::now();
    let out = kill_agent_in_flight(&env).expect("testbed exec");
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the agent on vm started again"),
        "{}",
        text(&out.stderr)
    );
    assert!(took < Duration::from_secs(50), "took {took:?}");
    let out = env.testbed(&["exec", "vm", "--", "hostname"]);
    assert_eq!(text(&out.stdout).trim(), "vm", "{}", text(&out.stderr));
    down_leaves_nothing(&env).expect("the last down");
    let per: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let line = format!(
        "chaos (QEMU VMs): {trials} trials ({landed} kills landed), {} leaks or hangs ({})",
        failures.len(),
        per.join(", ")
    );
    record_robustness(env!("CARGO_TARGET_TMPDIR"), &line);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
