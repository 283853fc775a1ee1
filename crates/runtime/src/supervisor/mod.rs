//! The per-cluster supervisor: one process that owns a running cluster.
//!
//! `testbed up` writes the [`ClusterSpec`] into a fresh state directory and
//! starts `testbed supervise DIR` in the background; that process calls
//! [`run`], which opens the cluster's backend ([`crate::backend`]: the
//! switch and whatever runs the nodes), starts a [`Supervisor`] and serves
//! its JSON API ([`crate::api`]) on `api.sock` until `down`.
//!
//! The [`Supervisor`] knows no backend. It
//! 1. boots every node in parallel (one thread per boot: the backend starts
//!    the machine, the supervisor opens the agent channel, waits for the
//!    hello and sends the activation),
//! 2. keeps each node's state, generation and expected stop, and turns the
//!    backend's exit reports into `stopped` or `failed`,
//! 3. does power transitions, waits, faults and file transfers,
//! 4. answers requests in-process ([`Supervisor::power`], ...), which the
//!    socket transport ([`run`]) and tests call alike.
//!
//! Invariants:
//! - Every boot has a generation number; a thread or a backend report
//!   working for an older boot (a node rebooted or crashed meanwhile) never
//!   overwrites the state.
//! - No backend start runs during or after `down` (the boot gate).
//! - A node's agent connection survives faults on the cluster network: it
//!   is a virtio-serial port (VMs) or `exec -i` (containers), not a NIC.
//! - The state directory is removed by `down`; processes a supervisor
//!   killed with SIGKILL left behind are found by
//!   [`crate::state::teardown`].

mod saves;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use testbed_proto::{
    Client, ClientError, ClientOptions, Exec, ExecEvent, ExecRequest, Identity, PutRequest,
};
use thiserror::Error;

use crate::api::{
    self, ClusterStatus, Fault, Input, NodeState, NodeStatus, PowerAction, Reply, Request,
    SnapshotInfo, WaitFor,
};
use crate::backend::{
    self, Backend, BackendError, Channel, Events, Opened, Restored, SharedSwitch, Stop,
};
use crate::spec::{ClusterSpec, NodeSpec};
use crate::state::{self, StateDir};
use crate::switch::{FaultEvent, LinkRule};

/// How long a node's agent session that ended by itself waits for the
/// report that its machine ended too, before it is opened again.
const MACHINE_END_GRACE: Duration = Duration::from_secs(2);

/// How long opening a new session with a node that stayed up may take
/// (its channel and the agent's hello).
pub(super) const RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a request waits for a new session with an agent that started
/// again: longer than the reconnect may take, so that the request gets its
/// outcome (a new session, or a failed node) rather than a guess.
const RECONNECT_WAIT: Duration =
    Duration::from_secs(MACHINE_END_GRACE.as_secs() + RECONNECT_TIMEOUT.as_secs() + 5);

/// How long file transfers and small agent requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How many console lines a failure message quotes.
const CONSOLE_TAIL: usize = 25;

#[derive(Debug, Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("{backend} backend: {source}")]
    Backend {
        backend: String,
        source: BackendError,
    },
    #[error("cannot serve the API on {}: {source}", .path.display())]
    Api { path: PathBuf, source: io::Error },
}

/// Where the supervisor's log lines go (the CLI writes them to
/// `supervisor.log`).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// A request the supervisor did not carry out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct Refusal {
    pub message: String,
    /// The node it is about, if any.
    pub node: Option<String>,
    /// The backend cannot do this at all (as opposed to: it failed).
    pub unsupported: bool,
}

impl Refusal {
    fn new(message: impl Into<String>, node: Option<&str>) -> Refusal {
        Refusal {
            message: message.into(),
            node: node.map(str::to_owned),
            unsupported: false,
        }
    }

    fn backend(e: BackendError, node: &str) -> Refusal {
        Refusal {
            unsupported: matches!(e, BackendError::Unsupported { .. }),
            message: format!("node {node}: {e}"),
            node: Some(node.to_owned()),
        }
    }

    fn reply(self) -> Reply {
        Reply::Error {
            message: self.message,
            node: self.node,
            unsupported: self.unsupported,
        }
    }
}

/// A node's machine, while it runs.
#[derive(Debug, Clone, Copy)]
struct Run {
    pid: Option<u32>,
    started: Instant,
}

/// One node at run time.
struct NodeRt {
    spec: NodeSpec,
    state: NodeState,
    message: Option<String>,
    run: Option<Run>,
    /// This boot's role snapshot and warning (see `NodeStatus`).
    snapshot: Option<String>,
    warning: Option<String>,
    /// The agent client, once the hello succeeded (kept when activation
    /// fails, so a failed node can still be inspected).
    client: Option<Arc<Client>>,
    /// Ends the agent channel, to unblock the client's reader when the node
    /// goes away.
    close: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Incremented at every boot.
    generation: u64,
    /// Why the machine is expected to stop (set by crash/shutdown), so its
    /// exit is not reported as a failure.
    expected_stop: Option<String>,
    /// When the current agent session began (a cluster save waits until
    /// it is old enough for QEMU to report the port's next change).
    attached: Option<Instant>,
    /// A new session with an agent that started again is being opened:
    /// requests wait for it (see [`Shared::client`]).
    reconnecting: bool,
}

struct Shared {
    spec: ClusterSpec,
    dir: StateDir,
    nodes: Mutex<BTreeMap<String, NodeRt>>,
    changed: Condvar,
    switch: SharedSwitch,
    backend: Box<dyn Backend>,
    /// `true` once `down` began. Boots hold it for reading around the
    /// backend's start; `down` takes it for writing, so it waits for the
    /// starts under way and no start begins after it.
    stopping: RwLock<bool>,
    /// Held by a cluster snapshot's save or restore: one at a time.
    saving: Mutex<()>,
    log: Log,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the backend reports reaches the supervisor through this; it holds
/// the supervisor weakly, so a backend's threads never keep it alive.
struct Hub {
    target: OnceLock<Weak<Shared>>,
    log: Log,
}

impl Events for Hub {
    fn exited(&self, node: &str, generation: u64, status: &str) {
        if let Some(shared) = self.target.get().and_then(Weak::upgrade) {
            machine_ended(&shared, node, generation, status);
        }
    }

