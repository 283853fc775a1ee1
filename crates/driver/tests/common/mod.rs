//! An in-memory cluster for driving the script engine without VMs.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testbed_api::{
    ClusterStatus, Fault, FaultEvent, LinkRule, NodeState, NodeStatus, PowerAction, WaitFor,
};
use testbed_driver::{
    Cluster, ClusterError, CommandOutput, Driver, DriverOptions, Event, Timeouts,
};
use testbed_proto::{ExecRequest, ExitStatus};

/// What a command returns: exit code, stdout, stderr.
pub type Handler = dyn Fn(&str, &str, u32) -> (i32, String, String) + Send + Sync;

#[derive(Debug, Default)]
pub struct FakeState {
    pub nodes: Vec<NodeStatus>,
    /// (node, command, timeout).
    pub commands: Vec<(String, String, Duration)>,
    pub power: Vec<(String, PowerAction)>,
    pub faults: Vec<Fault>,
    pub waits: Vec<(String, WaitFor, Duration)>,
    /// (node, path) → (mode, data).
    pub files: BTreeMap<(String, String), (u32, Vec<u8>)>,
    /// Active units per node.
    pub units: BTreeMap<String, BTreeSet<String>>,
    /// Status calls left before a booting node is ready.
    pub booting: BTreeMap<String, u32>,
    /// Nodes that fail when they boot.
    pub broken: BTreeSet<String>,
    /// How many times each command ran, per node.
    pub runs: BTreeMap<(String, String), u32>,
}

pub struct FakeCluster {
    pub state: Mutex<FakeState>,
    pub accel: String,
    pub handler: Box<Handler>,
    pub services: BTreeMap<String, Vec<String>>,
    pub dir: tempfile::TempDir,
}

/// The default commands: `true`, `false`, `echo X`, `warn X` (stderr and
/// exit 3), `third-time` (succeeds from the third run on), `hang`
/// (killed after its timeout).
pub fn default_handler(_node: &str, cmd: &str, run: u32) -> (i32, String, String) {
    if cmd == "true" {
        (0, String::new(), String::new())
    } else if cmd == "false" {
        (1, String::new(), String::new())
    } else if let Some(rest) = cmd.strip_prefix("echo ") {
        (0, format!("{rest}\n"), String::new())
    } else if let Some(rest) = cmd.strip_prefix("warn ") {
        (3, "some output\n".into(), format!("{rest}\n"))
    } else if cmd == "third-time" {
        if run >= 3 {
            (0, format!("run {run}\n"), String::new())
        } else {
            (1, String::new(), format!("not yet ({run})\n"))
        }
    } else if cmd == "hang" {
        (-1, String::new(), String::new())
    } else {
        (127, String::new(), format!("sh: {cmd}: not found\n"))
    }
}

impl FakeCluster {
    /// Nodes as (name, role), all ready.
    pub fn new(accel: &str, nodes: &[(&str, &str)]) -> FakeCluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes = nodes
            .iter()
            .map(|(name, role)| {
                let log = dir.path().join(format!("{name}.console.log"));
                std::fs::write(&log, format!("console of {name}\n")).unwrap();
                NodeStatus {
                    name: (*name).into(),
                    role: (*role).into(),
                    state: NodeState::Ready,
                    addresses: vec![],
                    pid: Some(1),
                    uptime_ms: Some(1000),
                    message: None,
                    snapshot: None,
                    warning: None,
                    console_log: log,
                }
            })
            .collect();
        FakeCluster {
            state: Mutex::new(FakeState {
                nodes,
                ..FakeState::default()
            }),
            accel: accel.into(),
            handler: Box::new(default_handler),
            services: BTreeMap::new(),
            dir,
        }
    }

    pub fn with_handler(
        mut self,
        h: impl Fn(&str, &str, u32) -> (i32, String, String) + Send + Sync + 'static,
    ) -> Self {
        self.handler = Box::new(h);
        self
    }

    pub fn set_state(&self, node: &str, state: NodeState) {
        let mut s = self.state.lock().unwrap();
        s.nodes.iter_mut().find(|n| n.name == node).unwrap().state = state;
    }

    pub fn state_of(&self, node: &str) -> NodeState {
        let s = self.state.lock().unwrap();
        s.nodes.iter().find(|n| n.name == node).unwrap().state
    }

    fn running(&self, s: &FakeState, node: &str) -> Result<(), ClusterError> {
        match s.nodes.iter().find(|n| n.name == node) {
            None => Err(failed(format!("no node {node} in this cluster"), None)),
            Some(n) if n.state == NodeState::Ready => Ok(()),
            Some(n) => Err(failed(
                format!("node {node} is not running ({})", n.state),
                Some(node),
            )),
        }
    }
}

