//! Chaos against the supervisor's state machine, on the fake backend
//! (`support/fake.rs`): many trials, each killing one thing at a random
//! point of one phase of a cluster's life, then taking the cluster down
//! and bringing it up again in the same folder.
//!
//! - phases: `up` (nodes booting and activating), `test` (a client's
//!   command running on a node), `down` (a `down` under way);
//! - victims: an API client (the CLI: its connection drops in the middle of
//!   its request), a node's machine (its QEMU killed: gone at once, the
//!   exit reported) or a node's agent (its channel closes, the machine
//!   runs on).
//!
//! After each kill: `down` answers within a bound, no machine of the fake
//! runs, the state directory is gone, the API server returned, every
//! client got an answer or the end of its connection (none hangs), and a
//! new `up` in the same folder brings every node to ready.
//!
//! Process-level kills (the CLI, the supervisor, QEMU and the agent as
//! real processes, SIGKILL) on real VMs are in
//! `crates/testbed/tests/chaos_vms.rs`.
//!
//! `TESTBED_CHAOS_TRIALS` sets the number of trials (default 240); the
//! counts are recorded in `target/tmp/robustness.txt`.

#[path = "support/fake.rs"]
mod fake;

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::Duration;

use fake::{Cluster, Quirk};
use testbed_proto::ExecRequest;
use testbed_runtime::api::{self, ApiClient, NodeState, Reply, Request};
use testbed_test_support::{count_from_env, record_robustness, SeededRng};

/// What a hang would take: every step here ends in milliseconds.
const BOUND: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Up,
    Test,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Victim {
    Client,
    Machine,
    Agent,
}

const NODES: [&str; 3] = ["a", "b", "c"];

/// Runs `f` on a thread and waits for it at most [`BOUND`].
fn bounded<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(BOUND)
        .map_err(|_| format!("{what} did not end within {BOUND:?}"))
}

/// A client's request on its own connection, read to its end on a thread:
/// the replies' kinds, or what went wrong. The returned stream ends the
/// connection when shut down (the client killed).
fn request(
    socket: &std::path::Path,
    request: &Request,
) -> Result<(UnixStream, mpsc::Receiver<Vec<String>>), String> {
    let mut conn = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    let mut line = Vec::new();
    api::write_line(&mut line, request).map_err(|e| e.to_string())?;
    conn.write_all(&line).map_err(|e| format!("send: {e}"))?;
    let reader = conn.try_clone().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut replies = BufReader::new(reader);
        let mut kinds = Vec::new();
        // Ends at the connection's end, a final reply, or a read error (the
        // stream was shut down); a `watch` streams until `settled`.
        while let Ok(Some(reply)) = api::read_line::<_, Reply>(&mut replies) {
            let kind = match &reply {
                Reply::Exited { .. } => "exited",
                Reply::Error { .. } => "error",
                Reply::Settled(_) => "settled",
                Reply::Ok => "ok",
                _ => "more",
            };
            kinds.push(kind.to_owned());
            if kind != "more" {
                break;
            }
        }
        let _ = tx.send(kinds);
    });
    Ok((conn, rx))
}

/// Kills `victim`; whether it was there to kill (a machine not started
/// yet, or a client whose request had ended, was not).
fn kill(c: &Cluster, victim: Victim, node: &str, client: &UnixStream) -> bool {
    match victim {
        // A connection whose peer is gone fails to shut down.
        Victim::Client => client.shutdown(std::net::Shutdown::Both).is_ok(),
        Victim::Machine => c.fake.kill_machine(node),
        Victim::Agent => c.fake.kill_agent(node),
    }
}

fn wait_ready(c: &Cluster) -> Result<(), String> {
    for n in NODES {
        if c.sup
            .wait_node(n, BOUND, |s| s.state == NodeState::Ready)
            .is_none()
        {
            return Err(format!("{n} did not become ready: {:?}", c.sup.node(n)));
        }
    }
    Ok(())
}