    fn log(&self, line: &str) {
        (self.log)(line);
    }
}

/// A running cluster's supervisor, callable in-process.
#[derive(Clone)]
pub struct Supervisor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Supervisor({})", self.shared.spec.cluster)
    }
}

impl Supervisor {
    /// Opens the cluster's backend with `open` and boots every node in the
    /// background (after the backend's `prepare`).
    pub fn start(
        spec: ClusterSpec,
        dir: &StateDir,
        log: Log,
        open: impl FnOnce(Arc<dyn Events>) -> Result<Opened, BackendError>,
    ) -> Result<Supervisor, SupervisorError> {
        let mut nodes = BTreeMap::new();
        for node in &spec.nodes {
            let node_dir = dir.node(&node.name);
            fs::create_dir_all(&node_dir.path).map_err(|source| state::StateError::Io {
                what: "create",
                path: node_dir.path.clone(),
                source,
            })?;
            nodes.insert(
                node.name.clone(),
                NodeRt {
                    spec: node.clone(),
                    state: NodeState::Starting,
                    message: None,
                    run: None,
                    snapshot: None,
                    warning: None,
                    client: None,
                    close: None,
                    reconnecting: false,
                    generation: 0,
                    expected_stop: None,
                    attached: None,
                },
            );
        }
        let hub = Arc::new(Hub {
            target: OnceLock::new(),
            log: Arc::clone(&log),
        });
        let opened = open(Arc::clone(&hub) as Arc<dyn Events>).map_err(|source| {
            SupervisorError::Backend {
                backend: spec.backend.name(),
                source,
            }
        })?;
        let shared = Arc::new(Shared {
            spec,
            dir: dir.clone(),
            nodes: Mutex::new(nodes),
            changed: Condvar::new(),
            switch: opened.switch,
            backend: opened.backend,
            stopping: RwLock::new(false),
            saving: Mutex::new(()),
            log,
        });
        let _ = hub.target.set(Arc::downgrade(&shared));
        {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("boot-all".into())
                .spawn(move || {
                    if let Some(from) = shared.spec.resume.clone() {
                        return saves::resume_all(&shared, &from);
                    }
                    if let Err(e) = shared.backend.prepare() {
                        let message = e.to_string();
                        for name in shared.spec.nodes.iter().map(|n| n.name.clone()) {
                            shared.fail(&name, 0, message.clone());
                        }
                        return;
                    }
                    for name in shared.spec.nodes.iter().map(|n| n.name.clone()) {
                        start_boot(&shared, &name);
                    }
                })
                .map_err(|source| SupervisorError::Api {
                    path: dir.api_socket(),
                    source,
                })?;
        }
        Ok(Supervisor { shared })
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.shared.spec
    }

    pub fn status(&self) -> ClusterStatus {
        self.shared.status()
    }

    /// One node's status.
    pub fn node(&self, name: &str) -> Option<NodeStatus> {
        lock(&self.shared.nodes)
            .get(name)
            .map(|n| node_status(&self.shared.dir, n))
    }

    /// Waits until `cond` holds for `node`'s status and returns it; `None`
    /// when the time is up first.
    pub fn wait_node(
        &self,
        node: &str,
        timeout: Duration,
        cond: impl Fn(&NodeStatus) -> bool,
    ) -> Option<NodeStatus> {
        let status = |nodes: &BTreeMap<String, NodeRt>| {
            nodes.get(node).map(|n| node_status(&self.shared.dir, n))
        };
        let nodes = self.shared.wait_nodes(Instant::now() + timeout, |nodes| {
            status(nodes).is_some_and(|s| cond(&s))
        });
        status(&nodes).filter(|s| cond(s))
    }

    /// Sends `reply` lines for every node state change until every node is
    /// settled, then the `settled` status; `false` when `send` failed.
    pub fn watch(&self, send: &mut dyn FnMut(Reply) -> bool) -> bool {
        let shared = &self.shared;
        let mut sent: BTreeMap<String, NodeStatus> = BTreeMap::new();
        loop {
            let (changes, all_settled) = {
                let nodes = lock(&shared.nodes);
                let mut changes = Vec::new();
                for spec in &shared.spec.nodes {
                    let Some(node) = nodes.get(&spec.name) else {
                        continue;
                    };
                    let status = node_status(&shared.dir, node);
                    let differs = sent
                        .get(&spec.name)
                        .is_none_or(|s| s.state != status.state || s.message != status.message);
                    if differs {
                        changes.push(status);
                    }
                }
                let all = nodes.values().all(|n| n.state.settled());
                (changes, all)
            };
            for status in changes {
                sent.insert(status.name.clone(), status.clone());
                if !send(Reply::Node(status)) {
                    return false;
                }
            }
            if all_settled {
                return send(Reply::Settled(shared.status()));
            }
            let nodes = lock(&shared.nodes);
            let _ = shared
                .changed
                .wait_timeout(nodes, Duration::from_millis(500))
                .map(drop);
        }
    }

    /// The node's agent client, while it is connected.
    pub fn client(&self, node: &str) -> Result<Arc<Client>, Refusal> {
        self.shared.client(node)
    }

    pub fn exec(&self, node: &str, request: ExecRequest) -> Result<Exec, Refusal> {
        self.client(node)?
            .exec(request)
            .map_err(|e| Refusal::new(e.to_string(), Some(node)))
    }

    pub fn put(
        &self,
        node: &str,
        path: &str,
        mode: u32,
        owner: Option<String>,
        data: &[u8],
    ) -> Result<(), Refusal> {
        let mut request = PutRequest::new(path, mode);
        if let Some(owner) = owner {
            request = request.owner(owner);
        }
        self.client(node)?
            .put(request, data, REQUEST_TIMEOUT)
            .map_err(|e| Refusal::new(e.to_string(), Some(node)))
    }

