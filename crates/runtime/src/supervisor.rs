//! The per-cluster supervisor: one process that owns a running cluster.
//!
//! `testbed up` writes the [`ClusterSpec`] into a fresh state directory and
//! starts `testbed supervise DIR` in the background; that process calls
//! [`run`], which
//! 1. starts the virtual switch with one port per NIC,
//! 2. boots every node in parallel (one QEMU each, spawned by a single
//!    long-lived *spawner* thread, so the VMs' parent-death signal fires
//!    exactly when the supervisor dies),
//! 3. connects to each node's agent as soon as its socket exists, waits for
//!    the hello (the boot), sends the activation and records the result,
//! 4. serves the JSON API ([`crate::api`]) on `api.sock` until `down`.
//!
//! Invariants:
//! - Every QEMU is a child of the spawner thread and dies with the
//!   supervisor (PR_SET_PDEATHSIG); the pid files let `down` clean up
//!   after a supervisor killed with SIGKILL ([`crate::state::teardown`]).
//! - Every boot has a generation number; a thread working for an older
//!   boot (a node rebooted or crashed meanwhile) never overwrites the state.
//! - A node's agent connection survives faults on the cluster network: it
//!   is a virtio-serial port (VMs) or `exec -i` (containers), not a NIC.
//!
//! With the container backend ([`crate::container`]) the engine owns the
//! node processes instead of the spawner: `run` imports the images and
//! creates the networks, a watcher thread follows the engine's `died`
//! events, and the switch only keeps the fault table, whose verdicts are
//! applied in each container's network namespace.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use testbed_proto::{Client, ClientError, ClientOptions, ExecEvent, ExecRequest, PutRequest};
use thiserror::Error;

