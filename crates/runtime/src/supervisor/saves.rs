//! Snapshots of the whole running cluster (`docs/snapshots.md`): save,
//! restore within the same `up`, and the start of a cluster from one
//! (`up --from`). The files are [`crate::saved`]'s; the machines are the
//! backend's ([`Backend::save`], [`Backend::resume`]).
//!
//! A save is one consistent cut: the supervisor ends its agent sessions,
//! the backend stops every machine, saves each, and lets them all run on;
//! the supervisor then opens new sessions (setting each clock: a stopped
//! guest's stood still). A restore stops every node and resumes each from
//! its saved machine as a new generation, puts the saved faults back in
//! the switch, and opens new sessions the same way.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testbed_proto::{Client, ClientOptions, ExecRequest};

use super::{lock, start_machine, NodeRt, NodeState, Refusal, Shared, CONSOLE_TAIL};
use crate::api::{SavedNode, SnapshotInfo};
use crate::backend::{BackendError, Channel, Stop};
use crate::saved::{self, Saved, SavedError, Writing};

/// How old an agent session must be before a save ends it: QEMU reports a
/// port's changes at most once a second, and the save waits for the next.
const SETTLED_SESSION: Duration = Duration::from_millis(1200);

fn refuse(e: impl std::fmt::Display) -> Refusal {
    Refusal::new(e.to_string(), None)
}

fn refuse_backend(e: BackendError) -> Refusal {
    Refusal {
        unsupported: matches!(e, BackendError::Unsupported { .. }),
        message: e.to_string(),
        node: None,
    }
}

/// The folder of this cluster's snapshots.
fn root(shared: &Shared) -> Result<&Path, Refusal> {
    shared.spec.saved.as_deref().ok_or_else(|| {
        refuse(
            "this cluster was started by an older testbed, which did not say where its snapshots go; take it down and up again",
        )
    })
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sets the guest's clock to the host's: a resumed or saved machine's
/// stood still while it was stopped.
pub(super) fn sync_clock(shared: &Shared, node: &str, client: &Client) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = format!("@{}.{:03}", now.as_secs(), now.subsec_millis());
    let request = ExecRequest::argv(shared.backend.clock_command(node, &stamp))
        .timeout(Duration::from_secs(30));
    match client.exec_output(request) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "cannot set its clock: date said {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot set its clock: {e}")),
    }
}

/// Saves the cluster as its snapshot `name`.
pub(super) fn save(shared: &Arc<Shared>, name: &str) -> Result<SnapshotInfo, Refusal> {
    let root = root(shared)?;
    saved::check_name(name).map_err(refuse)?;
    let _one = lock(&shared.saving);
    if *shared.stopping.read().unwrap_or_else(|e| e.into_inner()) {
        return Err(refuse("the cluster is going down"));
    }
    let started = Instant::now();
    // Ready or stopped nodes only: anything else is on its way somewhere,
    // and a paused node's agent could not let its session go.
    let (running, nodes) = {
        let nodes = lock(&shared.nodes);
        let busy: Vec<String> = shared
            .spec
            .nodes
            .iter()
            .filter_map(|s| nodes.get(&s.name))
            .filter(|n| !matches!(n.state, NodeState::Ready | NodeState::Stopped))
            .map(|n| format!("{} is {}", n.spec.name, n.state))
            .collect();
        if !busy.is_empty() {
            return Err(refuse(format!(
                "a snapshot needs every node ready or stopped: {}",
                busy.join(", ")
            )));
        }
        let running: Vec<(String, u64, Option<Instant>)> = shared
            .spec
            .nodes
            .iter()
            .filter_map(|s| nodes.get(&s.name))
            .filter(|n| n.state == NodeState::Ready)
            .map(|n| (n.spec.name.clone(), n.generation, n.attached))
            .collect();
        let listed: Vec<SavedNode> = shared
            .spec
            .nodes
            .iter()
            .map(|s| SavedNode {
                name: s.name.clone(),
                role: s.role.clone(),
                running: nodes
                    .get(&s.name)
                    .is_some_and(|n| n.state == NodeState::Ready),
                bytes: 0,
            })
            .collect();
        (running, listed)
    };
    // The backend must be able to at all before anything is touched.
    if running.is_empty() {
        return Err(refuse("no node runs: there is nothing to save"));
    }
    let client_key = fs::read_to_string(shared.dir.ssh_dir().join("id_ed25519"))
        .map_err(|e| refuse(format!("cannot read the cluster's ssh key: {e}")))?;
    let writing = Writing::begin(root, name).map_err(refuse)?;
    if let Some(youngest) = running.iter().filter_map(|(_, _, at)| *at).max() {
        std::thread::sleep(SETTLED_SESSION.saturating_sub(youngest.elapsed()));
    }
    let faults = lock(&shared.switch).faults();
    let names: Vec<String> = running.iter().map(|(n, _, _)| n.clone()).collect();
    shared.log(&format!(
        "saving snapshot {name} of {} running nodes",
        names.len()
    ));
    let quiesced = std::sync::atomic::AtomicBool::new(false);
    let quiesce = || {
        quiesced.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut closers = Vec::new();
        {
            let mut nodes = lock(&shared.nodes);
            for name in &names {
                if let Some(n) = nodes.get_mut(name) {
                    n.client = None;
                    n.message = Some("saving a snapshot".to_owned());
                    closers.extend(n.close.take());
                }
            }
        }
        for close in closers {
            close();
        }
    };
    let result = shared.backend.save(&names, &writing.machines(), &quiesce);
    // Whatever happened, every node whose session was ended gets its agent
    // back (a backend that failed or could not before `quiesce` closed
    // nothing: a second host would wait behind the first).
    let reconnected = if quiesced.load(std::sync::atomic::Ordering::SeqCst) {
        reconnect_all(shared, &running)
    } else {
        Ok(())
    };
    result.map_err(refuse_backend)?;
    reconnected?;
    let mut info = SnapshotInfo {
        name: name.to_owned(),
        cluster: shared.spec.cluster.clone(),
        composition: shared.spec.composition.clone(),
        backend: shared.backend.caps().name.clone(),
        created_unix: now_unix(),
        took_ms: 0,
        nodes,
        faults,
        path: root.join(name),
    };
    for node in info.nodes.iter_mut().filter(|n| n.running) {
        let file = writing.machines().join(&node.name);
        node.bytes = fs::metadata(&file)
            .map_err(|e| refuse(format!("{}: its saved machine is missing: {e}", node.name)))?
            .len();
    }
    info.took_ms = testbed_proto::millis(started.elapsed());
    let done = writing
        .commit(&shared.spec, &client_key, &info)
        .map_err(refuse)?;
    shared.log(&format!(
        "saved snapshot {name} ({} MiB) in {:.2}s",
        info.bytes() / (1 << 20),
        started.elapsed().as_secs_f64()
    ));
    Ok(done.info)
}

