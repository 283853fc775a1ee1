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

use super::{first_line, CheckLevel, HostCheck};
use super::{Backend, BackendError, Caps, Channel, Events, Opened, Started, Stop};
use crate::qemu::{self, NicConfig, VmConfig, VmProcess};
use crate::qmp::Qmp;
use crate::spec::{ClusterSpec, NodeSpec};
use crate::state::{self, StateDir};
use crate::switch::{self, PortSpec, Switch};

enum Cmd {
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

pub struct QemuBackend {
    caps: Caps,
    spec: ClusterSpec,
    dir: StateDir,
    spawner: Mutex<mpsc::Sender<Cmd>>,
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
    std::thread::Builder::new()
        .name("spawner".into())
        .spawn(move || spawner(&thread_dir, &qemu_bin, &rx, &*events))
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
        }
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

    fn start(&self, node: &NodeSpec, generation: u64) -> Result<Started, BackendError> {
        let (tx, rx) = mpsc::channel();
        self.send(Cmd::Start {
            node: node.name.clone(),
            generation,
            config: Box::new(self.config(node)),
            reply: tx,
        });
        match rx.recv() {
            Ok(Ok(pid)) => Ok(Started { pid: Some(pid) }),
            Ok(Err(message)) => Err(BackendError::Failed(message)),
            Err(_) => Err(BackendError::Failed(
                "the QEMU spawner has ended".to_owned(),
            )),
        }
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
    let mut vms: BTreeMap<String, (u64, VmProcess)> = BTreeMap::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Cmd::Start {
                node,
                generation,
                config,
                reply,
            }) => {
                if let Some((_, mut old)) = vms.remove(&node) {
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
                        vms.insert(node, (generation, vm));
                        let _ = reply.send(Ok(pid));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Ok(Cmd::Kill { node, reply }) => {
                if let Some((_, mut vm)) = vms.remove(&node) {
                    let _ = vm.kill();
                    let _ = fs::remove_file(dir.node(&node).pid_file());
                }
                let _ = reply.send(());
            }
            Ok(Cmd::KillAll { reply }) => {
                for (node, (_, mut vm)) in std::mem::take(&mut vms) {
                    let _ = vm.kill();
                    let _ = fs::remove_file(dir.node(&node).pid_file());
                }
                let _ = reply.send(());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                for (_, (_, mut vm)) in std::mem::take(&mut vms) {
                    let _ = vm.kill();
                }
                return;
            }
        }
        let exited: Vec<(String, u64, String)> = vms
            .iter_mut()
            .filter_map(|(name, (generation, vm))| match vm.try_wait() {
                Ok(Some(status)) => Some((name.clone(), *generation, status.to_string())),
                _ => None,
            })
            .collect();
        for (name, generation, status) in exited {
            vms.remove(&name);
            let _ = fs::remove_file(dir.node(&name).pid_file());
            events.exited(&name, generation, &format!("QEMU exited: {status}"));
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