use crate::api::{
    self, ClusterStatus, Fault, Input, NodeState, NodeStatus, PowerAction, Reply, Request, WaitFor,
};
use crate::container::{self, ContainerConfig, ContainerNic, Containers, FaultProgram, Peer};
use crate::libvirt::{self, DomainConfig, HostImage, LibvirtHost, UdpNic};
use crate::qemu::{self, NicConfig, VmConfig, VmProcess};
use crate::qmp::Qmp;
use crate::spec::{BackendSpec, ClusterSpec, NodeSpec};
use crate::state::{self, StateDir};
use crate::switch::{self, PortSpec, Switch};

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
    #[error("cannot start the virtual switch: {0}")]
    Switch(#[from] crate::switch::SwitchError),
    #[error(transparent)]
    Qemu(#[from] crate::qemu::QemuError),
    #[error("cannot serve the API on {}: {source}", .path.display())]
    Api { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Container(#[from] crate::container::ContainerError),
    #[error(transparent)]
    Libvirt(#[from] crate::libvirt::LibvirtError),
    #[error("{0}")]
    Config(String),
}

/// Where the supervisor's log lines go (the CLI writes them to
/// `supervisor.log`).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// One node at run time.
struct NodeRt {
    spec: NodeSpec,
    state: NodeState,
    message: Option<String>,
    pid: Option<u32>,
    started: Option<Instant>,
    /// The agent client, once the hello succeeded (kept when activation
    /// fails, so a failed node can still be inspected).
    client: Option<Arc<Client>>,
    /// A handle on the agent channel, to unblock the client's reader when
    /// the node goes away.
    agent_conn: Option<AgentConn>,
    /// The container of the current boot (container backend).
    container_id: Option<String>,
    /// The fault rules last applied in the container's network namespace.
    applied: Option<FaultProgram>,
    /// Whether `pid` is only a boot's token (libvirt: the QEMU runs on a
    /// libvirt host, possibly another machine).
    libvirt: bool,
    /// Incremented at every boot and power loss.
    generation: u64,
    /// Why the VM is expected to stop (set by crash/shutdown), so its exit
    /// is not reported as a failure.
    expected_stop: Option<String>,
}

/// The host end of a node's agent channel.
#[derive(Clone)]
enum AgentConn {
    /// QEMU's virtio-serial socket.
    Socket(Arc<UnixStream>),
    /// The engine's `exec -i` process running the agent in a container.
    Process(Arc<Mutex<Child>>),
}

impl AgentConn {
    /// Ends the channel, which wakes the client's reader.
    fn close(&self) {
        match self {
            AgentConn::Socket(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            AgentConn::Process(child) => {
                let mut child = lock(child);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// What runs the nodes.
enum Runner {
    Qemu,
    Container(Containers),
    Libvirt(Box<LibvirtRt>),
}

/// The libvirt backend's connections and what it prepared on each host.
struct LibvirtRt {
    hosts: Vec<LibvirtHost>,
    /// Node → index into `hosts`.
    placement: BTreeMap<String, usize>,
    /// `(node, network)` → the NIC's UDP tunnel to its switch port.
    nics: BTreeMap<(String, String), UdpNic>,
    /// `(host index, image key)` → where that image's files are there.
    images: Mutex<BTreeMap<(usize, String), HostImage>>,
    /// Identifies this supervisor's run in the domains' metadata.
    run_id: String,
    /// Set by `down`: no domain is created any more.
    stopping: std::sync::atomic::AtomicBool,
    /// Domain creations under way, which `down` waits for: a domain the
    /// daemon finishes creating after `down` listed the cluster's domains
    /// would outlive the cluster.
    creating: std::sync::atomic::AtomicUsize,
}

impl LibvirtRt {
    fn index_of(&self, node: &str) -> usize {
        self.placement
            .get(node)
            .copied()
            .unwrap_or(0)
            .min(self.hosts.len() - 1)
    }

    fn host_of(&self, node: &str) -> &LibvirtHost {
        &self.hosts[self.index_of(node)]
    }
}

enum SpawnCmd {
    Start {
        node: String,
        generation: u64,
        config: Box<VmConfig>,
        reply: mpsc::Sender<Result<u32, String>>,
    },
    Kill {
        node: String,
        reply: mpsc::Sender<()>,
    },
    KillAll {
        reply: mpsc::Sender<()>,
    },
}

struct Shared {
    spec: ClusterSpec,
    dir: StateDir,
    nodes: Mutex<BTreeMap<String, NodeRt>>,
    changed: Condvar,
    switch: Mutex<Switch>,
    spawner: Mutex<mpsc::Sender<SpawnCmd>>,
    runner: Runner,
    log: Log,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    let (runner, switch, qemu_bin) = match &spec.backend {
        BackendSpec::Qemu => {
            let qemu_bin = qemu::find_qemu()?;
            let mut ports = Vec::new();
            for node in &spec.nodes {
                for nic in &node.nics {
                    ports.push(PortSpec {
                        segment: nic.network.clone(),
                        node: node.name.clone(),
                        transport: switch::unix_transport(&dir.net_dir(), &node.name, &nic.network),
                    });
                }
            }
            let switch = Switch::start(&ports, spec.seed)?;
            (Runner::Qemu, switch, Some(qemu_bin))
        }
        BackendSpec::Container { engine } => {
            let engine = Containers::new(engine.clone());
            let names: Vec<String> = spec.nodes.iter().map(|n| n.name.clone()).collect();
            let switch = Switch::fault_table(&names, spec.seed)?;
            (Runner::Container(engine), switch, None)
        }
        BackendSpec::Libvirt { hosts, placement } => {
            let (rt, switch) = libvirt_start(&spec, hosts, placement)?;
            (Runner::Libvirt(Box::new(rt)), switch, None)
        }
    };

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
                pid: None,
                started: None,
                client: None,
                agent_conn: None,
                container_id: None,
                applied: None,
                libvirt: matches!(spec.backend, BackendSpec::Libvirt { .. }),
                generation: 0,
                expected_stop: None,
            },
        );
    }

    let listener_path = dir.api_socket();
    let _ = fs::remove_file(&listener_path);
    let listener = UnixListener::bind(&listener_path).map_err(|source| SupervisorError::Api {
        path: listener_path.clone(),
        source,
    })?;
    let _ = fs::set_permissions(&listener_path, fs::Permissions::from_mode(0o600));

    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        spec,
        dir: dir.clone(),
        nodes: Mutex::new(nodes),
        changed: Condvar::new(),
        switch: Mutex::new(switch),
        spawner: Mutex::new(tx),
        runner,
        log,
    });

    {
        let shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("spawner".into());
        let started = match qemu_bin {
            Some(qemu_bin) => thread.spawn(move || spawner(&shared, &qemu_bin, &rx)),
            None if matches!(shared.runner, Runner::Libvirt(_)) => {
                thread.spawn(move || libvirt_watch(&shared, &rx))
            }
            None => thread.spawn(move || container_watch(&shared, &rx)),
        };
        started.map_err(|source| SupervisorError::Api {
            path: listener_path.clone(),
            source,
        })?;
    }
    {
        // Containers need their images imported and their networks made
        // first, which takes a while: done after the API is up, so `up`
        // can follow it.
        let shared = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("boot-all".into())
            .spawn(move || {
                let prepared = match &shared.runner {
                    Runner::Qemu => Ok(()),
                    Runner::Container(engine) => {
                        container_prepare(&shared.spec, &shared.dir, engine, &shared.log)
                            .map_err(|e| format!("preparing the containers failed: {e}"))
                    }
                    Runner::Libvirt(rt) => libvirt_prepare(&shared, rt),
                };
                if let Err(message) = prepared {
                    for name in shared.spec.nodes.iter().map(|n| n.name.clone()) {
                        shared.fail(&name, 0, message.clone());
                    }
                    return;
                }
                for name in shared.spec.nodes.iter().map(|n| n.name.clone()) {
                    start_boot(&shared, &name);
                }
            });
    }

    // Serves until a `down` request, which ends the process once the
    // cluster is gone (see `serve`).
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let shared = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || serve(&shared, conn));
    }
    Ok(())
}

/// Owns every QEMU process. Spawning from this one thread, which lives as
/// long as the supervisor, is what makes the VMs die with it.
fn spawner(shared: &Arc<Shared>, qemu_bin: &Path, rx: &mpsc::Receiver<SpawnCmd>) {
    let mut vms: BTreeMap<String, VmProcess> = BTreeMap::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(SpawnCmd::Start {
                node,
                generation,
                config,
                reply,
            }) => {
                let node_dir = shared.dir.node(&node);
                // A stale socket from the previous boot would make QEMU
                // fail to bind.
                for path in [
                    node_dir.agent_socket(),
                    node_dir.console_socket(),
                    node_dir.qmp_socket(),
                ] {
                    let _ = fs::remove_file(path);
                }
                for nic in &config.nics {
                    let _ = fs::remove_file(&nic.local);
                }
                match VmProcess::spawn(qemu_bin, &config, &node_dir.qemu_log()) {
                    Ok(vm) => {
                        let pid = vm.pid();
                        let _ = state::write_atomic(
                            &node_dir.pid_file(),
                            pid.to_string().as_bytes(),
                            0o600,
                        );
                        // Recorded here, before the next exit check, so a
                        // QEMU that dies at once is matched to its node.
                        shared.set(&node, generation, |n| {
                            n.state = NodeState::Booting;
                            n.pid = Some(pid);
                            n.started = Some(Instant::now());
                        });
                        vms.insert(node, vm);
                        let _ = reply.send(Ok(pid));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Ok(SpawnCmd::Kill { node, reply }) => {
                if let Some(mut vm) = vms.remove(&node) {
                    let _ = vm.kill();
                    let _ = fs::remove_file(shared.dir.node(&node).pid_file());
                }
                let _ = reply.send(());
            }
            Ok(SpawnCmd::KillAll { reply }) => {
                for (node, mut vm) in std::mem::take(&mut vms) {
                    let _ = vm.kill();
                    let _ = fs::remove_file(shared.dir.node(&node).pid_file());
                }
                let _ = reply.send(());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                for (_, mut vm) in std::mem::take(&mut vms) {
                    let _ = vm.kill();
                }
                return;
            }
        }
        let exited: Vec<(String, u32, String)> = vms
            .iter_mut()
            .filter_map(|(name, vm)| match vm.try_wait() {
                Ok(Some(status)) => Some((name.clone(), vm.pid(), status.to_string())),
                _ => None,
            })
            .collect();
        for (name, pid, status) in exited {
            vms.remove(&name);
            let _ = fs::remove_file(shared.dir.node(&name).pid_file());
            vm_exited(shared, &name, pid, &status);
        }
    }
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
            self.changed.notify_all();
        }
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
        ClusterStatus {
            cluster: self.spec.cluster.clone(),
            composition: self.spec.composition.clone(),
            state_dir: self.dir.path().to_path_buf(),
            backend: self.spec.backend.name(),
            accel: match self.spec.backend {
                // Containers run on the host's kernel: nothing is emulated.
                BackendSpec::Container { .. } => "none".to_owned(),
                BackendSpec::Qemu | BackendSpec::Libvirt { .. } => self.spec.accel.to_string(),
            },
            supervisor_pid: std::process::id(),
            nodes: statuses,
        }
    }

    fn client(&self, name: &str) -> Result<Arc<Client>, Box<Reply>> {
        let nodes = lock(&self.nodes);
        let Some(node) = nodes.get(name) else {
            let known: Vec<&str> = self.spec.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(Box::new(Reply::Error {
                message: format!(
                    "no node {name} in this cluster (nodes: {})",
                    known.join(", ")
                ),
                node: None,
            }));
        };
        node.client.clone().ok_or_else(|| {
            Box::new(Reply::Error {
                message: format!(
                    "node {name} is {}; its agent is not connected{}",
                    node.state,
                    node.message
                        .as_ref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                ),
                node: Some(name.to_owned()),
            })
        })
    }

    fn spawn_cmd(&self, cmd: SpawnCmd) {
        let _ = lock(&self.spawner).send(cmd);
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
        pid: n.pid.filter(|_| !n.libvirt),
        uptime_ms: n.started.map(|t| testbed_proto::millis(t.elapsed())),
        message: n.message.clone(),
        console_log: dir.node(&n.spec.name).console_log(),
    }
}

/// QEMU process `pid` of node `name` ended. A reset keeps the process but
/// starts a new generation, so the process is matched by pid.
fn vm_exited(shared: &Arc<Shared>, name: &str, pid: u32, status: &str) {
    let console = shared.dir.node(name).console_log();
    let (generation, conn) = {
        let nodes = lock(&shared.nodes);
        let Some(n) = nodes.get(name).filter(|n| n.pid == Some(pid)) else {
            return;
        };
        (n.generation, n.agent_conn.clone())
    };
    // Wakes the agent client's reader (and so any request waiting on it).
    if let Some(conn) = conn {
        conn.close();
    }
    shared.set(name, generation, |n| {
        n.pid = None;
        n.client = None;
        n.agent_conn = None;
        n.container_id = None;
        n.applied = None;
        n.started = None;
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
                n.state = NodeState::Failed;
                n.message = Some(format!(
                    "{} exited while the node was {} ({status}); the console's last lines:\n{}",
                    shared.spec.backend.name(),
                    n.state,
                    console_tail(&console, CONSOLE_TAIL)
                ));
            }
        }
    });
}