    /// A file's mode and contents; at most [`api::MAX_FILE`] bytes, what
    /// one reply line carries (the download stops there).
    pub fn get(&self, node: &str, path: &str) -> Result<(u32, Vec<u8>), Refusal> {
        let client = self.client(node)?;
        let mut data = Capped::default();
        match client.get_to(path, &mut data, REQUEST_TIMEOUT) {
            Ok(info) => Ok((info.mode, data.bytes)),
            Err(_) if data.over => Err(Refusal::new(
                format!(
                    "{node}:{path} is larger than {} MiB, the most the API carries in one message (copy it with `exec` and `cat` or `tar`)",
                    api::MAX_FILE >> 20
                ),
                Some(node),
            )),
            Err(e) => Err(Refusal::new(e.to_string(), Some(node))),
        }
    }

    /// Waits for a unit, port or file inside `node` through its agent.
    pub fn wait_in(&self, node: &str, what: &WaitFor, timeout: Duration) -> Result<(), Refusal> {
        let client = self.client(node)?;
        let result = match what {
            WaitFor::Unit { unit } => client.wait_unit(unit, timeout),
            WaitFor::Port { port } => client.wait_port(*port, timeout),
            WaitFor::File { path } => client.wait_file(path, timeout),
        };
        result.map_err(|e| Refusal::new(e.to_string(), Some(node)))
    }

    pub fn power(&self, node: &str, action: PowerAction) -> Result<(), Refusal> {
        power(&self.shared, node, action)
    }

    /// Changes the fault table; a `link` change returns the link's rule.
    pub fn fault(&self, fault: Fault) -> Result<Option<LinkRule>, Refusal> {
        apply_fault(&self.shared, fault)
    }

    pub fn history(&self) -> Vec<FaultEvent> {
        lock(&self.shared.switch).history()
    }

    /// Saves the running cluster as its snapshot `name`
    /// ([`crate::saved`]); every node is ready again when this returns.
    pub fn save(&self, name: &str) -> Result<SnapshotInfo, Refusal> {
        saves::save(&self.shared, name)
    }

    /// Brings every node back to the snapshot `name` of this same `up`.
    pub fn restore(&self, name: &str) -> Result<SnapshotInfo, Refusal> {
        saves::restore(&self.shared, name)
    }

    /// Stops every node and the switch, removes what the backend made and
    /// the state directory; one line per action.
    pub fn down(&self) -> Vec<String> {
        down(&self.shared)
    }
}

/// Runs the cluster in `dir` until a `down` request; returns after the
/// state directory is removed.
pub fn run(dir: &StateDir, log: Log) -> Result<(), SupervisorError> {
    let spec = ClusterSpec::read(&dir.spec())?;
    state::write_atomic(
        &dir.supervisor_pid(),
        std::process::id().to_string().as_bytes(),
        0o600,
    )?;
    log(&format!(
        "supervising cluster {} ({} nodes, {} backend, accel {}) from {}",
        spec.cluster,
        spec.nodes.len(),
        spec.backend.name(),
        spec.accel,
        spec.composition.display()
    ));
    let listener_path = dir.api_socket();
    let api_error = |source| SupervisorError::Api {
        path: listener_path.clone(),
        source,
    };
    let _ = fs::remove_file(&listener_path);
    let listener = UnixListener::bind(&listener_path).map_err(api_error)?;
    let _ = fs::set_permissions(&listener_path, fs::Permissions::from_mode(0o600));
    let open_spec = spec.clone();
    let sup = Supervisor::start(spec, dir, log, |events| {
        backend::open(&open_spec, dir, events)
    })?;
    sup.serve(listener).map_err(api_error)
}

impl Supervisor {
    /// Serves the JSON API on `listener`, one thread per connection, until
    /// a `down` request was carried out.
    pub fn serve(&self, listener: UnixListener) -> io::Result<()> {
        serve_socket(self, listener)
    }
}

fn serve_socket(sup: &Supervisor, listener: UnixListener) -> io::Result<()> {
    const LISTENER: mio::Token = mio::Token(0);
    const WAKE: mio::Token = mio::Token(1);
    listener.set_nonblocking(true)?;
    let mut poll = mio::Poll::new()?;
    poll.registry().register(
        &mut mio::unix::SourceFd(&listener.as_raw_fd()),
        LISTENER,
        mio::Interest::READABLE,
    )?;
    let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut events = mio::Events::with_capacity(8);
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        loop {
            let conn = match listener.accept() {
                Ok((conn, _)) => conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            if conn.set_nonblocking(false).is_err() {
                continue;
            }
            let sup = sup.clone();
            let waker = Arc::clone(&waker);
            let done = Arc::clone(&done);
            let _ = std::thread::Builder::new()
                .name("api".into())
                .spawn(move || {
                    if serve(&sup, conn) == Served::Down {
                        done.store(true, std::sync::atomic::Ordering::SeqCst);
                        let _ = waker.wake();
                    }
                });
        }
    }
    Ok(())
}

