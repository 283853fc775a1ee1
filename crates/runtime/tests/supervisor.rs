//! The supervisor's state machine against a fake backend: no VM, no
//! container, milliseconds per test.
//!
//! The fake ([`Fake`]) implements the public `Backend` trait from outside
//! the crate, as a new backend would. Its "machines" run the real guest
//! agent (`testbed_agent::session::serve`, under a temporary root prefix,
//! so activation writes files there and changes nothing on the host) on one
//! end of a socket pair; the supervisor gets the other end. It records every
//! call, and each node can be told to misbehave: fail to start, never
//! answer, ignore a clean power-off, take a while to start.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use testbed_proto::{Activation, ExecRequest};
use testbed_runtime::accel::Accel;
use testbed_runtime::api::{ApiClient, Fault, NodeState, NodeStatus, PowerAction, Reply, Request};
use testbed_runtime::backend::{
    Backend, BackendError, Caps, Channel, Events, Opened, Started, Stop,
};
use testbed_runtime::spec::{BackendSpec, ClusterSpec, ImageFiles, NetworkSpec, NicSpec, NodeSpec};
use testbed_runtime::state::StateDir;
use testbed_runtime::supervisor::{Log, Supervisor};
use testbed_runtime::switch::{LinkChange, Switch};

/// Generous bounds: a test that needs them has hung. Every wait here ends
/// in milliseconds when things work.
const SETTLE: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a node of the fake misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Quirk {
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
}

impl Machine {
    fn end(&self) {
        let _ = self.guest.shutdown(std::net::Shutdown::Both);
    }
}