/// Starts a new boot of `name` on its own thread.
fn start_boot(shared: &Arc<Shared>, name: &str) {
    let generation = {
        let mut nodes = lock(&shared.nodes);
        let Some(node) = nodes.get_mut(name) else {
            return;
        };
        node.generation += 1;
        node.state = NodeState::Starting;
        node.message = None;
        node.client = None;
        node.expected_stop = None;
        node.generation
    };
    shared.changed.notify_all();
    let shared = Arc::clone(shared);
    let name = name.to_owned();
    let _ = std::thread::Builder::new()
        .name(format!("boot-{name}"))
        .spawn(move || boot(&shared, &name, generation));
}

fn vm_config(shared: &Shared, spec: &NodeSpec) -> VmConfig {
    let node_dir = shared.dir.node(&spec.name);
    VmConfig {
        name: spec.name.clone(),
        memory_mib: spec.memory_mib,
        cpus: spec.cpus,
        accel: shared.spec.accel,
        kernel: spec.image.kernel.clone(),
        initramfs: spec.image.initramfs.clone(),
        rootfs: spec.image.rootfs.clone(),
        cmdline: spec.image.cmdline.clone(),
        nics: spec
            .nics
            .iter()
            .map(|nic| {
                let (remote, local) =
                    switch::unix_paths(&shared.dir.net_dir(), &spec.name, &nic.network);
                NicConfig {
                    mac: nic.mac.clone(),
                    local,
                    remote,
                }
            })
            .collect(),
        agent_socket: node_dir.agent_socket(),
        console_socket: node_dir.console_socket(),
        console_log: node_dir.console_log(),
        qmp_socket: node_dir.qmp_socket(),
    }
}

/// One boot: QEMU, the agent's hello, activation.
fn boot(shared: &Arc<Shared>, name: &str, generation: u64) {
    let Some(spec) = shared.spec.node(name).cloned() else {
        return;
    };
    if let Runner::Container(engine) = &shared.runner {
        return container_boot(shared, engine, &spec, generation);
    }
    if let Runner::Libvirt(rt) = &shared.runner {
        return libvirt_boot(shared, rt, &spec, generation);
    }
    let config = vm_config(shared, &spec);
    let (tx, rx) = mpsc::channel();
    shared.spawn_cmd(SpawnCmd::Start {
        node: name.to_owned(),
        generation,
        config: Box::new(config),
        reply: tx,
    });
    match rx.recv() {
        Ok(Ok(_pid)) => {}
        Ok(Err(message)) => return shared.fail(name, generation, message),
        Err(_) => return,
    }
    attach(shared, name, generation, Instant::now());
}