/// The last `n` lines of a node's console, without control characters.
pub fn console_tail(path: &Path, n: usize) -> String {
    let Ok(bytes) = fs::read(path) else {
        return "(no console output)".to_owned();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .collect::<String>()
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    if lines.is_empty() {
        "(no console output)".to_owned()
    } else {
        lines[start..].join("\n")
    }
}

impl Shared {
    fn log(&self, message: &str) {
        (self.log)(message);
    }

    /// Changes a node's state if `generation` is still its current boot.
    fn set(&self, name: &str, generation: u64, f: impl FnOnce(&mut NodeRt)) -> bool {
        let mut nodes = lock(&self.nodes);
        let Some(node) = nodes.get_mut(name) else {
            return false;
        };
        if node.generation != generation {
            return false;
        }
        let before = (node.state, node.message.clone());
        f(node);
        if (node.state, node.message.clone()) != before {
            let line = match &node.message {
                Some(m) if node.state == NodeState::Failed => {
                    format!("{name}: {} — {m}", node.state)
                }
                _ => format!("{name}: {}", node.state),
            };
            drop(nodes);
            self.log(&line);
        }
        self.changed.notify_all();
        true
    }

    fn fail(&self, name: &str, generation: u64, message: String) {
        self.set(name, generation, |n| {
            n.state = NodeState::Failed;
            n.message = Some(message);
        });
    }

    fn status(&self) -> ClusterStatus {
        let nodes = lock(&self.nodes);
        let statuses = self
            .spec
            .nodes
            .iter()
            .filter_map(|s| nodes.get(&s.name))
            .map(|n| node_status(&self.dir, n))
            .collect();
        let caps = self.backend.caps();
        ClusterStatus {
            cluster: self.spec.cluster.clone(),
            composition: self.spec.composition.clone(),
            state_dir: self.dir.path().to_path_buf(),
            backend: caps.name.clone(),
            accel: if caps.accel {
                self.spec.accel.to_string()
            } else {
                "none".to_owned()
            },
            supervisor_pid: std::process::id(),
            console: caps.console,
            nodes: statuses,
        }
    }

    /// Waits on `changed` until `done` holds for the nodes or `deadline`
    /// passes, and returns the nodes' lock, held (so the caller reads the
    /// state `done` saw).
    fn wait_nodes(
        &self,
        deadline: Instant,
        done: impl Fn(&BTreeMap<String, NodeRt>) -> bool,
    ) -> MutexGuard<'_, BTreeMap<String, NodeRt>> {
        let mut nodes = lock(&self.nodes);
        while !done(&nodes) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            nodes = self
                .changed
                .wait_timeout(nodes, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        nodes
    }

    /// The node's agent client; while a new session with an agent that
    /// went away is being opened, after it (for at most a minute).
    fn client(&self, name: &str) -> Result<Arc<Client>, Refusal> {
        // A session that just ended by itself on a node that runs is about
        // to be opened again (its watcher sets `reconnecting` next).
        let ending = |n: &NodeRt| {
            n.state == NodeState::Ready
                && n.run.is_some()
                && n.client.as_ref().is_some_and(|c| c.is_closed())
        };
        let nodes = self.wait_nodes(Instant::now() + RECONNECT_WAIT, |nodes| {
            !nodes.get(name).is_some_and(|n| n.reconnecting || ending(n))
        });
        let Some(node) = nodes.get(name) else {
            let known: Vec<&str> = self.spec.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(Refusal::new(
                format!(
                    "no node {name} in this cluster (nodes: {})",
                    known.join(", ")
                ),
                None,
            ));
        };
        node.client.clone().ok_or_else(|| {
            Refusal::new(
                format!(
                    "node {name} is {}; its agent is not connected{}",
                    node.state,
                    node.message
                        .as_ref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                ),
                Some(name),
            )
        })
    }
}

fn node_status(dir: &StateDir, n: &NodeRt) -> NodeStatus {
    NodeStatus {
        name: n.spec.name.clone(),
        role: n.spec.role.clone(),
        state: n.state,
        addresses: n
            .spec
            .nics
            .iter()
            .map(|nic| format!("{}/{} ({})", nic.ip, nic.prefix, nic.network))
            .collect(),
        pid: n.run.and_then(|r| r.pid),
        uptime_ms: n.run.map(|r| testbed_proto::millis(r.started.elapsed())),
        message: n.message.clone(),
        snapshot: n.snapshot.clone(),
        warning: n.warning.clone(),
        console_log: dir.node(&n.spec.name).console_log(),
    }
}

/// The machine of boot `generation` of node `name` ended. Reports of an
/// older boot, or of a stop already recorded, change nothing.
fn machine_ended(shared: &Arc<Shared>, name: &str, generation: u64, status: &str) {
    let console = shared.dir.node(name).console_log();
    let close = {
        let nodes = lock(&shared.nodes);
        let Some(n) = nodes.get(name).filter(|n| n.generation == generation) else {
            return;
        };
        if n.run.is_none() && matches!(n.state, NodeState::Stopped | NodeState::Failed) {
            return;
        }
        n.close.clone()
    };
    // Wakes the agent client's reader (and so any request waiting on it).
    if let Some(close) = close {
        close();
    }
    shared.set(name, generation, |n| {
        n.run = None;
        n.client = None;
        n.close = None;
        match n.expected_stop.take() {
            Some(reason) => {
                n.state = NodeState::Stopped;
                n.message = Some(reason);
            }
            None if n.state == NodeState::Ready || n.state == NodeState::Paused => {
                n.state = NodeState::Stopped;
                n.message = Some(format!("the node stopped by itself ({status})"));
            }
            None if n.state == NodeState::Failed => {}
            None => {
                n.message = Some(format!(
                    "its machine ended while the node was {} ({status}); the console's last lines:\n{}",
                    n.state,
                    console_tail(&console, CONSOLE_TAIL)
                ));
                n.state = NodeState::Failed;
            }
        }
    });
}

/// Starts a new boot of `name` on its own thread.
fn start_boot(shared: &Arc<Shared>, name: &str) {
    start_machine(shared, name, None);
}

/// Starts a new boot of `name` on its own thread: a boot, or with `from`
/// its machine saved in a cluster snapshot resumed.
fn start_machine(shared: &Arc<Shared>, name: &str, from: Option<PathBuf>) {
    let generation = {
        let mut nodes = lock(&shared.nodes);
        let Some(node) = nodes.get_mut(name) else {
            return;
        };
        node.generation += 1;
        node.state = NodeState::Starting;
        node.message = None;
        node.client = None;
        node.close = None;
        node.run = None;
        node.expected_stop = None;
        node.attached = None;
        node.reconnecting = false;
        node.generation
    };
    shared.changed.notify_all();
    let shared = Arc::clone(shared);
    let name = name.to_owned();
    let _ = std::thread::Builder::new()
        .name(format!("boot-{name}"))
        .spawn(move || boot(&shared, &name, generation, from.as_deref()));
}

/// One boot: the backend starts the machine; then the agent's hello and
/// the activation (or, for a machine resumed from `from`, its clock).
fn boot(shared: &Arc<Shared>, name: &str, generation: u64, from: Option<&Path>) {
    let Some(spec) = shared.spec.node(name).cloned() else {
        return;
    };
    let started = Instant::now();
    let result = {
        let stopping = shared.stopping.read().unwrap_or_else(|e| e.into_inner());
        let current = lock(&shared.nodes)
            .get(name)
            .is_some_and(|n| n.generation == generation && n.state == NodeState::Starting);
        if *stopping || !current {
            return;
        }
        match from {
            Some(file) => shared.backend.resume(&spec, generation, file),
            None => shared.backend.start(&spec, generation),
        }
    };
    let restored = match result {
        Ok(run) => {
            let restored = run.restored.clone();
            shared.set(name, generation, |n| {
                // A machine that ended at once was reported meanwhile.
                if n.state == NodeState::Starting {
                    n.state = NodeState::Booting;
                    n.run = Some(Run {
                        pid: run.pid,
                        started,
                    });
                    n.snapshot = run.restored.as_ref().map(|r| r.snapshot.clone());
                    n.warning = run.warning.clone();
                }
            });
            restored
        }
        Err(e) => return shared.fail(name, generation, e.to_string()),
    };
    let mode = match from {
        Some(_) => Attach::Resume,
        None => Attach::Activate(restored),
    };
    attach(shared, &spec, generation, started, mode);
}

/// The node's agent channel, asked for until it opens, `current` turns
/// false (`None`: the caller has nothing more to do) or `deadline` passes
/// (then the backend's last `NotYet` says why).
fn open_channel(
    shared: &Shared,
    spec: &NodeSpec,
    deadline: Instant,
    current: impl Fn() -> bool,
) -> Result<Option<Channel>, BackendError> {
    loop {
        if !current() {
            return Ok(None);
        }
        match shared.backend.agent(spec) {
            Ok(channel) => return Ok(Some(channel)),
            Err(BackendError::NotYet(_)) if Instant::now() < deadline => {
                std::thread::sleep(shared.backend.caps().agent_poll);
            }
            Err(e) => return Err(e),
        }
    }
}

/// What follows a node's agent hello.
enum Attach {
    /// A booted node (or one restored from its role's snapshot: with the
    /// identity to give it) is activated.
    Activate(Option<Restored>),
    /// A node resumed from a cluster snapshot was activated before it was
    /// saved: its clock is set, and it is ready.
    Resume,
}

/// What makes a node restored from a role snapshot a machine of its own:
/// a fresh machine id and host entropy, the host's clock now, and the
/// MACs the backend says to change.
fn identity(restored: &Restored) -> Result<Identity, String> {
    let random = crate::keys::random_bytes("a restored node's identity", 16 + 64)
        .map_err(|e| e.to_string())?;
    let machine_id = random[..16].iter().map(|b| format!("{b:02x}")).collect();
    let clock_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(testbed_proto::millis)
        .unwrap_or(0);
    Ok(Identity {
        machine_id,
        macs: restored.macs.clone(),
        entropy: random[16..].to_vec(),
        clock_unix_ms,
    })
}

/// Everything after the machine runs: open the agent channel, wait for the
/// hello (the boot), activate.
fn attach(shared: &Arc<Shared>, spec: &NodeSpec, generation: u64, started: Instant, mode: Attach) {
    let name = spec.name.as_str();
    let boot_timeout = shared.spec.boot_timeout();
    let deadline = started + boot_timeout;
    let still_current = || {
        lock(&shared.nodes)
            .get(name)
            .is_some_and(|n| n.generation == generation && n.state == NodeState::Booting)
    };
    let channel: Channel = match open_channel(shared, spec, deadline, still_current) {
        Ok(Some(channel)) => channel,
        Ok(None) => return,
        Err(e) => return shared.fail(name, generation, e.to_string()),
    };
    let (close, closed_by_us) = closer(channel.close);
    if !shared.set(name, generation, |n| n.close = Some(Arc::clone(&close))) {
        close();
        return;
    }
    let options = ClientOptions {
        node: name.to_owned(),
        hello_timeout: deadline.saturating_duration_since(Instant::now()),
        ..ClientOptions::default()
    };
    let client = match Client::with_options(channel.reader, channel.writer, options) {
        Ok(client) => Arc::new(client),
        Err(e) => {
            if !still_current() {
                return;
            }
            let why = match e {
                ClientError::Timeout { .. } => format!(
                    "the agent did not answer within {:.0}s of boot",
                    boot_timeout.as_secs_f64()
                ),
                other => other.to_string(),
            };
            return shared.fail(
                name,
                generation,
                format!(
                    "{why}; the console's last lines:\n{}",
                    console_tail(&shared.dir.node(name).console_log(), CONSOLE_TAIL)
                ),
            );
        }
    };
    let booted = started.elapsed();
    let restored = match mode {
        Attach::Activate(restored) => restored,
        Attach::Resume => {
            if let Err(e) = saves::sync_clock(shared, name, &client) {
                return shared.fail(name, generation, e);
            }
            shared.set(name, generation, |n| {
                if n.state == NodeState::Booting {
                    n.state = NodeState::Ready;
                    n.message = None;
                    n.client = Some(Arc::clone(&client));
                    n.attached = Some(Instant::now());
                }
            });
            shared.log(&format!(
                "{name}: agent answered {:.1}s after the node resumed",
                booted.as_secs_f64()
            ));
            watch_agent(shared, name, generation, &client, closed_by_us);
            return;
        }
    };
    shared.set(name, generation, |n| {
        n.state = NodeState::Activating;
        n.client = Some(Arc::clone(&client));
        n.attached = Some(Instant::now());
    });
    watch_agent(shared, name, generation, &client, closed_by_us);
    shared.log(&format!(
        "{name}: agent {} answered {:.1}s after the node started",
        client.agent_info().software,
        booted.as_secs_f64()
    ));
    // The agent bounds each service by the activation's own timeout; this
    // bound covers all of them plus writing the files.
    let limit = shared.spec.activation_timeout() * (spec.activation.services.len() as u32 + 1);
    let mut activation = spec.activation.clone();
    if let Some(restored) = &restored {
        match identity(restored) {
            Ok(identity) => activation.identity = Some(identity),
            Err(e) => return shared.fail(name, generation, e),
        }
    }
    match client.activate(&activation, limit) {
        Ok(report) => {
            shared.set(name, generation, |n| {
                if n.state == NodeState::Activating {
                    n.state = NodeState::Ready;
                    n.message = None;
                }
            });
            shared.log(&format!(
                "{name}: activated in {} ms (services: {})",
                report.elapsed_ms,
                report.services.join(", ")
            ));
        }
        Err(e) => shared.fail(name, generation, e.to_string()),
    }
}

/// A channel's `close`, which also records that the supervisor closed it
/// (see [`watch_agent`]).
fn closer(close: Box<dyn Fn() + Send + Sync>) -> (Arc<dyn Fn() + Send + Sync>, Arc<AtomicBool>) {
    let by_us = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&by_us);
    let close: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        flag.store(true, Ordering::SeqCst);
        close();
    });
    (close, by_us)
}

