//! The QEMU backend: one QEMU process per node, children of one long-lived
//! *spawner* thread, so the VMs' parent-death signal fires exactly when that
//! thread ends (the supervisor's end, or this backend's). The switch carries
//! every frame over unix datagram sockets in the state directory.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testbed_proto::MacChange;

use super::{first_line, CheckLevel, HostCheck};
use super::{Backend, BackendError, Caps, Channel, Events, Opened, Restored, Started, Stop};
use crate::qemu::{self, NicConfig, Ram, VmConfig, VmProcess};
use crate::qmp::Qmp;
use crate::snapshot::{self, RoleSnapshot};
use crate::spec::{ClusterSpec, NodeSpec};
use crate::state::{self, StateDir};
use crate::switch::{self, PortSpec, Switch};

enum Cmd {
    Start {
        node: String,
        generation: u64,
        config: Box<VmConfig>,
        /// Whether its exit is reported; off while a restore may still
        /// fail (QEMU exits when it refuses the state, and the node then
        /// boots under the same generation).
        report: bool,
        reply: mpsc::Sender<Result<u32, String>>,
    },
    /// Report the exit of `node`'s QEMU from now on; false if it is gone.
    Report {
        node: String,
        reply: mpsc::Sender<bool>,
    },
    Kill {
        node: String,
        reply: mpsc::Sender<()>,
    },
    KillAll {
        reply: mpsc::Sender<()>,
    },
}

pub struct QemuBackend {
    caps: Caps,
    spec: ClusterSpec,
    dir: StateDir,
    spawner: Mutex<mpsc::Sender<Cmd>>,
    qemu_bin: PathBuf,
    events: Arc<dyn Events>,
    /// Node → the role snapshot it starts from (found or made in
    /// `prepare`); a node whose snapshot fails to restore is removed and
    /// boots cold from then on.
    snapshots: Mutex<BTreeMap<String, RoleSnapshot>>,
    /// Node → why its role's snapshot could not be made, for its first
    /// start's warning.
    unmade: Mutex<BTreeMap<String, String>>,
}

/// Finds QEMU, starts the switch with one unix-socket port per NIC, and
/// the spawner thread.
pub fn open(
    spec: &ClusterSpec,
    dir: &StateDir,
    events: Arc<dyn Events>,
) -> Result<Opened, BackendError> {
    let qemu_bin = qemu::find_qemu().map_err(BackendError::failed)?;
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
    let switch = Switch::start(&ports, spec.seed)
        .map_err(|e| BackendError::Failed(format!("cannot start the virtual switch: {e}")))?;
    let (tx, rx) = mpsc::channel();
    let thread_dir = dir.clone();
    let thread_bin = qemu_bin.clone();
    let thread_events = Arc::clone(&events);
    std::thread::Builder::new()
        .name("spawner".into())
        .spawn(move || spawner(&thread_dir, &thread_bin, &rx, &*thread_events))
        .map_err(BackendError::failed)?;
    Ok(Opened {
        backend: Box::new(QemuBackend {
            caps: Caps {
                name: "qemu".to_owned(),
                accel: true,
                freeze: true,
                console: true,
                agent_poll: Duration::from_millis(50),
            },
            spec: spec.clone(),
            dir: dir.clone(),
            spawner: Mutex::new(tx),
            qemu_bin,
            events,
            snapshots: Mutex::new(BTreeMap::new()),
            unmade: Mutex::new(BTreeMap::new()),
        }),
        switch: Arc::new(Mutex::new(switch)),
    })
}

impl QemuBackend {
    fn send(&self, cmd: Cmd) {
        let _ = super::lock(&self.spawner).send(cmd);
    }

