//! A fake backend for the supervisor's tests, shared by
//! `supervisor.rs` (its state machine) and `fuzz.rs` (its API under
//! hostile clients): no VM, no container, milliseconds per cluster.
//!
//! The fake ([`Fake`]) implements the public `Backend` trait from outside
//! the crate, as a new backend would. Its "machines" run the real guest
//! agent (`testbed_agent::session::serve`, under a temporary root prefix,
//! so activation writes files there and changes nothing on the host) on one
//! end of a socket pair; the supervisor gets the other end. It records every
//! call, and each node can be told to misbehave: fail to start, never
//! answer, ignore a clean power-off, take a while to start.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use testbed_proto::{Activation, ExecRequest};
use testbed_runtime::accel::Accel;
use testbed_runtime::api::{NodeState, NodeStatus};
use testbed_runtime::backend::{
    Backend, BackendError, Caps, Channel, Events, Opened, Started, Stop,
};
use testbed_runtime::spec::{BackendSpec, ClusterSpec, ImageFiles, NetworkSpec, NicSpec, NodeSpec};
use testbed_runtime::state::StateDir;
use testbed_runtime::supervisor::{Log, Supervisor};
use testbed_runtime::switch::Switch;

/// Generous bounds: a test that needs them has hung. Every wait here ends
/// in milliseconds when things work.
pub const SETTLE: Duration = Duration::from_secs(10);

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a node of the fake misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quirk {
    #[default]
    None,
    /// `start` fails.
    StartFails,
    /// The agent channel never opens.
    NeverAnswers,
    /// The clean power-off command changes nothing.
    IgnoresPowerOff,
    /// `start` waits until [`Fake::release`].
    SlowStart,
}

/// One machine of the fake: a thread serving the real agent on `guest`.
/// Its "disk" is the file `disk` in its root, which a save copies.
struct Machine {
    generation: u64,
    host: Option<UnixStream>,
    guest: UnixStream,
    session: Option<std::thread::JoinHandle<()>>,
    /// Its agent was killed: the next `agent` call finds a new one (as
    /// systemd starts a VM's agent again, or an engine a new `exec`).
    respawn: bool,
}

impl Machine {
    fn end(&self) {
        let _ = self.guest.shutdown(std::net::Shutdown::Both);
    }
}

#[derive(Default)]
pub struct FakeState {
    quirks: BTreeMap<String, Quirk>,
    machines: BTreeMap<String, Machine>,
    calls: Vec<String>,
    /// Whether slow starts may go on.
    released: bool,
    /// `faults_changed` fails while this is set.
    refuse_faults: bool,
    /// Whether it can save and resume machines (cluster snapshots).
    saves: bool,
    /// Its save fails before it ends any agent session.
    pub save_fails_early: bool,
}

struct Fake {
    caps: Caps,
    root: PathBuf,
    events: Arc<dyn Events>,
    state: Arc<(Mutex<FakeState>, Condvar)>,
}

impl std::fmt::Debug for Fake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fake")
    }
}

/// The test's handle on its fake backend.
#[derive(Clone)]
pub struct FakeHandle {
    pub state: Arc<(Mutex<FakeState>, Condvar)>,
    events: Arc<Mutex<Option<Arc<dyn Events>>>>,
}