fn failed(message: String, node: Option<&str>) -> ClusterError {
    ClusterError::Failed {
        message,
        node: node.map(str::to_owned),
    }
}

impl Cluster for FakeCluster {
    fn status(&self) -> Result<ClusterStatus, ClusterError> {
        let mut s = self.state.lock().unwrap();
        let s = &mut *s;
        for node in &mut s.nodes {
            if let Some(left) = s.booting.get_mut(&node.name) {
                if *left == 0 {
                    s.booting.remove(&node.name);
                    if s.broken.contains(&node.name) {
                        node.state = NodeState::Failed;
                        node.message = Some("unit x.service failed".into());
                    } else {
                        node.state = NodeState::Ready;
                    }
                } else {
                    *left -= 1;
                    node.state = NodeState::Booting;
                }
            }
        }
        Ok(ClusterStatus {
            cluster: "fake".into(),
            composition: PathBuf::from("/fake/testbed.toml"),
            state_dir: self.dir.path().to_path_buf(),
            backend: "qemu".into(),
            accel: self.accel.clone(),
            supervisor_pid: 1,
            console: true,
            nodes: s.nodes.clone(),
        })
    }

    fn exec(&self, node: &str, request: ExecRequest) -> Result<CommandOutput, ClusterError> {
        let timeout = Duration::from_millis(request.timeout_ms.unwrap_or(0));
        let cmd = match &request.command {
            testbed_proto::Command::Shell(s) => s.clone(),
            testbed_proto::Command::Argv(a) => a.join(" "),
        };
        let run = {
            let mut s = self.state.lock().unwrap();
            self.running(&s, node)?;
            s.commands.push((node.into(), cmd.clone(), timeout));
            let run = s.runs.entry((node.into(), cmd.clone())).or_default();
            *run += 1;
            *run
        };
        let (code, stdout, stderr) = (self.handler)(node, &cmd, run);
        let status = if code < 0 {
            ExitStatus {
                code: None,
                signal: Some(9),
                timed_out: true,
            }
        } else {
            ExitStatus {
                code: Some(code),
                signal: None,
                timed_out: false,
            }
        };
        Ok(CommandOutput {
            status,
            stdout: stdout.into_bytes(),
            stderr: stderr.into_bytes(),
        })
    }

    fn put(&self, node: &str, path: &str, mode: u32, data: &[u8]) -> Result<(), ClusterError> {
        let mut s = self.state.lock().unwrap();
        self.running(&s, node)?;
        s.files
            .insert((node.into(), path.into()), (mode, data.to_vec()));
        Ok(())
    }

    fn get(&self, node: &str, path: &str) -> Result<(u32, Vec<u8>), ClusterError> {
        let s = self.state.lock().unwrap();
        self.running(&s, node)?;
        s.files
            .get(&(node.into(), path.into()))
            .cloned()
            .ok_or_else(|| failed(format!("node {node}: {path}: no such file"), Some(node)))
    }