    fn config(&self, spec: &NodeSpec) -> VmConfig {
        let node_dir = self.dir.node(&spec.name);
        VmConfig {
            name: spec.name.clone(),
            memory_mib: spec.memory_mib,
            cpus: spec.cpus,
            accel: self.spec.accel,
            kernel: spec.image.kernel.clone(),
            initramfs: spec.image.initramfs.clone(),
            rootfs: spec.image.rootfs.clone(),
            cmdline: spec.image.cmdline.clone(),
            nics: spec
                .nics
                .iter()
                .map(|nic| {
                    let (remote, local) =
                        switch::unix_paths(&self.dir.net_dir(), &spec.name, &nic.network);
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
            ram: Ram::default(),
            incoming: false,
        }
    }

    /// Spawns `config` on the spawner thread; its pid.
    fn spawn(
        &self,
        node: &str,
        generation: u64,
        config: VmConfig,
        report: bool,
    ) -> Result<u32, BackendError> {
        let (tx, rx) = mpsc::channel();
        self.send(Cmd::Start {
            node: node.to_owned(),
            generation,
            config: Box::new(config),
            report,
            reply: tx,
        });
        match rx.recv() {
            Ok(Ok(pid)) => Ok(pid),
            Ok(Err(message)) => Err(BackendError::Failed(message)),
            Err(_) => Err(BackendError::Failed(
                "the QEMU spawner has ended".to_owned(),
            )),
        }
    }

    /// Starts `node` from `snapshot`: a QEMU waiting for the device state,
    /// which is then loaded over QMP. On failure the QEMU is killed.
    fn restore(
        &self,
        node: &NodeSpec,
        generation: u64,
        snapshot: &RoleSnapshot,
    ) -> Result<Started, String> {
        let config = snapshot::clone_config(&self.config(node), snapshot);
        snapshot.append_boot(&config.console_log);
        let started = std::time::Instant::now();
        let pid = self
            .spawn(&node.name, generation, config, false)
            .map_err(|e| e.to_string())?;
        self.load(&node.name, |qmp| snapshot::restore(qmp, snapshot))
            .inspect_err(|_| {
                // QEMU refused the state: the next `up` makes a new snapshot.
                snapshot.discard();
            })?;
        self.events.log(&format!(
            "{}: restored from snapshot {} in {:.2}s",
            node.name,
            &snapshot.meta.key[..12.min(snapshot.meta.key.len())],
            started.elapsed().as_secs_f64()
        ));
        let macs = snapshot
            .meta
            .macs
            .iter()
            .zip(&node.nics)
            .map(|(from, nic)| MacChange {
                from: from.clone(),
                to: nic.mac.clone(),
            })
            .collect();
        Ok(Started {
            pid: Some(pid),
            restored: Some(Restored {
                snapshot: snapshot.meta.key.chars().take(12).collect(),
                macs,
            }),
            warning: None,
        })
    }

    /// Makes the snapshot `key` from `node` (the `index`th being made at
    /// once, for its work folder); the warning its nodes get if it fails.
    fn make(
        &self,
        host: &snapshot::Host,
        root: &Path,
        key: &str,
        node: &NodeSpec,
        index: usize,
    ) -> Result<RoleSnapshot, String> {
        self.events.log(&format!(
            "making the snapshot of role {} ({}) from node {}",
            node.role,
            &key[..12.min(key.len())],
            node.name
        ));
        let config = self.config(node);
        let making = snapshot::Making {
            qemu_bin: &self.qemu_bin,
            host,
            image: &node.image.key,
            node: &config,
            root,
            work: &self.dir.path().join(format!("snap{index}")),
            boot_timeout: self.spec.boot_timeout(),
        };
        match snapshot::make(&making) {
            Ok(made) => {
                self.events.log(&format!(
                    "made the snapshot of role {} in {:.1}s",
                    node.role,
                    made.meta.made_in_ms as f64 / 1000.0
                ));
                Ok(made)
            }
            Err(e) => {
                let warning = format!(
                    "the snapshot of role {} could not be made, so its nodes boot: {e}",
                    node.role
                );
                self.events.log(&format!("warning: {warning}"));
                Err(warning)
            }
        }
    }

    /// Loads the state into `node`'s QEMU (spawned waiting for it, its exit
    /// not reported yet) with `load` over QMP, and reports its exit from
    /// then on. On failure the QEMU is killed and the error ends with
    /// QEMU's own reason, if it gave one.
    fn load(
        &self,
        node: &str,
        load: impl FnOnce(&mut Qmp) -> Result<(), String>,
    ) -> Result<(), String> {
        let loaded = self
            .qmp(node)
            .map_err(|e| e.to_string())
            .and_then(|mut qmp| load(&mut qmp))
            .and_then(|()| {
                let (tx, rx) = mpsc::channel();
                self.send(Cmd::Report {
                    node: node.to_owned(),
                    reply: tx,
                });
                match rx.recv() {
                    Ok(true) => Ok(()),
                    _ => Err("QEMU ended right after the restore".to_owned()),
                }
            });
        loaded.map_err(|e| {
            let _ = self.stop(node, Stop::PowerCut);
            format!("{e}{}", self.qemu_said(node))
        })
    }

    /// QEMU's own reason, when it ended over the state it was given.
    fn qemu_said(&self, node: &str) -> String {
        let log = fs::read_to_string(self.dir.node(node).qemu_log()).unwrap_or_default();
        log.lines()
            .rev()
            .find(|l| l.contains("qemu-system") && !l.starts_with("testbed:"))
            .map(|l| format!(" (QEMU: {})", l.trim()))
            .unwrap_or_default()
    }

    fn qmp(&self, node: &str) -> Result<Qmp, BackendError> {
        Qmp::connect_node(
            node,
            &self.dir.node(node).qmp_socket(),
            Duration::from_secs(10),
        )
        .map_err(BackendError::failed)
    }
}

impl std::fmt::Debug for QemuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QemuBackend({})", self.spec.cluster)
    }
}