/// Everything after QEMU runs: connect to the agent socket, wait for the
/// hello (the boot), activate. Also used after a reset, which keeps the
/// QEMU process.
fn attach(shared: &Arc<Shared>, name: &str, generation: u64, started: Instant) {
    let Some(spec) = shared.spec.node(name).cloned() else {
        return;
    };
    let node_dir = shared.dir.node(name);
    let boot_timeout = shared.spec.boot_timeout();
    let deadline = started + boot_timeout;
    let still_current = || {
        lock(&shared.nodes)
            .get(name)
            .is_some_and(|n| n.generation == generation && n.state == NodeState::Booting)
    };
    let channel = match &shared.runner {
        Runner::Qemu => loop {
            if !still_current() {
                return;
            }
            match UnixStream::connect(node_dir.agent_socket()) {
                Ok(stream) => break socket_channel(stream),
                Err(e) if Instant::now() >= deadline => {
                    return shared.fail(
                        name,
                        generation,
                        format!(
                            "cannot connect to the agent socket {}: {e}",
                            node_dir.agent_socket().display()
                        ),
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        },
        Runner::Container(engine) => container_agent(shared, engine, name),
        Runner::Libvirt(rt) => loop {
            if !still_current() {
                return;
            }
            let domain = libvirt::domain_name(&shared.spec.cluster, name);
            match rt.host_of(name).open_agent(&domain) {
                Ok(channel) => break socket_pair_channel(channel.reader, channel.writer),
                Err(e) if Instant::now() >= deadline => {
                    return shared.fail(name, generation, e.to_string());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        },
    };
    let (reader, writer, conn) = match channel {
        Ok(parts) => parts,
        Err(message) => return shared.fail(name, generation, message),
    };
    if !shared.set(name, generation, |n| n.agent_conn = Some(conn)) {
        return;
    }
    let options = ClientOptions {
        node: name.to_owned(),
        hello_timeout: deadline.saturating_duration_since(Instant::now()),
        ..ClientOptions::default()
    };
    let client = match Client::with_options(reader, writer, options) {
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
                    console_tail(&node_dir.console_log(), CONSOLE_TAIL)
                ),
            );
        }
    };
    let booted = started.elapsed();
    shared.set(name, generation, |n| {
        n.state = NodeState::Activating;
        n.client = Some(Arc::clone(&client));
    });
    shared.log(&format!(
        "{name}: agent {} answered {:.1}s after the node started",
        client.agent_info().software,
        booted.as_secs_f64()
    ));
    // The agent bounds each service by the activation's own timeout; this
    // bound covers all of them plus writing the files.
    let limit = shared.spec.activation_timeout() * (spec.activation.services.len() as u32 + 1);
    match client.activate(&spec.activation, limit) {
        Ok(report) => {
            shared.set(name, generation, |n| {
                n.state = NodeState::Ready;
                n.message = None;
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

fn send(conn: &mut UnixStream, reply: &Reply) -> bool {
    api::write_line(conn, reply).is_ok()
}

fn error(message: impl Into<String>, node: Option<&str>) -> Reply {
    Reply::Error {
        message: message.into(),
        node: node.map(str::to_owned),
    }
}

/// One API connection.
fn serve(shared: &Arc<Shared>, conn: UnixStream) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut conn = conn;
    loop {
        let request: Request = match api::read_line(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                send(&mut conn, &error(e.to_string(), None));
                return;
            }
        };
        match request {
            Request::Status => {
                let status = shared.status();
                if !send(&mut conn, &Reply::Status(status)) {
                    return;
                }
            }
            Request::Watch => {
                if !watch(shared, &mut conn) {
                    return;
                }
            }
            Request::Exec { node, exec } => {
                if !serve_exec(shared, &mut conn, &mut reader, &node, exec) {
                    return;
                }
            }
            Request::Put {
                node,
                path,
                mode,
                owner,
                data,
            } => {
                let reply = match shared.client(&node) {
                    Err(reply) => *reply,
                    Ok(client) => {
                        let mut request = PutRequest::new(&path, mode);
                        if let Some(owner) = owner {
                            request = request.owner(owner);
                        }
                        match client.put(request, &data[..], REQUEST_TIMEOUT) {
                            Ok(()) => Reply::Ok,
                            Err(e) => error(e.to_string(), Some(&node)),
                        }
                    }
                };
                if !send(&mut conn, &reply) {
                    return;
                }
            }
            Request::Get { node, path } => {
                let reply = match shared.client(&node) {
                    Err(reply) => *reply,
                    Ok(client) => match client.get(&path, REQUEST_TIMEOUT) {
                        Ok((info, data)) => Reply::File {
                            mode: info.mode,
                            data,
                        },
                        Err(e) => error(e.to_string(), Some(&node)),
                    },
                };
                if !send(&mut conn, &reply) {
                    return;
                }
            }
            Request::Forward { node, port } => {
                serve_forward(shared, conn, reader, &node, port);
                return;
            }
            Request::Power { node, action } => {
                let reply = power(shared, &node, action);
                if !send(&mut conn, &reply) {
                    return;
                }
            }
            Request::Wait {
                node,
                what,
                timeout_ms,
            } => {
                let reply = wait_in(shared, &node, &what, Duration::from_millis(timeout_ms));
                if !send(&mut conn, &reply) {
                    return;
                }
            }
            Request::Fault(fault) => {
                let reply = apply_fault(shared, fault);
                if !send(&mut conn, &reply) {
                    return;
                }
            }
            Request::History => {
                let events = lock(&shared.switch).history();
                if !send(&mut conn, &Reply::History { events }) {
                    return;
                }
            }
            Request::Down => {
                down(shared);
                send(&mut conn, &Reply::Ok);
                (shared.log)("down: done");
                std::process::exit(0);
            }
        }
    }
}

/// Streams node state changes until every node is settled.
fn watch(shared: &Arc<Shared>, conn: &mut UnixStream) -> bool {
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
            if !send(conn, &Reply::Node(status)) {
                return false;
            }
        }
        if all_settled {
            return send(conn, &Reply::Settled(shared.status()));
        }
        let nodes = lock(&shared.nodes);
        let _ = shared
            .changed
            .wait_timeout(nodes, Duration::from_millis(500))
            .map(drop);
    }
}

fn serve_exec(
    shared: &Arc<Shared>,
    conn: &mut UnixStream,
    reader: &mut BufReader<UnixStream>,
    node: &str,
    exec: ExecRequest,
) -> bool {
    let client = match shared.client(node) {
        Ok(c) => c,
        Err(reply) => return send(conn, &reply),
    };
    let wants_stdin = exec.stdin;
    let mut running = match client.exec(exec) {
        Ok(r) => r,
        Err(e) => return send(conn, &error(e.to_string(), Some(node))),
    };
    // Input lines are read on another thread while output streams here;
    // the reader is handed back when the command ends.
    let feeder = if wants_stdin {
        let stdin = running.stdin();
        let Ok(read_half) = reader.get_ref().try_clone() else {
            return false;
        };
        let mut lines = BufReader::new(read_half);
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
            Err(e) => break send(conn, &error(e.to_string(), Some(node))),
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
    shared: &Arc<Shared>,
    mut conn: UnixStream,
    reader: BufReader<UnixStream>,
    node: &str,
    port: u16,
) {
    let client = match shared.client(node) {
        Ok(c) => c,
        Err(reply) => {
            send(&mut conn, &reply);
            return;
        }
    };
    let forward = match client.forward(port, Duration::from_secs(30)) {
        Ok(f) => f,
        Err(e) => {
            send(&mut conn, &error(e.to_string(), Some(node)));
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

fn qmp(shared: &Shared, node: &str) -> Result<Qmp, Box<Reply>> {
    Qmp::connect_node(
        node,
        &shared.dir.node(node).qmp_socket(),
        Duration::from_secs(10),
    )
    .map_err(|e| Box::new(error(e.to_string(), Some(node))))
}

fn power(shared: &Arc<Shared>, name: &str, action: PowerAction) -> Reply {
    let (state, generation, pid) = match lock(&shared.nodes).get(name) {
        Some(n) => (n.state, n.generation, n.pid),
        None => return error(format!("no node {name} in this cluster"), None),
    };
    let running = pid.is_some();
    match action {
        PowerAction::Start => {
            if running {
                return error(
                    format!("node {name} is already running ({state})"),
                    Some(name),
                );
            }
            start_boot(shared, name);
            Reply::Ok
        }
        PowerAction::Crash => {
            if !running {
                return error(format!("node {name} is not running ({state})"), Some(name));
            }
            shared.set(name, generation, |n| {
                n.expected_stop = Some("crashed (power cut)".to_owned())
            });
            match &shared.runner {
                Runner::Qemu => {
                    let (tx, rx) = mpsc::channel();
                    shared.spawn_cmd(SpawnCmd::Kill {
                        node: name.to_owned(),
                        reply: tx,
                    });
                    let _ = rx.recv();
                }
                Runner::Libvirt(rt) => {
                    let domain = libvirt::domain_name(&shared.spec.cluster, name);
                    if let Err(e) = rt.host_of(name).destroy(&domain) {
                        return error(e.to_string(), Some(name));
                    }
                }
                Runner::Container(engine) => {
                    // Removed, not just killed: the kernel answers pings in
                    // a dead container's network namespace until the
                    // engine tears it down, and a crashed node must be
                    // silent at once, as a VM is.
                    let cname = container::container_name(&shared.spec.cluster, name);
                    if let Err(e) = engine.remove(&cname) {
                        return error(e.to_string(), Some(name));
                    }
                }
            }
            if let Some(pid) = pid {
                vm_exited(shared, name, pid, "killed");
            }
            Reply::Ok
        }
        PowerAction::Shutdown | PowerAction::Reboot => {
            if !running {
                return error(format!("node {name} is not running ({state})"), Some(name));
            }
            let reboot = action == PowerAction::Reboot;
            if let Err(reply) = clean_stop(shared, name, generation, reboot) {
                return *reply;
            }
            // QEMU runs with -no-reboot, so a guest reboot ends the process
            // too; the node then boots again as a new generation, with a
            // fresh activation (its writable layer was RAM).
            if reboot {
                start_boot(shared, name);
            }
            Reply::Ok
        }
        PowerAction::Pause | PowerAction::Resume => {
            let pause = action == PowerAction::Pause;
            let result = match &shared.runner {
                Runner::Qemu => qmp(shared, name).and_then(|mut q| {
                    let r = if pause { q.stop() } else { q.cont() };
                    r.map(drop)
                        .map_err(|e| Box::new(error(e.to_string(), Some(name))))
                }),
                Runner::Container(engine) => {
                    let cname = container::container_name(&shared.spec.cluster, name);
                    let r = if pause {
                        engine.pause(&cname)
                    } else {
                        engine.unpause(&cname)
                    };
                    r.map_err(|e| Box::new(error(e.to_string(), Some(name))))
                }
                Runner::Libvirt(rt) => {
                    let domain = libvirt::domain_name(&shared.spec.cluster, name);
                    let host = rt.host_of(name);
                    let r = if pause {
                        host.suspend(&domain)
                    } else {
                        host.resume(&domain)
                    };
                    r.map_err(|e| Box::new(error(e.to_string(), Some(name))))
                }
            };
            match result {
                Ok(_) => {
                    shared.set(name, generation, |n| {
                        n.state = if pause {
                            NodeState::Paused
                        } else if n.client.is_some() {
                            NodeState::Ready
                        } else {
                            NodeState::Booting
                        };
                    });
                    Reply::Ok
                }
                Err(reply) => *reply,
            }
        }
    }
}

/// Powers the node off cleanly through its agent (`systemctl poweroff`
/// or `reboot`) and waits for QEMU to exit; a node whose agent is gone, or
/// that does not stop in time, gets QMP `quit` (its images have no
/// power-button handler, so ACPI power-down would do nothing).
fn clean_stop(
    shared: &Arc<Shared>,
    name: &str,
    generation: u64,
    reboot: bool,
) -> Result<(), Box<Reply>> {
    let reason = if reboot { "rebooting" } else { "shut down" };
    shared.set(name, generation, |n| {
        n.expected_stop = Some(reason.to_owned())
    });
    let verb = if reboot { "reboot" } else { "poweroff" };
    let via_agent = shared.client(name).ok().is_some_and(|c| {
        c.exec_output(
            ExecRequest::argv(["systemctl", verb, "--no-block"]).timeout(Duration::from_secs(30)),
        )
        .is_ok_and(|o| o.status.success())
    });
    let stopped = |n: &NodeRt| n.generation != generation || n.pid.is_none();
    let grace = if via_agent {
        shared.spec.boot_timeout().min(Duration::from_secs(300))
    } else {
        Duration::ZERO
    };
    if matches!(wait_for(shared, name, grace, stopped), Reply::Ok) {
        return Ok(());
    }
    shared.log(&format!(
        "{name}: no clean {verb} within {grace:?}; stopping it hard"
    ));
    match &shared.runner {
        Runner::Qemu => qmp(shared, name).and_then(|mut q| {
            q.quit()
                .map_err(|e| Box::new(error(e.to_string(), Some(name))))
        })?,
        Runner::Container(engine) => engine
            .kill(&container::container_name(&shared.spec.cluster, name))
            .map_err(|e| Box::new(error(e.to_string(), Some(name))))?,
        Runner::Libvirt(rt) => rt
            .host_of(name)
            .destroy(&libvirt::domain_name(&shared.spec.cluster, name))
            .map_err(|e| Box::new(error(e.to_string(), Some(name))))?,
    }
    match wait_for(shared, name, Duration::from_secs(30), stopped) {
        Reply::Ok => Ok(()),
        other => Err(Box::new(other)),
    }
}

fn wait_for(
    shared: &Shared,
    name: &str,
    timeout: Duration,
    cond: impl Fn(&NodeRt) -> bool,
) -> Reply {
    let deadline = Instant::now() + timeout;
    let mut nodes = lock(&shared.nodes);
    loop {
        if nodes.get(name).is_some_and(&cond) {
            return Reply::Ok;
        }
        let now = Instant::now();
        if now >= deadline {
            let state = nodes.get(name).map(|n| n.state.to_string());
            return error(
                format!(
                    "node {name} did not stop within {:.0}s (still {})",
                    timeout.as_secs_f64(),
                    state.unwrap_or_default()
                ),
                Some(name),
            );
        }
        nodes = match shared.changed.wait_timeout(nodes, deadline - now) {
            Ok((guard, _)) => guard,
            Err(e) => e.into_inner().0,
        };
    }
}

/// Waits for a unit, port or file inside `node` through its agent.
fn wait_in(shared: &Shared, node: &str, what: &WaitFor, timeout: Duration) -> Reply {
    let client = match shared.client(node) {
        Ok(c) => c,
        Err(reply) => return *reply,
    };
    let result = match what {
        WaitFor::Unit { unit } => client.wait_unit(unit, timeout),
        WaitFor::Port { port } => client.wait_port(*port, timeout),
        WaitFor::File { path } => client.wait_file(path, timeout),
    };
    match result {
        Ok(()) => Reply::Ok,
        Err(e) => error(e.to_string(), Some(node)),
    }
}

fn apply_fault(shared: &Shared, fault: Fault) -> Reply {
    let reply = {
        let switch = lock(&shared.switch);
        let result = match fault {
            Fault::Block { node } => switch.block(&node),
            Fault::Unblock { node } => switch.unblock(&node),
            Fault::Partition { groups } => switch.partition(&groups),
            Fault::Heal => {
                switch.heal();
                Ok(())
            }
            Fault::Link { a, b, change } => {
                let before = switch.link(&a, &b);
                match switch.change_link(&a, &b, &change) {
                    Ok(rule) => {
                        drop(switch);
                        // A rule this backend cannot apply is taken back,
                        // so the fault table never claims what is not so.
                        if let Err(message) = container_sync_faults(shared) {
                            let _ = lock(&shared.switch).set_link(&a, &b, before);
                            let _ = container_sync_faults(shared);
                            return error(message, None);
                        }
                        return Reply::Link { rule };
                    }
                    Err(e) => return error(e.to_string(), None),
                }
            }
        };
        match result {
            Ok(()) => Reply::Ok,
            Err(e) => return error(e.to_string(), None),
        }
    };
    match container_sync_faults(shared) {
        Ok(()) => reply,
        Err(message) => error(message, None),
    }
}

/// Stops every VM and the switch and removes the state directory.
fn down(shared: &Arc<Shared>) {
    shared.log("down: stopping every node");
    let (tx, rx) = mpsc::channel();
    shared.spawn_cmd(SpawnCmd::KillAll { reply: tx });
    let _ = rx.recv_timeout(Duration::from_secs(60));
    if let Runner::Container(engine) = &shared.runner {
        let conns: Vec<AgentConn> = lock(&shared.nodes)
            .values()
            .filter_map(|n| n.agent_conn.clone())
            .collect();
        for conn in conns {
            conn.close();
        }
        for line in container::remove_cluster(engine, shared.dir.path()) {
            shared.log(&format!("down: {line}"));
        }
    }
    if let Runner::Libvirt(rt) = &shared.runner {
        use std::sync::atomic::Ordering;
        rt.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(120);
        while rt.creating.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for line in libvirt_remove(&rt.hosts, &shared.spec.cluster, shared.dir.path()) {
            shared.log(&format!("down: {line}"));
        }
    }
    lock(&shared.switch).stop();
    let _ = fs::remove_dir_all(shared.dir.path());
}

/// The two halves of a unix socket as an agent channel.
type Channel = (Box<dyn Read + Send>, Box<dyn Write + Send>, AgentConn);

fn socket_channel(stream: UnixStream) -> Result<Channel, String> {
    let reader = stream
        .try_clone()
        .map_err(|e| format!("agent socket: {e}"))?;
    let writer = stream
        .try_clone()
        .map_err(|e| format!("agent socket: {e}"))?;
    Ok((
        Box::new(reader),
        Box::new(writer),
        AgentConn::Socket(Arc::new(stream)),
    ))
}

/// Imports every role's image the engine does not have yet (recording the
/// tags this cluster imported, which `down` removes) and creates the
/// cluster's internal networks.
fn container_prepare(
    spec: &ClusterSpec,
    dir: &StateDir,
    engine: &Containers,
    log: &Log,
) -> Result<(), container::ContainerError> {
    let labels = container_labels(spec, dir, None);
    let mut imported = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for node in &spec.nodes {
        if !seen.insert(node.image.key.clone()) {
            continue;
        }
        let tag = container::image_tag(&node.image.key);
        let start = Instant::now();
        if engine.import(&node.image.archive, &tag)? {
            log(&format!(
                "imported {} as {tag} in {:.1}s",
                node.image.archive.display(),
                start.elapsed().as_secs_f64()
            ));
            imported.push(tag);
            // Written at every step, so a crash between two imports still
            // leaves `down` the list.
            let _ = state::write_atomic(
                &dir.path().join(container::IMPORTED_FILE),
                imported.join("\n").as_bytes(),
                0o600,
            );
        }
    }
    for net in &spec.networks {
        let name = container::network_name(&spec.cluster, &net.name);
        engine.create_network(&name, &net.subnet, &labels)?;
    }
    Ok(())
}

fn container_labels(
    spec: &ClusterSpec,
    dir: &StateDir,
    node: Option<&str>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert(container::LABEL_CLUSTER.to_owned(), spec.cluster.clone());
    labels.insert(
        container::LABEL_STATE.to_owned(),
        dir.path().to_string_lossy().into_owned(),
    );
    if let Some(node) = node {
        labels.insert(container::LABEL_NODE.to_owned(), node.to_owned());
    }
    labels
}

/// The container backend's watcher: follows the engine's `died` events of
/// this cluster's containers (the event stream is a child of this
/// long-lived thread, so it dies with the supervisor) and ends with the
/// supervisor's spawner channel.
fn container_watch(shared: &Arc<Shared>, rx: &mpsc::Receiver<SpawnCmd>) {
    let Runner::Container(engine) = &shared.runner else {
        return;
    };
    let (events_tx, events_rx) = mpsc::channel::<String>();
    let mut events: Option<Child> = None;
    loop {
        if events
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
        {
            events = container_events(shared, engine, events_tx.clone());
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(SpawnCmd::KillAll { reply }) => {
                let _ = reply.send(());
            }
            Ok(SpawnCmd::Kill { reply, .. }) => {
                let _ = reply.send(());
            }
            Ok(SpawnCmd::Start { reply, .. }) => {
                let _ = reply.send(Err("the container backend starts no QEMU".to_owned()));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if let Some(mut c) = events {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return;
            }
        }
        while let Ok(id) = events_rx.try_recv() {
            let found = lock(&shared.nodes).iter().find_map(|(name, n)| {
                n.container_id
                    .as_deref()
                    .filter(|c| c.starts_with(&id) || id.starts_with(c))
                    .and(n.pid)
                    .map(|pid| (name.clone(), pid))
            });
            if let Some((name, pid)) = found {
                vm_exited(shared, &name, pid, "the container exited");
            }
        }
    }
}

/// Starts `engine events` for this cluster's containers; each `died`
/// event's container id is sent to `tx`.
fn container_events(
    shared: &Arc<Shared>,
    engine: &Containers,
    tx: mpsc::Sender<String>,
) -> Option<Child> {
    let mut cmd = engine.command();
    cmd.args([
        "events",
        "--format",
        "{{.ID}}",
        "--filter",
        "event=died",
        "--filter",
        &format!(
            "label={}={}",
            container::LABEL_STATE,
            shared.dir.path().display()
        ),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    qemu::die_with_spawning_thread(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            shared.log(&format!("cannot follow the engine's events: {e}"));
            return None;
        }
    };
    let stdout = child.stdout.take()?;
    let _ = std::thread::Builder::new()
        .name("events".into())
        .spawn(move || {
            use std::io::BufRead;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let id = line.trim();
                if !id.is_empty() && tx.send(id.to_owned()).is_err() {
                    break;
                }
            }
        });
    Some(child)
}

/// One boot of a container node: a fresh container (a node that crashed
/// or stopped loses its writable layer, as a VM loses its RAM), then the
/// fault rules in force, then the agent as for a VM.
fn container_boot(shared: &Arc<Shared>, engine: &Containers, spec: &NodeSpec, generation: u64) {
    let name = spec.name.as_str();
    let node_dir = shared.dir.node(name);
    let cname = container::container_name(&shared.spec.cluster, name);
    let _ = engine.remove(&cname);
    let _ = fs::remove_file(node_dir.console_log());
    let config = ContainerConfig {
        name: cname.clone(),
        hostname: name.to_owned(),
        image: container::image_tag(&spec.image.key),
        memory_mib: spec.memory_mib,
        cpus: spec.cpus,
        nics: spec
            .nics
            .iter()
            .map(|nic| ContainerNic {
                network: container::network_name(&shared.spec.cluster, &nic.network),
                ip: nic.ip.clone(),
                mac: nic.mac.clone(),
            })
            .collect(),
        labels: container_labels(&shared.spec, &shared.dir, Some(name)),
        console_log: node_dir.console_log(),
    };
    let started = Instant::now();
    let id = match engine.start(&config) {
        Ok(id) => id,
        Err(e) => return shared.fail(name, generation, e.to_string()),
    };
    let pid = match engine.pid(&cname) {
        Ok(pid) if pid > 0 => pid,
        Ok(_) => {
            return shared.fail(
                name,
                generation,
                format!(
                    "the container {cname} stopped at once; the console's last lines:\n{}",
                    console_tail(&node_dir.console_log(), CONSOLE_TAIL)
                ),
            )
        }
        Err(e) => return shared.fail(name, generation, e.to_string()),
    };
    if !shared.set(name, generation, |n| {
        n.state = NodeState::Booting;
        n.pid = Some(pid);
        n.container_id = Some(id);
        n.applied = None;
        n.started = Some(started);
    }) {
        return;
    }
    if let Err(message) = container_sync_faults(shared) {
        return shared.fail(name, generation, message);
    }
    attach(shared, name, generation, started);
}

/// The agent's session in a container: `engine exec -i NAME agent --stdio`.
fn container_agent(shared: &Shared, engine: &Containers, name: &str) -> Result<Channel, String> {
    let cname = container::container_name(&shared.spec.cluster, name);
    let log = shared.dir.node(name).path.join("agent.log");
    let stderr = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let mut child = engine
        .agent_command(&cname)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", engine.info.engine))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err("the agent's exec session has no standard streams".to_owned());
    };
    Ok((
        Box::new(stdout),
        Box::new(stdin),
        AgentConn::Process(Arc::new(Mutex::new(child))),
    ))
}

/// Makes every running container's network namespace match the fault
/// table; a no-op for VM backends, whose frames pass through the switch.
fn container_sync_faults(shared: &Shared) -> Result<(), String> {
    let Runner::Container(engine) = &shared.runner else {
        return Ok(());
    };
    let running: Vec<(String, u32, Option<FaultProgram>)> = lock(&shared.nodes)
        .iter()
        .filter_map(|(name, n)| n.pid.map(|pid| (name.clone(), pid, n.applied.clone())))
        .collect();
    let programs: Vec<(String, u32, Option<FaultProgram>, FaultProgram)> = {
        let switch = lock(&shared.switch);
        running
            .into_iter()
            .filter_map(|(name, pid, applied)| {
                let spec = shared.spec.node(&name)?;
                let interfaces: Vec<String> =
                    (0..spec.nics.len()).map(|i| format!("eth{i}")).collect();
                let mut peers = Vec::new();
                for other in shared.spec.nodes.iter().filter(|o| o.name != name) {
                    let verdict = switch.verdict(&name, &other.name);
                    for nic in &other.nics {
                        if let Some(i) = spec.nics.iter().position(|m| m.network == nic.network) {
                            peers.push(Peer {
                                node: other.name.clone(),
                                ip: nic.ip.clone(),
                                interface: interfaces[i].clone(),
                                verdict: verdict.clone(),
                            });
                        }
                    }
                }
                let gateways: Vec<String> = spec
                    .nics
                    .iter()
                    .filter_map(|nic| {
                        let net = shared
                            .spec
                            .networks
                            .iter()
                            .find(|n| n.name == nic.network)?;
                        container::gateway(&net.subnet)
                    })
                    .collect();
                let program = container::fault_program(&interfaces, &peers, &gateways);
                Some((name, pid, applied, program))
            })
            .collect()
    };
    let mut first_error = None;
    for (name, pid, applied, program) in programs {
        if applied.as_ref() == Some(&program) {
            continue;
        }
        match container::apply_program(engine, &name, pid, &program) {
            Ok(()) => {
                let mut nodes = lock(&shared.nodes);
                if let Some(n) = nodes.get_mut(&name).filter(|n| n.pid == Some(pid)) {
                    n.applied = Some(program);
                }
            }
            // A node that stopped meanwhile gets its rules at its next boot.
            Err(_)
                if lock(&shared.nodes)
                    .get(&name)
                    .is_some_and(|n| n.pid != Some(pid)) => {}
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The local side of a socket pair as an agent channel.
fn socket_pair_channel(reader: UnixStream, writer: UnixStream) -> Result<Channel, String> {
    let conn = reader
        .try_clone()
        .map_err(|e| format!("agent channel: {e}"))?;
    Ok((
        Box::new(reader),
        Box::new(writer),
        AgentConn::Socket(Arc::new(conn)),
    ))
}

/// The addresses a libvirt host on `host` (a name or address; empty for a
/// local URI) and this machine reach each other at: `(ours, theirs)`.
/// Loopback for local and loopback hosts; otherwise the source address of
/// the route towards the host (a UDP `connect`, which sends nothing).
fn addresses_towards(host: &str) -> Result<(IpAddr, IpAddr), String> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if host.is_empty() || host == "localhost" {
        return Ok((loopback, loopback));
    }
    let remote = (host, 9)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve the libvirt host {host}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("the libvirt host {host} has no IPv4 address"))?;
    if remote.ip().is_loopback() {
        return Ok((loopback, remote.ip()));
    }
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    probe
        .connect(remote)
        .map_err(|e| format!("no route to the libvirt host {host}: {e}"))?;
    let local = probe.local_addr().map_err(|e| e.to_string())?.ip();
    Ok((local, remote.ip()))
}

/// Connects to every libvirt host and starts the switch with one UDP port
/// per NIC: on loopback for nodes of a daemon on this machine (or reached
/// over loopback), on all addresses for a remote host, whose domains send
/// to the address this machine has towards it. A port still accepts
/// datagrams from its one peer only.
fn libvirt_start(
    spec: &ClusterSpec,
    uris: &[String],
    placement: &BTreeMap<String, usize>,
) -> Result<(LibvirtRt, Switch), SupervisorError> {
    if uris.is_empty() {
        return Err(SupervisorError::Config(
            "the libvirt backend needs at least one host URI".to_owned(),
        ));
    }
    let mut hosts = Vec::new();
    let mut addrs = Vec::new();
    for uri in uris {
        hosts.push(LibvirtHost::connect(uri)?);
        let host = if libvirt::uri_is_remote(uri) {
            libvirt::uri_host(uri)
        } else {
            String::new()
        };
        addrs.push(addresses_towards(&host).map_err(SupervisorError::Config)?);
    }
    let mut ports = Vec::new();
    let mut keys = Vec::new();
    for node in &spec.nodes {
        let h = placement
            .get(&node.name)
            .copied()
            .unwrap_or(0)
            .min(uris.len() - 1);
        let (ours, theirs) = addrs[h];
        for nic in &node.nics {
            // QEMU binds its end on the libvirt host; a free port can only
            // be asked for here, which is exact for loopback hosts. On a
            // remote host a collision shows as the domain's bind error,
            // never as misrouting.
            let peer_port = switch::reserve_udp_port()
                .map_err(|e| SupervisorError::Config(format!("cannot reserve a UDP port: {e}")))?
                .port();
            let bind_ip = if ours.is_loopback() {
                ours
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            };
            ports.push(PortSpec {
                segment: nic.network.clone(),
                node: node.name.clone(),
                transport: switch::Transport::Udp {
                    bind: SocketAddr::new(bind_ip, 0),
                    peer: SocketAddr::new(theirs, peer_port),
                },
            });
            keys.push((
                node.name.clone(),
                nic.network.clone(),
                nic.mac.clone(),
                ours,
            ));
        }
    }
    let switch = Switch::start(&ports, spec.seed)?;
    let mut nics = BTreeMap::new();
    for ((node, network, mac, ours), (info, port)) in
        keys.into_iter().zip(switch.ports().iter().zip(&ports))
    {
        let bound: SocketAddr = info.switch_addr.parse().map_err(|_| {
            SupervisorError::Config(format!("unexpected switch port {}", info.switch_addr))
        })?;
        if let switch::Transport::Udp { peer, .. } = &port.transport {
            nics.insert(
                (node, network),
                UdpNic {
                    mac,
                    switch: SocketAddr::new(ours, bound.port()),
                    local: *peer,
                },
            );
        }
    }
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rt = LibvirtRt {
        hosts,
        placement: placement.clone(),
        nics,
        images: Mutex::new(BTreeMap::new()),
        run_id: format!("{started}-{}", std::process::id()),
        stopping: std::sync::atomic::AtomicBool::new(false),
        creating: std::sync::atomic::AtomicUsize::new(0),
    };
    Ok((rt, switch))
}

/// Copies the images each host's nodes need into its storage pool (once
/// per content hash and host; a complete copy is kept for later runs).
fn libvirt_prepare(shared: &Shared, rt: &LibvirtRt) -> Result<(), String> {
    let mut wanted = std::collections::BTreeSet::new();
    for node in &shared.spec.nodes {
        let dir = node
            .image
            .kernel
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        wanted.insert((rt.index_of(&node.name), node.image.key.clone(), dir));
    }
    for (h, key, dir) in wanted {
        let host = &rt.hosts[h];
        let start = Instant::now();
        let image = host
            .ensure_images(&key, &dir)
            .map_err(|e| format!("copying image {key} to {}: {e}", host.uri()))?;
        if image.uploaded {
            shared.log(&format!(
                "uploaded image {} to {} in {:.1}s",
                &key[..key.len().min(12)],
                host.uri(),
                start.elapsed().as_secs_f64()
            ));
        }
        lock(&rt.images).insert((h, key), image);
    }
    Ok(())
}

/// One boot of a libvirt node: a fresh transient domain (a leftover of the
/// same name made by testbed is destroyed first), then the agent as for a
/// VM of the QEMU backend.
fn libvirt_boot(shared: &Arc<Shared>, rt: &LibvirtRt, spec: &NodeSpec, generation: u64) {
    let name = spec.name.as_str();
    let h = rt.index_of(name);
    let host = &rt.hosts[h];
    let Some(image) = lock(&rt.images).get(&(h, spec.image.key.clone())).cloned() else {
        return shared.fail(
            name,
            generation,
            format!("image {} is not on {}", spec.image.key, host.uri()),
        );
    };
    let mut nics = Vec::new();
    for nic in &spec.nics {
        match rt.nics.get(&(name.to_owned(), nic.network.clone())) {
            Some(udp) => nics.push(udp.clone()),
            None => {
                return shared.fail(
                    name,
                    generation,
                    format!("no switch port for network {}", nic.network),
                )
            }
        }
    }
    let config = DomainConfig {
        cluster: shared.spec.cluster.clone(),
        node: name.to_owned(),
        run_id: rt.run_id.clone(),
        state_dir: shared.dir.path().to_path_buf(),
        accel: shared.spec.accel,
        memory_mib: spec.memory_mib,
        cpus: spec.cpus,
        kernel: image.kernel,
        initramfs: image.initramfs,
        rootfs: image.rootfs,
        cmdline: spec.image.cmdline.clone(),
        nics,
        console_log: shared.dir.node(name).console_log(),
        autodestroy: false,
    };
    use std::sync::atomic::Ordering;
    rt.creating.fetch_add(1, Ordering::SeqCst);
    if rt.stopping.load(Ordering::SeqCst) {
        rt.creating.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let _ = host.destroy(&config.name());
    let started = Instant::now();
    let created = host.start(&config);
    rt.creating.fetch_sub(1, Ordering::SeqCst);
    if let Err(e) = created {
        return shared.fail(name, generation, e.to_string());
    }
    // The QEMU runs on the libvirt host: `pid` only marks this boot.
    if !shared.set(name, generation, |n| {
        n.state = NodeState::Booting;
        n.pid = Some(generation as u32);
        n.started = Some(started);
    }) {
        return;
    }
    attach(shared, name, generation, started);
}

/// The libvirt backend's watcher: notices domains that ended (a guest's
/// power-off or reboot, a destroy from outside) by polling once a second,
/// and ends with the supervisor's spawner channel.
fn libvirt_watch(shared: &Arc<Shared>, rx: &mpsc::Receiver<SpawnCmd>) {
    let Runner::Libvirt(rt) = &shared.runner else {
        return;
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(1000)) {
            Ok(SpawnCmd::KillAll { reply }) | Ok(SpawnCmd::Kill { reply, .. }) => {
                let _ = reply.send(());
            }
            Ok(SpawnCmd::Start { reply, .. }) => {
                let _ = reply.send(Err("the libvirt backend starts no QEMU itself".to_owned()));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let running: Vec<(String, u32)> = lock(&shared.nodes)
            .iter()
            .filter_map(|(name, n)| n.pid.map(|p| (name.clone(), p)))
            .collect();
        for (name, token) in running {
            let domain = libvirt::domain_name(&shared.spec.cluster, &name);
            if let Ok(false) = rt.host_of(&name).is_running(&domain) {
                vm_exited(shared, &name, token, "the domain ended");
            }
        }
    }
}

/// Destroys every domain on `hosts` that testbed made for `cluster` from
/// the state directory `state`; domains of another state directory, or
/// without testbed's metadata, are left alone. One line per action.
pub(crate) fn libvirt_remove(hosts: &[LibvirtHost], cluster: &str, state: &Path) -> Vec<String> {
    let mut report = Vec::new();
    for host in hosts {
        match host.list(cluster) {
            Ok(domains) => {
                for d in domains.iter().filter(|d| d.metadata.state_dir == state) {
                    match host.destroy(&d.name) {
                        Ok(()) => {
                            report.push(format!("destroyed domain {} on {}", d.name, host.uri()))
                        }
                        Err(e) => report.push(e.to_string()),
                    }
                }
            }
            Err(e) => report.push(e.to_string()),
        }
    }
    report
}