#[derive(Default)]
struct FakeState {
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
    save_fails_early: bool,
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
struct FakeHandle {
    state: Arc<(Mutex<FakeState>, Condvar)>,
    events: Arc<Mutex<Option<Arc<dyn Events>>>>,
}

impl FakeHandle {
    fn calls(&self) -> Vec<String> {
        lock(&self.state.0).calls.clone()
    }
    fn running(&self) -> Vec<String> {
        lock(&self.state.0).machines.keys().cloned().collect()
    }
    fn release(&self) {
        lock(&self.state.0).released = true;
        self.state.1.notify_all();
    }
    fn allow_saves(&self) {
        lock(&self.state.0).saves = true;
    }
    fn refuse_faults(&self, refuse: bool) {
        lock(&self.state.0).refuse_faults = refuse;
    }
    /// The guest halts by itself (as after `poweroff` typed on its
    /// console).
    fn halt(&self, node: &str) {
        let machine = lock(&self.state.0).machines.remove(node);
        let machine = machine.expect("the node runs");
        machine.end();
        let events = lock(&self.events).clone().expect("opened");
        events.exited(node, machine.generation, "halted");
    }
    /// An exit report of an older boot arrives late.
    fn report_exit(&self, node: &str, generation: u64) {
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

/// A running test cluster: its supervisor, its fake, its folder.
struct Cluster {
    sup: Supervisor,
    fake: FakeHandle,
    dir: StateDir,
    log: Arc<Mutex<Vec<String>>>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Boots `a`, `b` and `c` on the fake, with `quirks`, and a boot
    /// timeout of `boot`.
    fn start(quirks: &[(&str, Quirk)], freeze: bool, boot: Duration) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path().join("state"));
        dir.create().unwrap();
        std::fs::create_dir_all(dir.ssh_dir()).unwrap();
        std::fs::write(dir.ssh_dir().join("id_ed25519"), "the cluster's key").unwrap();
        let spec = ClusterSpec {
            cluster: "fake".to_owned(),
            composition: tmp.path().join("testbed.toml"),
            backend: BackendSpec::Qemu,
            accel: Accel::Tcg,
            boot_timeout_ms: boot.as_millis() as u64,
            activation_timeout_ms: 5000,
            seed: 1,
            snapshots: None,
            saved: Some(tmp.path().join("saved")),
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
        };
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

    fn ready(quirks: &[(&str, Quirk)]) -> Cluster {
        let c = Cluster::start(quirks, true, SETTLE);
        for n in ["a", "b", "c"] {
            c.wait(n, NodeState::Ready);
        }
        c
    }

    fn wait(&self, node: &str, state: NodeState) -> NodeStatus {
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

    fn starts(&self, node: &str) -> usize {
        let prefix = format!("start {node} ");
        self.fake
            .calls()
            .iter()
            .filter(|c| c.starts_with(&prefix))
            .count()
    }

    fn run(&self, node: &str, argv: &[&str]) -> String {
        let out = self
            .sup
            .client(node)
            .unwrap()
            .exec_output(ExecRequest::argv(argv.iter().copied()))
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn activated_hostname(root: &Path, node: &str) -> String {
    std::fs::read_to_string(root.join(node).join("etc/hostname")).unwrap_or_default()
}

#[test]
fn every_node_boots_activates_and_answers() {
    let c = Cluster::ready(&[]);
    let status = c.sup.status();
    assert_eq!(status.backend, "fake");
    assert_eq!(status.accel, "none", "the fake emulates nothing");
    assert!(status.nodes.iter().all(|n| n.state == NodeState::Ready));
    assert_eq!(c.run("b", &["echo", "hi"]), "hi\n");
    // Activation reached the agent: its root prefix holds the identity.
    let guests = c._tmp.path().join("guests");
    assert_eq!(activated_hostname(&guests, "c").trim(), "c");
    for n in ["a", "b", "c"] {
        assert_eq!(c.starts(n), 1);
    }
}

#[test]
fn a_crash_stops_the_node_and_start_boots_a_new_generation() {
    let c = Cluster::ready(&[]);
    c.sup.power("a", PowerAction::Crash).unwrap();
    let st = c.wait("a", NodeState::Stopped);
    assert_eq!(st.message.as_deref(), Some("crashed (power cut)"));
    assert!(c.fake.calls().contains(&"stop a PowerCut".to_owned()));
    // Its agent is gone; the others are untouched.
    let err = c.sup.client("a").unwrap_err();
    assert!(err.message.contains("node a is stopped"), "{err}");
    assert_eq!(c.sup.node("b").unwrap().state, NodeState::Ready);
    // A second crash is refused, a start boots it again.
    let err = c.sup.power("a", PowerAction::Crash).unwrap_err();
    assert!(err.message.contains("not running"), "{err}");
    c.sup.power("a", PowerAction::Start).unwrap();
    c.wait("a", NodeState::Ready);
    assert_eq!(c.starts("a"), 2);
    assert!(c.fake.calls().contains(&"start a 2".to_owned()));
    // A late exit report of the first boot changes nothing.
    c.fake.report_exit("a", 1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
    let err = c.sup.power("a", PowerAction::Start).unwrap_err();
    assert!(err.message.contains("already running"), "{err}");
}

#[test]
fn a_guest_that_halts_by_itself_is_stopped_not_failed() {
    let c = Cluster::ready(&[]);
    c.fake.halt("b");
    let st = c.wait("b", NodeState::Stopped);
    let message = st.message.unwrap_or_default();
    assert!(message.contains("stopped by itself (halted)"), "{message}");
}

#[test]
fn reboot_is_clean_through_the_agent_and_activates_again() {
    let c = Cluster::ready(&[]);
    c.sup.power("c", PowerAction::Reboot).unwrap();
    c.wait("c", NodeState::Ready);
    assert_eq!(c.starts("c"), 2);
    // Clean: the machine ended on its own, never stopped hard.
    assert!(!c.fake.calls().iter().any(|call| call.starts_with("stop c")));
    c.sup.power("c", PowerAction::Shutdown).unwrap();
    let st = c.wait("c", NodeState::Stopped);
    assert_eq!(st.message.as_deref(), Some("shut down"));
}

#[test]
fn a_node_that_ignores_power_off_is_stopped_hard_after_its_grace() {
    // The grace is the boot timeout; 300 ms here.
    let c = Cluster::start(
        &[("b", Quirk::IgnoresPowerOff)],
        true,
        Duration::from_millis(300),
    );
    c.wait("b", NodeState::Ready);
    let start = Instant::now();
    c.sup.power("b", PowerAction::Shutdown).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(c.fake.calls().contains(&"stop b Hard".to_owned()));
    assert_eq!(c.sup.node("b").unwrap().state, NodeState::Stopped);
    assert!(lock(&c.log)
        .iter()
        .any(|l| l.contains("b: no clean poweroff")));
}

#[test]
fn a_node_that_fails_to_start_or_to_answer_fails_alone_with_the_reason() {
    let c = Cluster::start(
        &[("a", Quirk::StartFails), ("b", Quirk::NeverAnswers)],
        true,
        Duration::from_millis(200),
    );
    let a = c.wait("a", NodeState::Failed);
    assert!(a.message.unwrap().contains("no such machine"));
    let b = c.wait("b", NodeState::Failed);
    let message = b.message.unwrap();
    assert!(message.contains("no agent yet"), "{message}");
    c.wait("c", NodeState::Ready);
    // The API's watch settles with the failures in it.
    let mut seen = Vec::new();
    assert!(c.sup.watch(&mut |reply| {
        seen.push(reply);
        true
    }));
    match seen.last() {
        Some(Reply::Settled(status)) => {
            let states: Vec<NodeState> = status.nodes.iter().map(|n| n.state).collect();
            assert_eq!(
                states,
                [NodeState::Failed, NodeState::Failed, NodeState::Ready]
            );
        }
        other => panic!("no settled status: {other:?}"),
    }
}

#[test]
fn down_in_the_middle_of_a_boot_waits_for_it_and_leaves_nothing() {
    let c = Cluster::start(&[("b", Quirk::SlowStart)], true, SETTLE);
    c.wait("a", NodeState::Ready);
    // b's start is under way inside the backend.
    while !c.fake.calls().iter().any(|call| call == "start b 1") {
        std::thread::sleep(Duration::from_millis(1));
    }
    let sup = c.sup.clone();
    let down = std::thread::spawn(move || sup.down());
    std::thread::sleep(Duration::from_millis(50));
    assert!(!down.is_finished(), "down waits for the start under way");
    c.fake.release();
    let report = down.join().unwrap();
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(c.fake.running().is_empty(), "{:?}", c.fake.running());
    assert!(!c.dir.exists());
    let calls = c.fake.calls();
    let down_at = calls.iter().position(|call| call == "down").unwrap();
    assert!(
        !calls[down_at..]
            .iter()
            .any(|call| call.starts_with("start")),
        "{calls:?}"
    );
    // Nothing starts any more.
    let err = c.sup.power("a", PowerAction::Start).unwrap_err();
    assert!(err.message.contains("going down"), "{err}");
    assert!(c
        .sup
        .status()
        .nodes
        .iter()
        .all(|n| n.state == NodeState::Stopped));
}

#[test]
fn a_fault_the_backend_cannot_apply_is_taken_back() {
    let c = Cluster::ready(&[]);
    c.sup
        .fault(Fault::Partition {
            groups: vec![vec!["a".into()], vec!["b".into(), "c".into()]],
        })
        .unwrap();
    c.fake.refuse_faults(true);
    let before = c.sup.history().len();
    let err = c
        .sup
        .fault(Fault::Link {
            a: "a".into(),
            b: "b".into(),
            change: LinkChange {
                delay_ms: Some(50.0),
                ..LinkChange::default()
            },
        })
        .unwrap_err();
    assert!(err.message.contains("cannot delay"), "{err}");
    c.fake.refuse_faults(false);
    // The link's rule is what it was: a second, accepted change starts from
    // no delay.
    let rule = c
        .sup
        .fault(Fault::Link {
            a: "a".into(),
            b: "b".into(),
            change: LinkChange {
                loss: Some(0.5),
                ..LinkChange::default()
            },
        })
        .unwrap()
        .expect("a link change answers with the rule");
    assert_eq!(rule.delay, Duration::ZERO, "{rule:?}");
    assert_eq!(rule.loss, 0.5);
    assert!(c.sup.history().len() > before);
    c.sup.fault(Fault::Heal).unwrap();
}

#[test]
fn pause_where_the_backend_cannot_freeze_is_unsupported_not_failed() {
    let c = Cluster::start(&[], false, SETTLE);
    c.wait("a", NodeState::Ready);
    let err = c.sup.power("a", PowerAction::Pause).unwrap_err();
    assert!(err.unsupported, "{err:?}");
    assert!(
        err.message.contains("the fake backend cannot pause a node"),
        "{err}"
    );
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
    assert!(!c.fake.calls().iter().any(|call| call.starts_with("freeze")));
}

#[test]
fn pause_and_resume_where_it_can() {
    let c = Cluster::ready(&[]);
    c.sup.power("a", PowerAction::Pause).unwrap();
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Paused);
    c.sup.power("a", PowerAction::Resume).unwrap();
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
    let calls = c.fake.calls();
    assert!(calls.contains(&"freeze a true".to_owned()));
    assert!(calls.contains(&"freeze a false".to_owned()));
}

#[test]
fn the_socket_transport_serves_the_same_requests_and_down_returns() {
    let c = Cluster::ready(&[]);
    let socket = c.dir.api_socket();
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let sup = c.sup.clone();
    let server = std::thread::spawn(move || sup.serve(listener));
    let mut client = ApiClient::connect(&socket).unwrap();
    match client.call(&Request::Status).unwrap() {
        Reply::Status(s) => assert_eq!(s.nodes.len(), 3),
        other => panic!("{other:?}"),
    }
    let reply = client
        .call(&Request::Power {
            node: "zz".into(),
            action: PowerAction::Crash,
        })
        .unwrap();
    assert!(
        matches!(&reply, Reply::Error { message, .. } if message.contains("no node zz")),
        "{reply:?}"
    );
    let mut other = ApiClient::connect(&socket).unwrap();
    assert_eq!(other.call(&Request::Down).unwrap(), Reply::Ok);
    // `serve` returns instead of ending the process.
    server.join().unwrap().unwrap();
    assert!(!c.dir.exists());
    assert!(c.fake.running().is_empty());
}

#[test]
fn input_sent_with_an_exec_request_reaches_the_command() {
    // A client writes the request, its whole input and the end of input at
    // once (a short `exec -i` does): the supervisor's reader of the request
    // then holds the input lines already, and the command must get them.
    let c = Cluster::ready(&[]);
    let socket = c.dir.api_socket();
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let sup = c.sup.clone();
    let server = std::thread::spawn(move || sup.serve(listener));
    let mut exec = ExecRequest::argv(["tr", "a-z", "A-Z"]);
    exec.stdin = true;
    let mut burst = Vec::new();
    testbed_runtime::api::write_line(
        &mut burst,
        &Request::Exec {
            node: "a".into(),
            exec,
        },
    )
    .unwrap();
    let input = testbed_runtime::api::Input::Stdin {
        data: b"through stdin\n".to_vec(),
    };
    testbed_runtime::api::write_line(&mut burst, &input).unwrap();
    testbed_runtime::api::write_line(&mut burst, &testbed_runtime::api::Input::Eof).unwrap();
    let mut conn = UnixStream::connect(&socket).unwrap();
    conn.set_read_timeout(Some(SETTLE)).unwrap();
    std::io::Write::write_all(&mut conn, &burst).unwrap();
    let mut replies = std::io::BufReader::new(conn);
    let mut stdout = Vec::new();
    loop {
        let reply: Reply = testbed_runtime::api::read_line(&mut replies)
            .expect("a reply within the bound (the command waited for its input)")
            .expect("a reply before the end");
        match reply {
            Reply::Stdout { data } => stdout.extend(data),
            Reply::Exited { status } => {
                assert_eq!(status.code, Some(0), "{status:?}");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(String::from_utf8_lossy(&stdout), "THROUGH STDIN\n");
    let mut other = ApiClient::connect(&socket).unwrap();
    assert_eq!(other.call(&Request::Down).unwrap(), Reply::Ok);
    server.join().unwrap().unwrap();
}

/// The file a node's "disk" is in the fake (its root's `disk`).
fn disk(c: &Cluster, node: &str) -> PathBuf {
    c._tmp.path().join("guests").join(node).join("disk")
}

#[test]
fn a_saved_cluster_comes_back_with_its_disks_faults_and_stopped_nodes() {
    let c = Cluster::ready(&[]);
    c.fake.allow_saves();
    let write = |node: &str, text: &str| {
        let path = disk(&c, node);
        c.run(
            node,
            &["sh", "-c", &format!("echo {text} > {}", path.display())],
        );
    };
    write("a", "one");
    c.sup
        .fault(Fault::Partition {
            groups: vec![vec!["a".to_owned()], vec!["b".to_owned()]],
        })
        .unwrap();
    c.sup.power("c", PowerAction::Crash).unwrap();
    c.wait("c", NodeState::Stopped);

    let info = c.sup.save("s1").unwrap();
    assert_eq!(info.name, "s1");
    let running: Vec<(&str, bool)> = info
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.running))
        .collect();
    assert_eq!(running, [("a", true), ("b", true), ("c", false)]);
    assert!(c.fake.calls().contains(&"save a,b".to_owned()));
    // Saving changed nothing: the nodes answer at once, clocks were set.
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
    assert_eq!(
        c.run("a", &["cat", &disk(&c, "a").to_string_lossy()]),
        "one\n"
    );
    assert!(c._tmp.path().join("guests/a.clock").exists());
    let folder = c._tmp.path().join("saved/s1");
    let mode = std::fs::metadata(&folder).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077,
        0,
        "it holds secrets"
    );

    // Everything changes...
    write("a", "two");
    c.sup.fault(Fault::Heal).unwrap();
    c.sup.power("c", PowerAction::Start).unwrap();
    c.wait("c", NodeState::Ready);
    let _ = std::fs::remove_file(c._tmp.path().join("guests/b.clock"));

    // ...and comes back.
    let restored = c.sup.restore("s1").unwrap();
    assert_eq!(restored.name, "s1");
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
    assert_eq!(
        c.run("a", &["cat", &disk(&c, "a").to_string_lossy()]),
        "one\n"
    );
    let st = c.sup.node("c").unwrap();
    assert_eq!(st.state, NodeState::Stopped);
    assert!(
        st.message
            .unwrap_or_default()
            .contains("stopped when snapshot s1 was saved"),
        "c stays stopped"
    );
    assert!(c.fake.running().iter().all(|n| n != "c"));
    let switch_says = c.sup.history().last().map(|e| e.change.clone());
    assert_eq!(switch_says.as_deref(), Some("restore snapshot s1"));
    let calls = c.fake.calls();
    assert!(
        calls.iter().any(|call| call.starts_with("resume a ")),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|call| call.starts_with("resume b ")),
        "{calls:?}"
    );
    assert!(c._tmp.path().join("guests/b.clock").exists(), "clock set");
    // The partition is in force again: the fault table says a and b are cut.
    let history: Vec<String> = c.sup.history().into_iter().map(|e| e.change).collect();
    assert!(history.contains(&"heal".to_owned()), "{history:?}");
    // A node may be started again after the restore, as after a crash.
    c.sup.power("c", PowerAction::Start).unwrap();
    c.wait("c", NodeState::Ready);
}

#[test]
fn what_cannot_be_saved_or_restored_is_refused_with_the_reason() {
    let c = Cluster::ready(&[]);
    // The fake cannot save yet: unsupported, and nothing changed.
    let e = c.sup.save("s1").unwrap_err();
    assert!(e.unsupported, "{e:?}");
    assert!(e.message.contains("cannot save a cluster snapshot"), "{e}");
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
    c.run("a", &["true"]);
    assert!(!c._tmp.path().join("saved/s1").exists());

    c.fake.allow_saves();
    // A save that fails before touching the agents leaves them connected.
    lock(&c.fake.state.0).save_fails_early = true;
    let e = c.sup.save("s0").unwrap_err();
    assert!(e.message.contains("cannot reach a node's QMP"), "{e}");
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
    assert!(c.sup.client("a").is_ok(), "a's session was not ended");
    c.run("a", &["true"]);
    let tmp = c._tmp.path().join("saved/.tmp");
    assert_eq!(std::fs::read_dir(&tmp).map(Iterator::count).unwrap_or(0), 0);
    assert!(
        !c._tmp.path().join("saved/s0").exists(),
        "nothing half-written"
    );
    lock(&c.fake.state.0).save_fails_early = false;
    let e = c.sup.save("../x").unwrap_err();
    assert!(e.message.contains("is not a snapshot name"), "{e}");
    let e = c.sup.restore("never").unwrap_err();
    assert!(e.message.contains("has no snapshot never"), "{e}");
    c.sup.power("b", PowerAction::Pause).unwrap();
    let e = c.sup.save("s1").unwrap_err();
    assert!(e.message.contains("b is paused"), "{e}");
    c.sup.power("b", PowerAction::Resume).unwrap();

    // Saved from another `up` (other keys in the guests): refused.
    c.sup.save("s1").unwrap();
    let spec_file = c._tmp.path().join("saved/s1/spec.json");
    let mut spec: ClusterSpec =
        serde_json::from_slice(&std::fs::read(&spec_file).unwrap()).unwrap();
    spec.nodes[0].activation.hosts.push_str("# another up\n");
    std::fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let e = c.sup.restore("s1").unwrap_err();
    assert!(e.message.contains("up --from s1"), "{e}");
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);

    // A truncated machine is found out before any node is touched.
    c.run(
        "a",
        &["sh", "-c", &format!("echo x > {}", disk(&c, "a").display())],
    );
    c.sup.save("s2").unwrap();
    std::fs::write(c._tmp.path().join("saved/s2/machines/a"), "").unwrap();
    let e = c.sup.restore("s2").unwrap_err();
    assert!(e.message.contains("unreadable"), "{e}");
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
}