impl Backend for QemuBackend {
    fn caps(&self) -> &Caps {
        &self.caps
    }

    /// Finds, or makes, the snapshot of every role's VM when the spec asks
    /// for snapshots. A role whose snapshot cannot be made boots cold,
    /// with a warning in the log.
    fn prepare(&self) -> Result<(), BackendError> {
        let Some(root) = &self.spec.snapshots else {
            return Ok(());
        };
        let host = match snapshot::Host::probe(&self.qemu_bin, &self.spec.accel) {
            Ok(host) => host,
            Err(e) => {
                self.events
                    .log(&format!("warning: no snapshots, every node boots: {e}"));
                return Ok(());
            }
        };
        // Each node's key; one node per key to make the missing ones from.
        let mut keys: Vec<(String, &NodeSpec)> = Vec::new();
        let mut missing: BTreeMap<String, &NodeSpec> = BTreeMap::new();
        for node in &self.spec.nodes {
            let key = snapshot::key(&host, &node.image.key, &self.config(node));
            if RoleSnapshot::find(root, &key).is_none() {
                missing.entry(key.clone()).or_insert(node);
            }
            keys.push((key, node));
        }
        // The missing ones side by side, each template from a thread of its
        // own that lives as long as it (QEMU dies with its spawning thread).
        let made: BTreeMap<String, Result<RoleSnapshot, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = missing
                .iter()
                .enumerate()
                .map(|(i, (key, node))| {
                    let host = &host;
                    scope.spawn(move || (key.clone(), self.make(host, root, key, node, i)))
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (key, node) in keys {
            let found = match made.get(&key) {
                Some(result) => result.clone(),
                None => RoleSnapshot::find(root, &key)
                    .ok_or_else(|| format!("the snapshot {key} went away")),
            };
            match found {
                Ok(found) => {
                    super::lock(&self.snapshots).insert(node.name.clone(), found);
                }
                Err(warning) => {
                    super::lock(&self.unmade).insert(node.name.clone(), warning);
                }
            }
        }
        Ok(())
    }

    /// From the role's snapshot if there is one (falling back to a boot,
    /// with a warning, if it does not restore), else a boot.
    fn start(&self, node: &NodeSpec, generation: u64) -> Result<Started, BackendError> {
        let snapshot = super::lock(&self.snapshots).get(&node.name).cloned();
        let mut warning = super::lock(&self.unmade).remove(&node.name);
        if let Some(snapshot) = snapshot {
            match self.restore(node, generation, &snapshot) {
                Ok(started) => return Ok(started),
                Err(e) => {
                    super::lock(&self.snapshots).remove(&node.name);
                    let text = format!(
                        "the snapshot {} did not restore, so the node booted: {e}",
                        snapshot.dir.display()
                    );
                    self.events.log(&format!("warning: {}: {text}", node.name));
                    warning = Some(text);
                }
            }
        }
        let pid = self.spawn(&node.name, generation, self.config(node), true)?;
        Ok(Started {
            warning,
            ..Started::booted(Some(pid))
        })
    }

    fn agent(&self, node: &NodeSpec) -> Result<Channel, BackendError> {
        let path = self.dir.node(&node.name).agent_socket();
        match UnixStream::connect(&path) {
            Ok(stream) => Channel::socket(stream),
            Err(e) => Err(BackendError::NotYet(format!(
                "cannot connect to the agent socket {}: {e}",
                path.display()
            ))),
        }
    }

    fn stop(&self, node: &str, how: Stop) -> Result<(), BackendError> {
        match how {
            Stop::PowerCut => {
                let (tx, rx) = mpsc::channel();
                self.send(Cmd::Kill {
                    node: node.to_owned(),
                    reply: tx,
                });
                let _ = rx.recv();
                Ok(())
            }
            // The images have no power-button handler, so ACPI power-down
            // would do nothing: QMP `quit`, and the spawner sees the exit.
            Stop::Hard => self
                .qmp(node)?
                .quit()
                .map(drop)
                .map_err(BackendError::failed),
        }
    }

    fn freeze(&self, node: &str, frozen: bool) -> Result<(), BackendError> {
        let mut qmp = self.qmp(node)?;
        let done = if frozen { qmp.stop() } else { qmp.cont() };
        done.map(drop).map_err(BackendError::failed)
    }

    /// Every node's QMP first (the agent ports' changes are events on
    /// it), then the sessions end and each agent lets go, then all stop;
    /// then each saves its whole machine, side by side; then all run on.
    fn save(&self, nodes: &[String], dir: &Path, quiesce: &dyn Fn()) -> Result<(), BackendError> {
        let mut qmps = Vec::new();
        for node in nodes {
            qmps.push((node.clone(), self.qmp(node)?));
        }
        quiesce();
        let released: Result<(), String> = qmps.iter_mut().try_for_each(|(node, qmp)| {
            snapshot::wait_agent_released(qmp, node, Duration::from_secs(30))
        });
        let mut stopped = Ok(());
        if released.is_ok() {
            for (node, qmp) in &mut qmps {
                if let Err(e) = qmp.stop() {
                    stopped = Err(format!("{node}: cannot stop its CPUs: {e}"));
                    break;
                }
            }
        }
        let saved: Result<(), String> = released.and(stopped).and_then(|()| {
            super::side_by_side(qmps.iter_mut(), |(node, qmp)| {
                let file = dir.join(node.as_str());
                let memory = self.spec.node(node).map_or(1024, |n| n.memory_mib);
                snapshot::save_whole(qmp, &file, snapshot::whole_machine_timeout(memory))
                    .map_err(|e| format!("{node}: saving its machine failed: {e}"))
            })
        });
        // Whatever happened, the cluster runs on.
        let mut resumed = Ok(());
        for (node, qmp) in &mut qmps {
            if let Err(e) = qmp.cont() {
                resumed = Err(format!("{node}: cannot let its CPUs run again: {e}"));
            }
        }
        saved.and(resumed).map_err(BackendError::Failed)
    }

    fn resume(
        &self,
        node: &NodeSpec,
        generation: u64,
        file: &Path,
    ) -> Result<Started, BackendError> {
        let mut config = self.config(node);
        config.incoming = true;
        let snapshot = file
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        super::note_in_console(
            &config.console_log,
            &format!("this node was restored here from cluster snapshot {snapshot}"),
        );
        let started = std::time::Instant::now();
        let timeout = snapshot::whole_machine_timeout(node.memory_mib);
        let pid = self.spawn(&node.name, generation, config, false)?;
        self.load(&node.name, |qmp| snapshot::load(qmp, file, false, timeout))
            .map_err(|e| {
                BackendError::Failed(format!(
                    "its saved machine {} did not load: {e}",
                    file.display()
                ))
            })?;
        self.events.log(&format!(
            "{}: resumed from {} in {:.2}s",
            node.name,
            file.display(),
            started.elapsed().as_secs_f64()
        ));
        Ok(Started::booted(Some(pid)))
    }

    fn down(&self) -> Vec<String> {
        let (tx, rx) = mpsc::channel();
        self.send(Cmd::KillAll { reply: tx });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => Vec::new(),
            Err(_) => vec!["the QEMU spawner did not answer within 60s".to_owned()],
        }
    }
}

/// Owns every QEMU process. Spawning from this one thread, which lives as
/// long as the backend, is what makes the VMs die with it.
fn spawner(dir: &StateDir, qemu_bin: &Path, rx: &mpsc::Receiver<Cmd>, events: &dyn Events) {
    // Node → (generation, its QEMU, whether its exit is reported).
    let mut vms: BTreeMap<String, (u64, VmProcess, bool)> = BTreeMap::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Cmd::Start {
                node,
                generation,
                config,
                report,
                reply,
            }) => {
                if let Some((_, mut old, _)) = vms.remove(&node) {
                    let _ = old.kill();
                }
                let node_dir = dir.node(&node);
                // A stale socket from the previous boot would make QEMU
                // fail to bind.
                let stale: Vec<PathBuf> = [
                    node_dir.agent_socket(),
                    node_dir.console_socket(),
                    node_dir.qmp_socket(),
                ]
                .into_iter()
                .chain(config.nics.iter().map(|nic| nic.local.clone()))
                .collect();
                for path in stale {
                    let _ = fs::remove_file(path);
                }
                match VmProcess::spawn(qemu_bin, &config, &node_dir.qemu_log()) {
                    Ok(vm) => {
                        let pid = vm.pid();
                        let _ = state::write_atomic(
                            &node_dir.pid_file(),
                            pid.to_string().as_bytes(),
                            0o600,
                        );
                        vms.insert(node, (generation, vm, report));
                        let _ = reply.send(Ok(pid));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Ok(Cmd::Report { node, reply }) => {
                let present = vms.get_mut(&node).map(|(_, _, report)| *report = true);
                let _ = reply.send(present.is_some());
            }
            Ok(Cmd::Kill { node, reply }) => {
                if let Some((_, mut vm, _)) = vms.remove(&node) {
                    let _ = vm.kill();
                    let _ = fs::remove_file(dir.node(&node).pid_file());
                }
                let _ = reply.send(());
            }
            Ok(Cmd::KillAll { reply }) => {
                for (node, (_, mut vm, _)) in std::mem::take(&mut vms) {
                    let _ = vm.kill();
                    let _ = fs::remove_file(dir.node(&node).pid_file());
                }
                let _ = reply.send(());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                for (_, (_, mut vm, _)) in std::mem::take(&mut vms) {
                    let _ = vm.kill();
                }
                return;
            }
        }
        let exited: Vec<(String, u64, String, bool)> = vms
            .iter_mut()
            .filter_map(|(name, (generation, vm, report))| match vm.try_wait() {
                Ok(Some(status)) => Some((name.clone(), *generation, status.to_string(), *report)),
                _ => None,
            })
            .collect();
        for (name, generation, status, report) in exited {
            vms.remove(&name);
            let _ = fs::remove_file(dir.node(&name).pid_file());
            if report {
                events.exited(&name, generation, &format!("QEMU exited: {status}"));
            }
        }
    }
}

/// `doctor`'s check of this backend: QEMU found and answering.
pub fn host_check() -> HostCheck {
    let bin = match crate::qemu::find_qemu() {
        Ok(bin) => bin,
        Err(e) => {
            return HostCheck::new(
                "qemu",
                CheckLevel::Fail,
                e.to_string(),
                Some("run scripts/setup-host.sh, which installs qemu-system-x86"),
            )
        }
    };
    match Command::new(&bin).arg("--version").output() {
        Ok(out) if out.status.success() => HostCheck::new(
            "qemu",
            CheckLevel::Ok,
            format!("{} ({})", first_line(&out.stdout), bin.display()),
            None,
        ),
        Ok(out) => HostCheck::new(
            "qemu",
            CheckLevel::Fail,
            format!(
                "{} --version failed: {}",
                bin.display(),
                first_line(&out.stderr)
            ),
            Some("reinstall qemu-system-x86"),
        ),
        Err(e) => HostCheck::new(
            "qemu",
            CheckLevel::Fail,
            format!("cannot run {}: {e}", bin.display()),
            Some("reinstall qemu-system-x86"),
        ),
    }
}