impl FakeHandle {
    pub fn calls(&self) -> Vec<String> {
        lock(&self.state.0).calls.clone()
    }
    pub fn running(&self) -> Vec<String> {
        lock(&self.state.0).machines.keys().cloned().collect()
    }
    pub fn release(&self) {
        lock(&self.state.0).released = true;
        self.state.1.notify_all();
    }
    pub fn allow_saves(&self) {
        lock(&self.state.0).saves = true;
    }
    pub fn refuse_faults(&self, refuse: bool) {
        lock(&self.state.0).refuse_faults = refuse;
    }
    /// The guest halts by itself (as after `poweroff` typed on its
    /// console).
    pub fn halt(&self, node: &str) {
        let machine = lock(&self.state.0).machines.remove(node);
        let machine = machine.expect("the node runs");
        machine.end();
        let events = lock(&self.events).clone().expect("opened");
        events.exited(node, machine.generation, "halted");
    }
    /// The node's machine is killed from outside (its QEMU got SIGKILL):
    /// gone at once, its exit reported. False when it did not run.
    pub fn kill_machine(&self, node: &str) -> bool {
        let machine = lock(&self.state.0).machines.remove(node);
        let Some(machine) = machine else { return false };
        machine.end();
        let events = lock(&self.events).clone().expect("opened");
        events.exited(node, machine.generation, "killed (signal 9)");
        true
    }
    /// The agent inside the node is killed: its end of the channel
    /// closes, the machine runs on, and a new agent answers the next
    /// channel. False when it did not run.
    pub fn kill_agent(&self, node: &str) -> bool {
        match lock(&self.state.0).machines.get_mut(node) {
            Some(machine) => {
                machine.end();
                machine.respawn = true;
                true
            }
            None => false,
        }
    }
    /// An exit report of an older boot arrives late.
    pub fn report_exit(&self, node: &str, generation: u64) {
        let events = lock(&self.events).clone().expect("opened");
        events.exited(node, generation, "late report");
    }
}

impl Fake {
    /// A machine of `node` runs: the agent serves a new channel.
    fn run_machine(&self, node: &str, generation: u64) -> Result<(), BackendError> {
        let (host, guest) = UnixStream::pair().map_err(BackendError::failed)?;
        let root = self.root.join(node);
        // What activation reads under its root prefix: the owner of files.
        std::fs::create_dir_all(root.join("etc")).map_err(BackendError::failed)?;
        for (file, line) in [
            ("passwd", "root:x:0:0::/root:/bin/sh\n"),
            ("group", "root:x:0:\n"),
        ] {
            std::fs::write(root.join("etc").join(file), line).map_err(BackendError::failed)?;
        }
        let agent = Arc::new(testbed_agent::Agent::new(root));
        let (reader, writer) = (
            guest.try_clone().map_err(BackendError::failed)?,
            guest.try_clone().map_err(BackendError::failed)?,
        );
        let session = std::thread::spawn(move || {
            testbed_agent::session::serve(&agent, reader, writer);
        });
        lock(&self.state.0).machines.insert(
            node.to_owned(),
            Machine {
                generation,
                host: Some(host),
                guest,
                session: Some(session),
                respawn: false,
            },
        );
        Ok(())
    }

    fn disk(&self, node: &str) -> PathBuf {
        self.root.join(node).join("disk")
    }

    fn record(&self, call: String) {
        lock(&self.state.0).calls.push(call);
    }
    fn quirk(&self, node: &str) -> Quirk {
        lock(&self.state.0)
            .quirks
            .get(node)
            .copied()
            .unwrap_or_default()
    }
    /// Ends a machine and reports it from another thread, as a real
    /// backend's watcher does.
    fn end_and_report(&self, node: &str) {
        let machine = lock(&self.state.0).machines.remove(node);
        if let Some(machine) = machine {
            machine.end();
            let events = Arc::clone(&self.events);
            let node = node.to_owned();
            std::thread::spawn(move || events.exited(&node, machine.generation, "ended"));
        }
    }
}

impl Backend for Fake {
    fn caps(&self) -> &Caps {
        &self.caps
    }