/// New agent sessions for the nodes a save ended, side by side; a node
/// that cannot be reached again fails.
fn reconnect_all(
    shared: &Arc<Shared>,
    running: &[(String, u64, Option<Instant>)],
) -> Result<(), Refusal> {
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = running
            .iter()
            .map(|(name, generation, _)| {
                scope.spawn(move || {
                    reconnect(shared, name, *generation, true).map_err(|e| {
                        shared.fail(name, *generation, e.clone());
                        format!("{name}: {e}")
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok().and_then(Result::err))
            .collect()
    });
    if failures.is_empty() {
        Ok(())
    } else {
        Err(refuse(format!(
            "after the save, these nodes did not answer again: {}",
            failures.join("; ")
        )))
    }
}

/// Opens a new agent session with a node that stayed ready (its machine
/// ran on): after a save (`set_clock`: its clock stood still meanwhile),
/// and after its agent went away. `Ok(false)`: the node stopped
/// meanwhile, nothing to reconnect.
pub(super) fn reconnect(
    shared: &Arc<Shared>,
    name: &str,
    generation: u64,
    set_clock: bool,
) -> Result<bool, String> {
    let Some(spec) = shared.spec.node(name) else {
        return Err("not in the cluster".to_owned());
    };
    let deadline = Instant::now() + super::RECONNECT_TIMEOUT;
    let current = || {
        lock(&shared.nodes)
            .get(name)
            .is_some_and(|n| n.generation == generation && n.state == NodeState::Ready)
    };
    let channel: Channel = match super::open_channel(shared, spec, deadline, current) {
        Ok(Some(channel)) => channel,
        // Crashed or stopped meanwhile: nothing to reconnect.
        Ok(None) => return Ok(false),
        Err(e) => return Err(e.to_string()),
    };
    let (close, closed_by_us) = super::closer(channel.close);
    let options = ClientOptions {
        node: name.to_owned(),
        hello_timeout: deadline.saturating_duration_since(Instant::now()),
        ..ClientOptions::default()
    };
    let client = match Client::with_options(channel.reader, channel.writer, options) {
        Ok(client) => Arc::new(client),
        Err(e) => {
            close();
            return Err(format!(
                "its agent did not answer again: {e}; the console's last lines:\n{}",
                super::console_tail(&shared.dir.node(name).console_log(), CONSOLE_TAIL)
            ));
        }
    };
    if set_clock {
        sync_clock(shared, name, &client)?;
    }
    let kept = shared.set(name, generation, |n| {
        n.client = Some(Arc::clone(&client));
        n.close = Some(Arc::clone(&close));
        n.attached = Some(Instant::now());
        n.message = None;
        // In the same step: a watcher of this new session may mark it
        // reconnecting again as soon as it exists.
        n.reconnecting = false;
    });
    if kept {
        super::watch_agent(shared, name, generation, &client, closed_by_us);
    } else {
        close();
    }
    Ok(kept)
}

/// Brings every node back to the snapshot `name`, which must have been
/// saved from this same `up` (the guests hold its keys and secrets).
pub(super) fn restore(shared: &Arc<Shared>, name: &str) -> Result<SnapshotInfo, Refusal> {
    let root = root(shared)?;
    let snapshot = Saved::open(root, &shared.spec.cluster, name).map_err(refuse)?;
    let spec = snapshot.spec().map_err(refuse)?;
    if spec.nodes != shared.spec.nodes {
        return Err(refuse(format!(
            "snapshot {name} was saved from another `up` of cluster {} (its nodes, keys or secrets differ from this one's): take the cluster down and start it with `testbed up --from {name}`",
            shared.spec.cluster
        )));
    }
    let _one = lock(&shared.saving);
    if *shared.stopping.read().unwrap_or_else(|e| e.into_inner()) {
        return Err(refuse("the cluster is going down"));
    }
    let started = Instant::now();
    shared.log(&format!("restoring snapshot {name}"));
    // Every node's machine goes; the exits are of older generations.
    let closers: Vec<_> = {
        let mut nodes = lock(&shared.nodes);
        nodes
            .values_mut()
            .map(|n| {
                n.generation += 1;
                n.state = NodeState::Starting;
                n.message = Some(format!("restoring snapshot {name}"));
                n.client = None;
                n.run = None;
                n.close.take()
            })
            .collect()
    };
    for close in closers.into_iter().flatten() {
        close();
    }
    for node in &shared.spec.nodes {
        if let Err(e) = shared.backend.stop(&node.name, Stop::PowerCut) {
            shared.log(&format!("{}: stopping it for the restore: {e}", node.name));
        }
    }
    start_saved(shared, &snapshot)?;
    // Every resumed node ready, or the first failure.
    let timeout = shared.spec.boot_timeout();
    let back = |n: &NodeRt| matches!(n.state, NodeState::Ready | NodeState::Stopped);
    let failed = |n: &&NodeRt| n.state == NodeState::Failed;
    let nodes = shared.wait_nodes(Instant::now() + timeout, |nodes| {
        nodes.values().any(|n| failed(&n)) || nodes.values().all(back)
    });
    if let Some(failed) = nodes.values().find(failed) {
        return Err(Refusal::new(
            format!(
                "node {} did not come back from snapshot {name}: {}",
                failed.spec.name,
                failed.message.clone().unwrap_or_default()
            ),
            Some(&failed.spec.name),
        ));
    }
    if !nodes.values().all(back) {
        let waiting: Vec<String> = nodes
            .values()
            .filter(|n| !n.state.settled())
            .map(|n| format!("{} is {}", n.spec.name, n.state))
            .collect();
        return Err(refuse(format!(
            "snapshot {name}: not every node was back within {:.0}s: {}",
            timeout.as_secs_f64(),
            waiting.join(", ")
        )));
    }
    drop(nodes);
    let mut info = snapshot.info.clone();
    info.took_ms = testbed_proto::millis(started.elapsed());
    shared.log(&format!(
        "restored snapshot {name} in {:.2}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(info)
}

/// Puts the snapshot's faults in force and starts every node that ran
/// when it was saved from its machine; the others are stopped.
fn start_saved(shared: &Arc<Shared>, snapshot: &Saved) -> Result<(), Refusal> {
    let name = &snapshot.info.name;
    {
        let switch = lock(&shared.switch);
        switch
            .set_faults(&snapshot.info.faults, &format!("restore snapshot {name}"))
            .map_err(refuse)?;
    }
    shared.backend.faults_changed().map_err(refuse_backend)?;
    for node in &snapshot.info.nodes {
        if node.running {
            start_machine(shared, &node.name, Some(snapshot.machine(&node.name)));
        } else {
            let generation = lock(&shared.nodes)
                .get(&node.name)
                .map_or(0, |n| n.generation);
            shared.set(&node.name, generation, |n| {
                n.state = NodeState::Stopped;
                n.message = Some(format!("it was stopped when snapshot {name} was saved"));
            });
        }
    }
    Ok(())
}

/// `up --from`: the cluster starts from the snapshot in `from` (its
/// folder) instead of booting.
pub(super) fn resume_all(shared: &Arc<Shared>, from: &Path) {
    let opened = match (from.parent(), from.file_name().and_then(|n| n.to_str())) {
        (Some(root), Some(name)) => Saved::open(root, &shared.spec.cluster, name),
        _ => Err(SavedError::Name(from.display().to_string())),
    };
    let result = opened.map_err(refuse).and_then(|snapshot| {
        shared.log(&format!("starting from snapshot {}", snapshot.info.name));
        start_saved(shared, &snapshot)
    });
    if let Err(e) = result {
        for node in &shared.spec.nodes {
            shared.fail(&node.name, 0, e.message.clone());
        }
    }
}