/// Watches a node's agent session on a thread of its own. If it ends
/// while the node is ready and the supervisor did not end it, the agent
/// went away with the machine still running: on a VM, a new agent
/// process announced itself (the old one was killed, or crashed and
/// systemd started it again); in a container, the agent's exec session
/// ended. The client has failed the requests in flight, naming why; the
/// channel is closed and a new session opened, so the node stays usable.
/// Other ends (the machine ended, a save, `down`) are someone else's.
fn watch_agent(
    shared: &Arc<Shared>,
    name: &str,
    generation: u64,
    client: &Arc<Client>,
    closed_by_us: Arc<AtomicBool>,
) {
    let shared = Arc::clone(shared);
    let client = Arc::clone(client);
    let name = name.to_owned();
    let _ = std::thread::Builder::new()
        .name(format!("agent-watch-{name}"))
        .spawn(move || {
            let closed = client.wait_closed();
            // A machine that ended takes its agent's session with it, and
            // its end may be reported a moment after the session's.
            let still_up = |n: &NodeRt| {
                n.generation == generation
                    && n.state == NodeState::Ready
                    && n.run.is_some()
                    && n.expected_stop.is_none()
                    && n.client.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client))
            };
            if closed_by_us.load(Ordering::SeqCst)
                || !shared.set(&name, generation, |n| n.reconnecting = still_up(n))
            {
                return;
            }
            drop(
                shared.wait_nodes(Instant::now() + MACHINE_END_GRACE, |nodes| {
                    closed_by_us.load(Ordering::SeqCst) || !nodes.get(&name).is_some_and(still_up)
                }),
            );
            let mut close = None;
            let current = shared.set(&name, generation, |n| {
                if still_up(n) && !closed_by_us.load(Ordering::SeqCst) {
                    n.client = None;
                    n.message = Some("its agent went away; connecting to it again".to_owned());
                    close = n.close.take();
                } else {
                    n.reconnecting = false;
                }
            });
            let Some(close) = close.filter(|_| current) else {
                shared.log(&format!("{name}: {}", closed.reason));
                return;
            };
            shared.log(&format!("{name}: {}; connecting again", closed.reason));
            close();
            let result = saves::reconnect(&shared, &name, generation, false);
            // A new session cleared the mark itself (and its own watcher
            // may have set it again since: an agent that died once more).
            if !matches!(result, Ok(true)) {
                shared.set(&name, generation, |n| n.reconnecting = false);
            }
            match result {
                Ok(true) => shared.log(&format!("{name}: agent connected again")),
                // The machine stopped meanwhile (its agent went with it).
                Ok(false) => {}
                Err(e) => {
                    let running = lock(&shared.nodes)
                        .get(&name)
                        .is_some_and(|n| n.generation == generation && n.run.is_some());
                    if running {
                        shared.fail(
                            &name,
                            generation,
                            format!(
                                "its agent went away ({}) and did not answer again: {e}",
                                closed.reason
                            ),
                        );
                    }
                }
            }
        });
}