    fn start(&self, node: &NodeSpec, generation: u64) -> Result<Started, BackendError> {
        self.record(format!("start {} {generation}", node.name));
        match self.quirk(&node.name) {
            Quirk::StartFails => {
                return Err(BackendError::Failed("no such machine".to_owned()));
            }
            Quirk::SlowStart => {
                let (state, cv) = &*self.state;
                let mut st = lock(state);
                while !st.released {
                    st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            }
            _ => {}
        }
        self.run_machine(&node.name, generation)?;
        Ok(Started::booted(None))
    }

    fn agent(&self, node: &NodeSpec) -> Result<Channel, BackendError> {
        if self.quirk(&node.name) == Quirk::NeverAnswers {
            return Err(BackendError::NotYet("no agent yet".to_owned()));
        }
        let respawn = lock(&self.state.0)
            .machines
            .get(&node.name)
            .map(|m| (m.respawn, m.generation));
        if let Some((true, generation)) = respawn {
            self.run_machine(&node.name, generation)?;
        }
        let host = lock(&self.state.0)
            .machines
            .get_mut(&node.name)
            .and_then(|m| m.host.take());
        match host {
            Some(stream) => Channel::socket(stream),
            None => Err(BackendError::NotYet("not running".to_owned())),
        }
    }

    fn clean_stop_command(&self, node: &str, reboot: bool) -> Option<Vec<String>> {
        // Never `systemctl`: this agent runs commands on the test's host.
        // The fake's watcher below ends the machine when the file appears.
        let path = self.root.join(format!(
            "{node}.{}",
            if reboot { "reboot" } else { "poweroff" }
        ));
        Some(vec![
            "touch".to_owned(),
            path.to_string_lossy().into_owned(),
        ])
    }

    fn stop(&self, node: &str, how: Stop) -> Result<(), BackendError> {
        self.record(format!("stop {node} {how:?}"));
        match how {
            Stop::PowerCut => {
                if let Some(m) = lock(&self.state.0).machines.remove(node) {
                    m.end();
                }
            }
            Stop::Hard => self.end_and_report(node),
        }
        Ok(())
    }

    fn freeze(&self, node: &str, frozen: bool) -> Result<(), BackendError> {
        self.record(format!("freeze {node} {frozen}"));
        Ok(())
    }

    fn clock_command(&self, node: &str, stamp: &str) -> Vec<String> {
        // Never `date -s`: this agent runs commands on the test's host.
        let flag = self.root.join(format!("{node}.clock"));
        vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("echo {stamp} > {}", flag.display()),
        ]
    }

    /// Ends the sessions (the supervisor's `quiesce`), waits until each
    /// agent saw it, copies each disk, and serves new channels.
    fn save(&self, nodes: &[String], dir: &Path, quiesce: &dyn Fn()) -> Result<(), BackendError> {
        if !lock(&self.state.0).saves {
            return Err(self.unsupported("save a cluster snapshot"));
        }
        self.record(format!("save {}", nodes.join(",")));
        if lock(&self.state.0).save_fails_early {
            return Err(BackendError::Failed("cannot reach a node's QMP".to_owned()));
        }
        quiesce();
        for node in nodes {
            let (session, generation) = {
                let mut st = lock(&self.state.0);
                let m = st
                    .machines
                    .get_mut(node)
                    .ok_or_else(|| BackendError::Failed(format!("{node} does not run")))?;
                (m.session.take(), m.generation)
            };
            if let Some(session) = session {
                let _ = session.join();
            }
            let disk = std::fs::read(self.disk(node)).unwrap_or_default();
            std::fs::write(dir.join(node), disk).map_err(BackendError::failed)?;
            self.run_machine(node, generation)?;
        }
        Ok(())
    }

    fn resume(
        &self,
        node: &NodeSpec,
        generation: u64,
        file: &Path,
    ) -> Result<Started, BackendError> {
        self.record(format!("resume {} {generation}", node.name));
        let disk = std::fs::read(file).map_err(BackendError::failed)?;
        std::fs::create_dir_all(self.root.join(&node.name)).map_err(BackendError::failed)?;
        std::fs::write(self.disk(&node.name), disk).map_err(BackendError::failed)?;
        self.run_machine(&node.name, generation)?;
        Ok(Started::booted(None))
    }

    fn faults_changed(&self) -> Result<(), BackendError> {
        self.record("faults".to_owned());
        if lock(&self.state.0).refuse_faults {
            return Err(BackendError::Failed("this fake cannot delay".to_owned()));
        }
        Ok(())
    }

    fn down(&self) -> Vec<String> {
        self.record("down".to_owned());
        let machines = std::mem::take(&mut lock(&self.state.0).machines);
        for m in machines.values() {
            m.end();
        }
        vec![format!("removed {} machines", machines.len())]
    }
}