/// One trial; `Err` says what leaked or hung.
fn trial(seed: u64) -> Result<(Phase, Victim, bool), String> {
    let mut rng = SeededRng::new(seed);
    let phase = [Phase::Up, Phase::Test, Phase::Down][rng.below(3) as usize];
    let victim = [Victim::Client, Victim::Machine, Victim::Agent][rng.below(3) as usize];
    let node = NODES[rng.below(3) as usize];
    // Sometimes a node that ignores a clean power-off, so that `down`
    // meets a machine that must be stopped hard.
    let stubborn = NODES[rng.below(3) as usize];
    let quirks: Vec<(&str, Quirk)> = if rng.below(4) == 0 {
        vec![(stubborn, Quirk::IgnoresPowerOff)]
    } else {
        Vec::new()
    };
    let c = Cluster::start(&quirks, true, Duration::from_secs(2));
    let socket = c.dir.api_socket();
    let listener = UnixListener::bind(&socket).map_err(|e| e.to_string())?;
    let sup = c.sup.clone();
    let (served_tx, served) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = served_tx.send(sup.serve(listener).map_err(|e| e.to_string()));
    });

    let mut clients = Vec::new();
    let mut down_sent = false;
    let hit;
    match phase {
        Phase::Up => {
            // The CLI's `up` watches the nodes come up.
            let (conn, rx) = request(&socket, &Request::Watch)?;
            std::thread::sleep(Duration::from_millis(rng.below(15)));
            hit = kill(&c, victim, node, &conn);
            clients.push(("watch", conn, rx));
        }
        Phase::Test => {
            wait_ready(&c)?;
            let exec = ExecRequest::argv(["sleep", "0.3"]);
            let (conn, rx) = request(
                &socket,
                &Request::Exec {
                    node: node.to_owned(),
                    exec,
                },
            )?;
            std::thread::sleep(Duration::from_millis(rng.below(60)));
            hit = kill(&c, victim, node, &conn);
            clients.push(("exec", conn, rx));
        }
        Phase::Down => {
            wait_ready(&c)?;
            let (conn, rx) = request(&socket, &Request::Down)?;
            down_sent = true;
            std::thread::sleep(Duration::from_millis(rng.below(5)));
            hit = kill(&c, victim, node, &conn);
            clients.push(("down", conn, rx));
        }
    }
    // Every client gets its answer or the end of its connection.
    for (what, _conn, rx) in &clients {
        rx.recv_timeout(BOUND)
            .map_err(|_| format!("the {what} client hung after the kill"))?;
    }
    if !down_sent {
        let socket = socket.clone();
        let reply = bounded("down", move || {
            ApiClient::connect(&socket).and_then(|mut client| client.call(&Request::Down))
        })?
        .map_err(|e| format!("down: {e}"))?;
        if reply != Reply::Ok {
            return Err(format!("down answered {reply:?}"));
        }
    }
    served
        .recv_timeout(BOUND)
        .map_err(|_| "the API server did not return after down".to_owned())??;
    if !c.fake.running().is_empty() {
        return Err(format!("machines left: {:?}", c.fake.running()));
    }
    if c.dir.exists() {
        return Err(format!("state left: {}", c.dir.path().display()));
    }

    // The next `up` of the same cluster, in the same folder, works.
    let Cluster { _tmp: tmp, .. } = c;
    let again = Cluster::start_in(tmp, &[], true, Duration::from_secs(2));
    wait_ready(&again)?;
    let sup = again.sup.clone();
    bounded("the second down", move || sup.down())?;
    if !again.fake.running().is_empty() || again.dir.exists() {
        return Err("the second up left machines or state".to_owned());
    }
    Ok((phase, victim, hit))
}

#[test]
fn killing_a_client_a_machine_or_an_agent_at_any_point_leaks_nothing() {
    let trials: u64 = count_from_env("TESTBED_CHAOS_TRIALS", 240);
    // Thousands of activations: their info lines would drown the output.
    testbed_agent::quiet_info();
    let mut counts: BTreeMap<(Phase, Victim), u32> = BTreeMap::new();
    let mut hits = 0;
    let mut failures = Vec::new();
    for seed in 0..trials {
        match trial(seed) {
            Ok((phase, victim, hit)) => {
                *counts.entry((phase, victim)).or_default() += 1;
                hits += u32::from(hit);
            }
            Err(e) => failures.push(format!("seed {seed}: {e}")),
        }
    }
    let per: Vec<String> = counts
        .iter()
        .map(|((p, v), n)| format!("{p:?}/{v:?} {n}").to_lowercase())
        .collect();
    let line = format!(
        "chaos (fake backend): {trials} trials ({hits} kills landed), {} leaks or hangs ({})",
        failures.len(),
        per.join(", ")
    );
    record_robustness(env!("CARGO_TARGET_TMPDIR"), &line);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