    fn wait(&self, node: &str, what: &WaitFor, timeout: Duration) -> Result<(), ClusterError> {
        let mut s = self.state.lock().unwrap();
        self.running(&s, node)?;
        s.waits.push((node.into(), what.clone(), timeout));
        let ok = match what {
            WaitFor::Unit { unit } => s.units.get(node).is_some_and(|u| u.contains(unit)),
            WaitFor::Port { port } => *port == 22,
            WaitFor::File { path } => s.files.contains_key(&(node.into(), path.clone())),
        };
        if ok {
            Ok(())
        } else {
            Err(failed(
                format!(
                    "node {node}: {what:?} not reached within {}ms",
                    timeout.as_millis()
                ),
                Some(node),
            ))
        }
    }

    fn power(&self, node: &str, action: PowerAction) -> Result<(), ClusterError> {
        let mut s = self.state.lock().unwrap();
        s.power.push((node.into(), action));
        let state = s.nodes.iter().find(|n| n.name == node).unwrap().state;
        let running = state != NodeState::Stopped && state != NodeState::Failed;
        let new = match action {
            PowerAction::Start if running => {
                return Err(failed(
                    format!("node {node} is already running ({state})"),
                    Some(node),
                ))
            }
            PowerAction::Start | PowerAction::Reboot => {
                s.booting.insert(node.into(), 2);
                NodeState::Starting
            }
            _ if !running => {
                return Err(failed(
                    format!("node {node} is not running ({state})"),
                    Some(node),
                ))
            }
            PowerAction::Shutdown | PowerAction::Crash => NodeState::Stopped,
            PowerAction::Pause => NodeState::Paused,
            PowerAction::Resume => NodeState::Ready,
        };
        s.nodes.iter_mut().find(|n| n.name == node).unwrap().state = new;
        Ok(())
    }

    fn fault(&self, fault: &Fault) -> Result<Option<LinkRule>, ClusterError> {
        let mut s = self.state.lock().unwrap();
        s.faults.push(fault.clone());
        Ok(match fault {
            Fault::Link { .. } => Some(LinkRule::default()),
            _ => None,
        })
    }

    fn history(&self) -> Result<Vec<FaultEvent>, ClusterError> {
        let s = self.state.lock().unwrap();
        Ok(s.faults
            .iter()
            .enumerate()
            .map(|(i, f)| FaultEvent {
                at: i as f64,
                change: format!("{f:?}"),
            })
            .collect())
    }

    fn boot_timeout(&self) -> Duration {
        Duration::from_secs(60)
    }

    fn services(&self, node: &str) -> Vec<String> {
        self.services.get(node).cloned().unwrap_or_default()
    }
}

/// A driver on `cluster` whose events are collected, with fast retries.
pub fn driver(cluster: Arc<FakeCluster>, script: PathBuf) -> (Driver, Arc<Mutex<Vec<Event>>>) {
    driver_limited(cluster, script, None)
}

/// Like [`driver`], with a time limit for `run`.
pub fn driver_limited(
    cluster: Arc<FakeCluster>,
    script: PathBuf,
    limit: Option<Duration>,
) -> (Driver, Arc<Mutex<Vec<Event>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let mut options = DriverOptions::new(script);
    options.time_limit = limit;
    options.timeouts = Timeouts {
        retry_interval: Duration::from_millis(10),
        poll_interval: Duration::from_millis(5),
        ..Timeouts::default()
    };
    let driver = Driver::new(
        cluster,
        options,
        Arc::new(move |e: &Event| sink.lock().unwrap().push(e.clone())),
    )
    .unwrap();
    (driver, events)
}

/// The standard test cluster: `ctl`, `compute1`, `compute2`, `edge-1`.
pub fn cluster(accel: &str) -> Arc<FakeCluster> {
    Arc::new(FakeCluster::new(
        accel,
        &[
            ("ctl", "ctl"),
            ("compute1", "compute"),
            ("compute2", "compute"),
            ("edge-1", "edge"),
        ],
    ))
}