/// Ends the machine of a node whose clean power-off command ran, unless
/// the node ignores it; one thread per fake, ending with the test.
fn watch_power_off(fake: &Arc<Fake>) {
    let weak = Arc::downgrade(fake);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(5));
        let Some(fake) = weak.upgrade() else { return };
        let names: Vec<String> = lock(&fake.state.0).machines.keys().cloned().collect();
        for node in names {
            for verb in ["poweroff", "reboot"] {
                let flag = fake.root.join(format!("{node}.{verb}"));
                if flag.exists() {
                    let _ = std::fs::remove_file(&flag);
                    if fake.quirk(&node) != Quirk::IgnoresPowerOff {
                        fake.end_and_report(&node);
                    }
                }
            }
        }
    });
}

/// A backend as the supervisor holds it: the shared fake behind a box.
struct Boxed(Arc<Fake>);

impl std::fmt::Debug for Boxed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Boxed")
    }
}

impl Backend for Boxed {
    fn caps(&self) -> &Caps {
        self.0.caps()
    }
    fn start(&self, node: &NodeSpec, generation: u64) -> Result<Started, BackendError> {
        self.0.start(node, generation)
    }
    fn agent(&self, node: &NodeSpec) -> Result<Channel, BackendError> {
        self.0.agent(node)
    }
    fn clean_stop_command(&self, node: &str, reboot: bool) -> Option<Vec<String>> {
        self.0.clean_stop_command(node, reboot)
    }
    fn stop(&self, node: &str, how: Stop) -> Result<(), BackendError> {
        self.0.stop(node, how)
    }
    fn freeze(&self, node: &str, frozen: bool) -> Result<(), BackendError> {
        self.0.freeze(node, frozen)
    }
    fn faults_changed(&self) -> Result<(), BackendError> {
        self.0.faults_changed()
    }
    fn clock_command(&self, node: &str, stamp: &str) -> Vec<String> {
        self.0.clock_command(node, stamp)
    }
    fn save(&self, nodes: &[String], dir: &Path, quiesce: &dyn Fn()) -> Result<(), BackendError> {
        self.0.save(nodes, dir, quiesce)
    }
    fn resume(
        &self,
        node: &NodeSpec,
        generation: u64,
        file: &Path,
    ) -> Result<Started, BackendError> {
        self.0.resume(node, generation, file)
    }
    fn down(&self) -> Vec<String> {
        self.0.down()
    }
}

fn node(name: &str, ip: &str) -> NodeSpec {
    NodeSpec {
        name: name.to_owned(),
        role: "r".to_owned(),
        memory_mib: 64,
        cpus: 1,
        image: ImageFiles {
            key: "k".to_owned(),
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            rootfs: PathBuf::new(),
            archive: PathBuf::new(),
            cmdline: String::new(),
        },
        nics: vec![NicSpec {
            network: "lan".to_owned(),
            mac: "52:54:00:00:00:01".to_owned(),
            ip: ip.to_owned(),
            prefix: 24,
        }],
        activation: Activation {
            hostname: name.to_owned(),
            interfaces: Vec::new(),
            hosts: format!("{ip} {name}\n"),
            files: Vec::new(),
            secrets: Vec::new(),
            ssh: None,
            services: Vec::new(),
            service_timeout_ms: 1000,
            identity: None,
        },
    }
}

/// The spec of the fake's cluster: nodes `a`, `b` and `c` on one network,
/// its composition and saved snapshots under `dir`, a boot timeout of
/// `boot`.
pub fn spec(dir: &Path, boot: Duration) -> ClusterSpec {
    ClusterSpec {
        cluster: "fake".to_owned(),
        composition: dir.join("testbed.toml"),
        backend: BackendSpec::Qemu,
        accel: Accel::Tcg,
        boot_timeout_ms: boot.as_millis() as u64,
        activation_timeout_ms: 5000,
        seed: 1,
        snapshots: None,
        saved: Some(dir.join("saved")),
        resume: None,
        networks: vec![NetworkSpec {
            name: "lan".to_owned(),
            subnet: "10.9.0.0/24".to_owned(),
        }],
        nodes: vec![
            node("a", "10.9.0.1"),
            node("b", "10.9.0.2"),
            node("c", "10.9.0.3"),
        ],
    }
}

