//! Chaos trials on a real backend, shared by `chaos_vms.rs` (QEMU),
//! `libvirt_chaos.rs` and `containers_chaos.rs` (podman): at a random
//! point of `up`, `test` or `down` of a one-node cluster, one of the CLI,
//! the supervisor, the node's machine (its QEMU, libvirt's QEMU, its
//! container's init) or the agent inside gets SIGKILL. Then `down`: no process that names the cluster's state
//! directory, no state, nothing the backend made (its engine's
//! containers, networks and image tags), and the next `up` of the same
//! composition (the next trial's, and a last one) works.
//!
//! Kill points are drawn within each phase's duration, measured
//! undisturbed first on this machine ([`calibrate`]).

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use testbed_test_support::{text, SeededRng};

use super::{testbed_command, Env};

/// A one-node composition named `chaos` whose test runs one command for
/// 6 s. Its machine is the backend contract's (conformance.rs), so its
/// image and role snapshot are shared with that test through the store.
pub fn composition() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("chaos");
    std::fs::create_dir_all(&dir).unwrap();
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

/// What is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Victim {
    Cli,
    Supervisor,
    /// The node's machine: its QEMU, or its container's first process.
    Machine,
    Agent,
}

/// One backend's side of the trials.
pub struct Backend {
    /// `--backend` of `up` and `test`.
    pub name: &'static str,
    /// The pids of the node's machine, when it runs.
    pub machine: fn(&Env) -> Vec<u32>,
    /// What the backend made outside the state directory and left (a
    /// container, a network, an image tag of the cluster): must be empty
    /// after `down`.
    pub made: fn(&Env) -> Vec<String>,
}

impl Backend {
    fn args(&self, verb: &'static str) -> [&'static str; 3] {
        [verb, "--backend", self.name]
    }
}