/// Whether the transport goes on after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// The client hung up (or the connection broke).
    Closed,
    /// The cluster is down; the supervisor ends.
    Down,
}

/// A download's buffer that takes at most [`api::MAX_FILE`] bytes and
/// then refuses, which ends the download.
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    over: bool,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > api::MAX_FILE {
            self.over = true;
            return Err(io::Error::other("the file is too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn send(conn: &mut UnixStream, reply: &Reply) -> bool {
    api::write_line(conn, reply).is_ok()
}

fn answer(conn: &mut UnixStream, result: Result<Reply, Refusal>) -> bool {
    send(conn, &result.unwrap_or_else(Refusal::reply))
}

/// One API connection: JSON lines in, JSON lines out.
fn serve(sup: &Supervisor, conn: UnixStream) -> Served {
    let Ok(read_half) = conn.try_clone() else {
        return Served::Closed;
    };
    let mut reader = BufReader::new(read_half);
    let mut conn = conn;
    loop {
        let request: Request = match api::read_line(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return Served::Closed,
            Err(e) => {
                // What the client sent is at fault, not a reply (the
                // error's own words are a client's).
                let message = match e {
                    api::ApiError::Protocol(detail) => format!("invalid request: {detail}"),
                    other => other.to_string(),
                };
                send(&mut conn, &Refusal::new(message, None).reply());
                return Served::Closed;
            }
        };
        let ok = match request {
            Request::Status => send(&mut conn, &Reply::Status(sup.status())),
            Request::Watch => sup.watch(&mut |reply| send(&mut conn, &reply)),
            Request::Exec { node, exec } => serve_exec(sup, &mut conn, &mut reader, &node, exec),
            Request::Put {
                node,
                path,
                mode,
                owner,
                data,
            } => answer(
                &mut conn,
                sup.put(&node, &path, mode, owner, &data)
                    .map(|()| Reply::Ok),
            ),
            Request::Get { node, path } => answer(
                &mut conn,
                sup.get(&node, &path)
                    .map(|(mode, data)| Reply::File { mode, data }),
            ),
            Request::Forward { node, port } => {
                serve_forward(sup, conn, reader, &node, port);
                return Served::Closed;
            }
            Request::Power { node, action } => {
                answer(&mut conn, sup.power(&node, action).map(|()| Reply::Ok))
            }
            Request::Wait {
                node,
                what,
                timeout_ms,
            } => answer(
                &mut conn,
                sup.wait_in(&node, &what, Duration::from_millis(timeout_ms))
                    .map(|()| Reply::Ok),
            ),
            Request::Fault(fault) => answer(
                &mut conn,
                sup.fault(fault).map(|rule| match rule {
                    Some(rule) => Reply::Link { rule },
                    None => Reply::Ok,
                }),
            ),
            Request::History => send(
                &mut conn,
                &Reply::History {
                    events: sup.history(),
                },
            ),
            Request::Snapshot { name } => answer(&mut conn, sup.save(&name).map(Reply::Snapshot)),
            Request::Restore { name } => answer(&mut conn, sup.restore(&name).map(Reply::Snapshot)),
            Request::Down => {
                for line in sup.down() {
                    sup.shared.log(&format!("down: {line}"));
                }
                send(&mut conn, &Reply::Ok);
                sup.shared.log("down: done");
                return Served::Down;
            }
        };
        if !ok {
            return Served::Closed;
        }
    }
}

fn serve_exec(
    sup: &Supervisor,
    conn: &mut UnixStream,
    reader: &mut BufReader<UnixStream>,
    node: &str,
    exec: ExecRequest,
) -> bool {
    let wants_stdin = exec.stdin;
    let mut running = match sup.exec(node, exec) {
        Ok(r) => r,
        Err(refusal) => return send(conn, &refusal.reply()),
    };
    // Input lines are read on another thread while output streams here;
    // the reader is handed back when the command ends.
    let feeder = if wants_stdin {
        let stdin = running.stdin();
        let Ok(read_half) = reader.get_ref().try_clone() else {
            return false;
        };
        // The client sends its first input right after the request, so the
        // request's reader may hold some already: the feeder starts with
        // those bytes (reading the socket alone lost them, and a command
        // waited forever for input the client had sent).
        let buffered = reader.buffer().to_vec();
        reader.consume(buffered.len());
        let mut lines = BufReader::new(std::io::Cursor::new(buffered).chain(read_half));
        Some(std::thread::spawn(move || loop {
            match api::read_line::<_, Input>(&mut lines) {
                Ok(Some(Input::Stdin { data })) => {
                    if stdin.write(&data).is_err() {
                        return;
                    }
                }
                Ok(Some(Input::Eof)) | Ok(None) | Err(_) => {
                    let _ = stdin.close();
                    return;
                }
            }
        }))
    } else {
        None
    };
    let ok = loop {
        match running.next_event() {
            Ok(Some(ExecEvent::Stdout(data))) => {
                if !send(conn, &Reply::Stdout { data }) {
                    let _ = running.kill();
                    break false;
                }
            }
            Ok(Some(ExecEvent::Stderr(data))) => {
                if !send(conn, &Reply::Stderr { data }) {
                    let _ = running.kill();
                    break false;
                }
            }
            Ok(Some(ExecEvent::Exit(status))) => break send(conn, &Reply::Exited { status }),
            Ok(None) => break true,
            Err(e) => break send(conn, &Refusal::new(e.to_string(), Some(node)).reply()),
        }
    };
    // A stdin feeder still blocked on the client's next line ends when the
    // client closes the connection; an exec with stdin is the last request
    // of its connection.
    if feeder.is_some() {
        return false;
    }
    ok
}

fn serve_forward(
    sup: &Supervisor,
    mut conn: UnixStream,
    reader: BufReader<UnixStream>,
    node: &str,
    port: u16,
) {
    let forward = match sup.client(node).and_then(|client| {
        client
            .forward(port, Duration::from_secs(30))
            .map_err(|e| Refusal::new(e.to_string(), Some(node)))
    }) {
        Ok(f) => f,
        Err(refusal) => {
            send(&mut conn, &refusal.reply());
            return;
        }
    };
    if !send(&mut conn, &Reply::Ok) {
        return;
    }
    let (mut from_guest, mut to_guest) = forward.split();
    let buffered = reader.buffer().to_vec();
    let mut from_client = reader.into_inner();
    let upstream = std::thread::spawn(move || {
        if !buffered.is_empty() && to_guest.write_all(&buffered).is_err() {
            return;
        }
        let _ = io::copy(&mut from_client, &mut to_guest);
        let _ = to_guest.shutdown_write();
    });
    let _ = copy_flushing(&mut from_guest, &mut conn);
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let _ = upstream.join();
}

/// Like `io::copy`, flushing after every read: interactive protocols (ssh)
/// must not wait for a buffer to fill.
fn copy_flushing(from: &mut impl Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

fn power(shared: &Arc<Shared>, name: &str, action: PowerAction) -> Result<(), Refusal> {
    let (state, generation, running) = match lock(&shared.nodes).get(name) {
        Some(n) => (n.state, n.generation, n.run.is_some()),
        None => {
            return Err(Refusal::new(
                format!("no node {name} in this cluster"),
                None,
            ))
        }
    };
    if *shared.stopping.read().unwrap_or_else(|e| e.into_inner()) {
        return Err(Refusal::new("the cluster is going down", Some(name)));
    }
    let not_running = || Refusal::new(format!("node {name} is not running ({state})"), Some(name));
    match action {
        PowerAction::Start => {
            if running || state == NodeState::Starting {
                return Err(Refusal::new(
                    format!("node {name} is already running ({state})"),
                    Some(name),
                ));
            }
            start_boot(shared, name);
            Ok(())
        }
        PowerAction::Crash => {
            if !running {
                return Err(not_running());
            }
            shared.set(name, generation, |n| {
                n.expected_stop = Some("crashed (power cut)".to_owned())
            });
            shared
                .backend
                .stop(name, Stop::PowerCut)
                .map_err(|e| Refusal::backend(e, name))?;
            machine_ended(shared, name, generation, "power cut");
            Ok(())
        }
        PowerAction::Shutdown | PowerAction::Reboot => {
            if !running {
                return Err(not_running());
            }
            let reboot = action == PowerAction::Reboot;
            clean_stop(shared, name, generation, reboot)?;
            // A guest reboot ends the machine too (QEMU runs with
            // -no-reboot); the node then boots again as a new generation,
            // with a fresh activation (its writable layer was RAM).
            if reboot {
                start_boot(shared, name);
            }
            Ok(())
        }
        PowerAction::Pause | PowerAction::Resume => {
            let pause = action == PowerAction::Pause;
            if !shared.backend.caps().freeze {
                return Err(Refusal::backend(
                    BackendError::Unsupported {
                        backend: shared.backend.caps().name.clone(),
                        what: if pause {
                            "pause a node"
                        } else {
                            "resume a node"
                        }
                        .to_owned(),
                    },
                    name,
                ));
            }
            if !running {
                return Err(not_running());
            }
            shared
                .backend
                .freeze(name, pause)
                .map_err(|e| Refusal::backend(e, name))?;
            shared.set(name, generation, |n| {
                if n.run.is_none() {
                    return;
                }
                n.state = if pause {
                    NodeState::Paused
                } else if n.client.is_some() {
                    NodeState::Ready
                } else {
                    NodeState::Booting
                };
            });
            Ok(())
        }
    }
}

/// Powers the node off cleanly through its agent (`systemctl poweroff`
/// or `reboot`) and waits for its machine to end; a node whose agent is
/// gone, or that does not stop in time, is stopped hard by its backend.
fn clean_stop(
    shared: &Arc<Shared>,
    name: &str,
    generation: u64,
    reboot: bool,
) -> Result<(), Refusal> {
    let reason = if reboot { "rebooting" } else { "shut down" };
    shared.set(name, generation, |n| {
        n.expected_stop = Some(reason.to_owned())
    });
    let verb = if reboot { "reboot" } else { "poweroff" };
    let command = shared.backend.clean_stop_command(name, reboot);
    let via_agent = match (command, shared.client(name)) {
        (Some(argv), Ok(client)) => {
            match client.exec_output(ExecRequest::argv(argv).timeout(Duration::from_secs(30))) {
                Ok(output) => output.status.success(),
                // The machine went down before the agent could answer: the
                // power-off is under way.
                Err(ClientError::Disconnected { .. } | ClientError::Write { .. }) => true,
                Err(_) => false,
            }
        }
        _ => false,
    };
    let stopped = |n: &NodeRt| n.generation != generation || n.run.is_none();
    let grace = if via_agent {
        shared.spec.boot_timeout().min(Duration::from_secs(300))
    } else {
        Duration::ZERO
    };
    if wait_for(shared, name, grace, stopped).is_ok() {
        return Ok(());
    }
    shared.log(&format!(
        "{name}: no clean {verb} within {grace:?}; stopping it hard"
    ));
    shared
        .backend
        .stop(name, Stop::Hard)
        .map_err(|e| Refusal::backend(e, name))?;
    wait_for(shared, name, Duration::from_secs(30), stopped)
}

fn wait_for(
    shared: &Shared,
    name: &str,
    timeout: Duration,
    cond: impl Fn(&NodeRt) -> bool,
) -> Result<(), Refusal> {
    let nodes = shared.wait_nodes(Instant::now() + timeout, |nodes| {
        nodes.get(name).is_some_and(&cond)
    });
    if nodes.get(name).is_some_and(&cond) {
        return Ok(());
    }
    let state = nodes.get(name).map(|n| n.state.to_string());
    Err(Refusal::new(
        format!(
            "node {name} did not stop within {:.0}s (still {})",
            timeout.as_secs_f64(),
            state.unwrap_or_default()
        ),
        Some(name),
    ))
}

fn apply_fault(shared: &Shared, fault: Fault) -> Result<Option<LinkRule>, Refusal> {
    let refuse = |e: &dyn std::fmt::Display| Refusal::new(e.to_string(), None);
    let rule = {
        let switch = lock(&shared.switch);
        match fault {
            Fault::Block { node } => switch.block(&node).map_err(|e| refuse(&e))?,
            Fault::Unblock { node } => switch.unblock(&node).map_err(|e| refuse(&e))?,
            Fault::Partition { groups } => switch.partition(&groups).map_err(|e| refuse(&e))?,
            Fault::Heal => switch.heal(),
            Fault::Link { a, b, change } => {
                let before = switch.link(&a, &b);
                let rule = switch
                    .change_link(&a, &b, &change)
                    .map_err(|e| refuse(&e))?;
                drop(switch);
                // A rule this backend cannot apply is taken back, so the
                // fault table never claims what is not so.
                if let Err(e) = shared.backend.faults_changed() {
                    let _ = lock(&shared.switch).set_link(&a, &b, before);
                    let _ = shared.backend.faults_changed();
                    return Err(refuse(&e));
                }
                return Ok(Some(rule));
            }
        }
        None
    };
    shared.backend.faults_changed().map_err(|e| refuse(&e))?;
    Ok(rule)
}

/// Stops every node and the switch and removes the state directory.
fn down(shared: &Arc<Shared>) -> Vec<String> {
    shared.log("down: stopping every node");
    {
        // Waits for the backend starts under way; none begins after this.
        let mut stopping = shared.stopping.write().unwrap_or_else(|e| e.into_inner());
        *stopping = true;
    }
    let closers: Vec<Arc<dyn Fn() + Send + Sync>> = lock(&shared.nodes)
        .values()
        .filter_map(|n| n.close.clone())
        .collect();
    for close in closers {
        close();
    }
    let report = shared.backend.down();
    {
        let mut nodes = lock(&shared.nodes);
        for n in nodes.values_mut() {
            // Threads of the boots under way see the new generation and
            // give up.
            n.generation += 1;
            n.run = None;
            n.client = None;
            n.close = None;
            n.state = NodeState::Stopped;
            n.message = Some("the cluster is down".to_owned());
        }
    }
    shared.changed.notify_all();
    lock(&shared.switch).stop();
    let _ = fs::remove_dir_all(shared.dir.path());
    report
}