/// A running test cluster: its supervisor, its fake, its folder.
pub struct Cluster {
    pub sup: Supervisor,
    pub fake: FakeHandle,
    pub dir: StateDir,
    pub log: Arc<Mutex<Vec<String>>>,
    pub _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Boots `a`, `b` and `c` on the fake, with `quirks`, and a boot
    /// timeout of `boot`.
    pub fn start(quirks: &[(&str, Quirk)], freeze: bool, boot: Duration) -> Cluster {
        Cluster::start_in(tempfile::tempdir().unwrap(), quirks, freeze, boot)
    }

    /// [`Cluster::start`] in the folder `tmp` (its state directory is
    /// `state` there: another `up` of the same cluster after a `down`).
    pub fn start_in(
        tmp: tempfile::TempDir,
        quirks: &[(&str, Quirk)],
        freeze: bool,
        boot: Duration,
    ) -> Cluster {
        let dir = StateDir::at(tmp.path().join("state"));
        dir.create().unwrap();
        std::fs::create_dir_all(dir.ssh_dir()).unwrap();
        std::fs::write(dir.ssh_dir().join("id_ed25519"), "the cluster's key").unwrap();
        let spec = spec(tmp.path(), boot);
        let state = Arc::new((Mutex::new(FakeState::default()), Condvar::new()));
        for (n, q) in quirks {
            lock(&state.0).quirks.insert((*n).to_owned(), *q);
        }
        let handle = FakeHandle {
            state: Arc::clone(&state),
            events: Arc::new(Mutex::new(None)),
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let logger: Log = Arc::new(move |line: &str| lock(&sink).push(line.to_owned()));
        let root = tmp.path().join("guests");
        let events_slot = Arc::clone(&handle.events);
        let names: Vec<String> = spec.nodes.iter().map(|n| n.name.clone()).collect();
        let sup = Supervisor::start(spec, &dir, logger, move |events| {
            *lock(&events_slot) = Some(Arc::clone(&events));
            let fake = Arc::new(Fake {
                caps: Caps {
                    name: "fake".to_owned(),
                    accel: false,
                    freeze,
                    console: false,
                    agent_poll: Duration::from_millis(2),
                },
                root,
                events,
                state,
            });
            watch_power_off(&fake);
            Ok(Opened {
                backend: Box::new(Boxed(fake)),
                switch: Arc::new(Mutex::new(Switch::fault_table(&names, 1).unwrap())),
            })
        })
        .unwrap();
        Cluster {
            sup,
            fake: handle,
            dir,
            log,
            _tmp: tmp,
        }
    }

    pub fn ready(quirks: &[(&str, Quirk)]) -> Cluster {
        let c = Cluster::start(quirks, true, SETTLE);
        for n in ["a", "b", "c"] {
            c.wait(n, NodeState::Ready);
        }
        c
    }

    pub fn wait(&self, node: &str, state: NodeState) -> NodeStatus {
        self.sup
            .wait_node(node, SETTLE, |s| s.state == state)
            .unwrap_or_else(|| {
                panic!(
                    "{node} did not become {state}: {:?}\nlog:\n{}",
                    self.sup.node(node),
                    lock(&self.log).join("\n")
                )
            })
    }

    pub fn starts(&self, node: &str) -> usize {
        let prefix = format!("start {node} ");
        self.fake
            .calls()
            .iter()
            .filter(|c| c.starts_with(&prefix))
            .count()
    }

    pub fn run(&self, node: &str, argv: &[&str]) -> String {
        let out = self
            .sup
            .client(node)
            .unwrap()
            .exec_output(ExecRequest::argv(argv.iter().copied()))
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