/// A verb of the CLI started in the background, as a user's shell does.
fn spawn(env: &Env, args: &[&str]) -> Child {
    testbed_command(args, &env.comp)
        .env("TESTBED_STORE", super::store())
        .env("TESTBED_STATE_DIR", &env.state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn testbed")
}

pub fn sigkill(pid: u32) -> bool {
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The pids of processes of this environment whose command line contains
/// `needle` (the supervisor, the QEMUs).
pub fn pids(env: &Env, needle: &str) -> Vec<u32> {
    env.leftovers()
        .iter()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// `testbed exec vm` of a command that kills the agent serving it, then
/// waits far longer than the test allows: at most a minute (`timeout`).
pub fn kill_agent_in_flight(env: &Env) -> std::io::Result<Output> {
    Command::new("timeout")
        .args(["60", env!("CARGO_BIN_EXE_testbed")])
        .args(["exec", "vm", "--", "sh", "-c"])
        .arg("kill -KILL $(pidof testbed-agent); sleep 120")
        .current_dir(&env.comp)
        .env("TESTBED_STORE", super::store())
        .env("TESTBED_STATE_DIR", &env.state)
        .stdin(Stdio::null())
        .output()
}

/// Kills `victim`; whether there was one to kill.
fn kill(env: &Env, backend: &Backend, victim: Victim, cli: &mut Child) -> bool {
    match victim {
        // Not if it ended already (a kill of the zombie would succeed).
        Victim::Cli => matches!(cli.try_wait(), Ok(None)) && cli.kill().is_ok(),
        Victim::Supervisor => pids(env, " supervise ")
            .into_iter()
            .map(sigkill)
            .fold(false, |a, b| a | b),
        Victim::Machine => (backend.machine)(env)
            .into_iter()
            .map(sigkill)
            .fold(false, |a, b| a | b),
        // From inside, once the node answers, by the very `exec` that
        // the agent serves (a request in flight when it dies; others may
        // be, such as the test script's). It landed if the exec failed.
        Victim::Agent => {
            let ready = env.testbed(&["status", "--json"]);
            if !text(&ready.stdout).contains("\"ready\"") {
                return false;
            }
            kill_agent_in_flight(env).is_ok_and(|out| !out.status.success())
        }
    }
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
pub fn down_leaves_nothing(env: &Env, backend: &Backend) -> Result<(), String> {
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
    let made = (backend.made)(env);
    if !made.is_empty() {
        return Err(format!("{} left: {made:?}", backend.name));
    }
    Ok(())
}

/// How long each phase takes undisturbed here, in ms: kill points are
/// drawn within them, so that a kill lands while the phase runs whatever
/// the machine's speed.
pub struct Durations {
    up: u64,
    test: u64,
    down: u64,
}

/// One undisturbed `up`, `down` and `test`. On QEMU the first `up` also
/// makes the role snapshot (and maybe the image), so a second pair is
/// timed; elsewhere the first `up` is the measure (an import of the image
/// makes it longer: kill points drawn after its end land on nothing, which
/// the trials count).
pub fn calibrate(env: &Env, backend: &Backend) -> Durations {
    let timed = |args: &[&str]| {
        let start = Instant::now();
        let out = env.testbed(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        (start.elapsed().as_millis() as u64).max(1)
    };
    let mut up = timed(&backend.args("up"));
    let mut down = timed(&["down"]);
    if backend.name == "qemu" {
        up = timed(&backend.args("up"));
        down = timed(&["down"]);
    }
    let test = timed(&backend.args("test"));
    Durations { up, test, down }
}

/// One seeded trial: what it killed when (`phase/victim`), and whether
/// the kill landed.
fn trial(
    env: &Env,
    backend: &Backend,
    seed: u64,
    took: &Durations,
) -> Result<(String, bool), String> {
    let mut rng = SeededRng::new(seed);
    let victim = [
        Victim::Cli,
        Victim::Supervisor,
        Victim::Machine,
        Victim::Agent,
    ][rng.below(4) as usize];
    let phase = ["up", "test", "down"][rng.below(3) as usize];
    let (mut cli, delay_ms) = match phase {
        "up" => (spawn(env, &backend.args("up")), rng.below(took.up)),
        // `test` brings the cluster up, runs the script (6 s), downs it.
        "test" => (spawn(env, &backend.args("test")), rng.below(took.test)),
        _ => {
            let out = env.testbed(&backend.args("up"));
            if !out.status.success() {
                return Err(format!("up failed: {}", text(&out.stderr)));
            }
            (spawn(env, &["down"]), rng.below(took.down))
        }
    };
    std::thread::sleep(Duration::from_millis(delay_ms));
    let landed = kill(env, backend, victim, &mut cli);
    wait(&mut cli, Duration::from_secs(6 * 60))?;
    down_leaves_nothing(env, backend)?;
    Ok((format!("{phase}/{victim:?}").to_lowercase(), landed))
}

/// `trials` seeded trials (after the calibration, and `calibrated`),
/// then a last `up` that must answer; the line to record (`chaos (LABEL):
/// N trials ...`) and the failures.
pub fn run(
    env: &Env,
    backend: &Backend,
    trials: u64,
    label: &str,
    calibrated: impl FnOnce(),
) -> (String, Vec<String>) {
    let took = calibrate(env, backend);
    calibrated();
    let mut kinds = std::collections::BTreeMap::<String, u32>::new();
    let mut landed = 0;
    let mut failures = Vec::new();
    for seed in 0..trials {
        match trial(env, backend, seed, &took) {
            Ok((kind, hit)) => {
                *kinds.entry(kind).or_default() += 1;
                landed += u32::from(hit);
            }
            Err(e) => {
                failures.push(format!("seed {seed}: {e}"));
                // The next trial starts clean or not at all.
                if down_leaves_nothing(env, backend).is_err() {
                    break;
                }
            }
        }
    }
    // After all of it, the composition comes up and answers.
    let out = env.testbed(&backend.args("up"));
    assert!(out.status.success(), "the last up: {}", text(&out.stderr));
    let out = env.testbed(&["exec", "vm", "--", "hostname"]);
    assert_eq!(text(&out.stdout).trim(), "vm");
    let per: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let line = format!(
        "chaos ({label}): {trials} trials ({landed} kills landed), {} leaks or hangs ({})",
        failures.len(),
        per.join(", ")
    );
    (line, failures)
}

/// On the running cluster: an agent killed while it serves a request,
/// three times in a row (each new agent killed seconds after its session
/// opened). Each time the request fails within seconds and says `why` (on
/// a VM it used to wait for ever), and the node's next request is served
/// by the new agent (a third such kill used to leave the node without
/// one: the host's cancel of the killed request reached the new agent,
/// which closed its port and lost the next hello).
pub fn agent_killed_in_flight(env: &Env, why: &str) {
    for round in 1..=3 {
        let started = Instant::now();
        let out = kill_agent_in_flight(env).expect("testbed exec");
        let took = started.elapsed();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "kill {round}: {stderr}");
        assert!(stderr.contains(why), "kill {round}: {stderr}");
        assert!(took < Duration::from_secs(50), "kill {round} took {took:?}");
        let out = env.testbed(&["exec", "vm", "--", "hostname"]);
        assert_eq!(
            text(&out.stdout).trim(),
            "vm",
            "after kill {round}: {}",
            text(&out.stderr)
        );
    }
}
