//! The backends: what runs a cluster's nodes (QEMU processes, libvirt
//! domains, containers), behind one interface, and each backend's policy.
//!
//! The supervisor ([`crate::supervisor`]) knows node states, generations,
//! power transitions, waits, the fault table and the API; it never names a
//! backend. A backend knows how to make a node's machine run and stop, how
//! to reach its agent, and what it leaves on the host. Adding one means a
//! module here with a type implementing [`Backend`], an arm in [`open`] and
//! [`reap`] (the chooser), its docs, and an entry in the conformance suite
//! (`crates/testbed/tests/conformance.rs`).
//!
//! Contract, for every implementation:
//! - [`Backend::start`] makes one boot of a node and returns once its
//!   machine runs; the supervisor then polls [`Backend::agent`] until the
//!   channel opens (or the boot timeout).
//! - A machine that ends on its own (guest power-off, a crash from outside,
//!   [`Stop::Hard`]) is reported once through [`Events::exited`] with the
//!   generation of the boot it belonged to; reports of older generations are
//!   ignored by the supervisor, so a late report is harmless.
//! - [`Stop::PowerCut`] is instant and needs no report: the supervisor
//!   records the stop itself when it returns.
//! - [`Backend::down`] removes every machine and everything the backend made
//!   on the host for this cluster; no [`Backend::start`] runs during or
//!   after it (the supervisor guarantees that).
//! - An operation a backend cannot do is [`BackendError::Unsupported`],
//!   which clients show as such, never as a failure of the node.

pub mod container;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod qemu;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use crate::accel::Accel;
use crate::spec::{BackendSpec, ClusterSpec, NodeSpec};
use crate::state::StateDir;
use crate::switch::Switch;

/// How long a node of `backend` may take to boot (to its agent's hello) and
/// to activate each of its services, unless the user says otherwise.
/// Containers share the host's kernel; VMs under TCG emulate every
/// instruction, about ten times slower than KVM.
pub fn timeouts(backend: &BackendSpec, accel: Accel) -> Timeouts {
    let (boot, activation) = match (backend, accel) {
        (BackendSpec::Container { .. }, _) => (300, 300),
        (_, Accel::Kvm) => (120, 60),
        (_, Accel::Tcg) => (900, 300),
    };
    Timeouts {
        boot: Duration::from_secs(boot),
        activation: Duration::from_secs(activation),
    }
}

/// A backend's default time limits (see [`timeouts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub boot: Duration,
    pub activation: Duration,
}

/// Whether this build has the libvirt backend (the `libvirt` cargo
/// feature, on by default).
pub const HAS_LIBVIRT: bool = cfg!(feature = "libvirt");

#[derive(Debug, Error)]
pub enum BackendError {
    /// The backend cannot do this at all (not: it failed this time).
    #[error("the {backend} backend cannot {what}")]
    Unsupported { backend: String, what: String },
    /// The agent channel is not there yet (the machine is still booting);
    /// the supervisor asks again.
    #[error("{0}")]
    NotYet(String),
    #[error("{0}")]
    Failed(String),
}

impl BackendError {
    pub fn failed(e: impl std::fmt::Display) -> BackendError {
        BackendError::Failed(e.to_string())
    }
}

/// What a backend can do, and how the supervisor should treat it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    /// The name `status` shows (`qemu`, `libvirt`, `podman`, `docker`).
    pub name: String,
    /// Whether the accelerator applies (containers run on the host's
    /// kernel: nothing is emulated).
    pub accel: bool,
    /// Whether nodes can be frozen and thawed (`pause`, `resume`).
    pub freeze: bool,
    /// Whether each node has an interactive serial console: the socket
    /// `console.sock` in its folder of the state directory.
    pub console: bool,
    /// How often the supervisor asks for the agent channel while a node
    /// boots.
    pub agent_poll: Duration,
}

/// How [`Backend::stop`] stops a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Instant power loss: the machine is gone when `stop` returns.
    PowerCut,
    /// The machine did not stop cleanly in time: end it; its exit is
    /// reported through [`Events::exited`].
    Hard,
}

/// A node's machine runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Started {
    /// The host process `status` shows, if the machine is one on this host.
    pub pid: Option<u32>,
    /// Set when the machine was restored from a role's memory snapshot
    /// rather than booted: its activation then carries an `Identity`.
    pub restored: Option<Restored>,
    /// What the user should know about this start although it worked (a
    /// snapshot that could not be made or restored, so it booted).
    pub warning: Option<String>,
}

impl Started {
    /// A machine that boots.
    pub fn booted(pid: Option<u32>) -> Started {
        Started {
            pid,
            restored: None,
            warning: None,
        }
    }
}

/// What the node restored from a snapshot must change besides what every
/// clone changes (machine id, entropy, clock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// The snapshot's name for `status` (its key's first digits).
    pub snapshot: String,
    /// Its NICs' MACs in the snapshot, and the plan's.
    pub macs: Vec<testbed_proto::MacChange>,
}

/// The host end of a node's agent channel.
pub struct Channel {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
    /// Ends the channel, which wakes a reader blocked on it.
    pub close: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Channel")
    }
}

impl Channel {
    /// Both directions over one unix socket (a VM's virtio-serial port).
    pub fn socket(stream: std::os::unix::net::UnixStream) -> Result<Channel, BackendError> {
        let reader = stream.try_clone().map_err(BackendError::failed)?;
        let writer = stream.try_clone().map_err(BackendError::failed)?;
        Ok(Channel {
            reader: Box::new(reader),
            writer: Box::new(writer),
            close: Box::new(move || {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }),
        })
    }
}

/// What backends tell the supervisor, from their own threads.
pub trait Events: Send + Sync {
    /// The machine of boot `generation` of `node` ended (`status` says how).
    fn exited(&self, node: &str, generation: u64, status: &str);
    /// A line for the supervisor's log.
    fn log(&self, line: &str);
}

/// The fault table, shared between the supervisor (which changes it) and
/// the backend (which may have to apply it itself, as containers do).
pub type SharedSwitch = Arc<Mutex<Switch>>;

/// One running cluster's backend.
pub trait Backend: Send + Sync {
    fn caps(&self) -> &Caps;
    /// Work before the first boot that may take a while (importing images,
    /// uploading them to a host); the API already answers meanwhile.
    fn prepare(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Starts boot `generation` of `node`; returns once its machine runs.
    fn start(&self, node: &NodeSpec, generation: u64) -> Result<Started, BackendError>;
    /// The node's agent channel; [`BackendError::NotYet`] while it cannot
    /// be opened yet.
    fn agent(&self, node: &NodeSpec) -> Result<Channel, BackendError>;
    fn stop(&self, node: &str, how: Stop) -> Result<(), BackendError>;
    /// The command the node's agent runs to power the node off (`reboot`:
    /// to restart it) cleanly; its machine then ends on its own. A backend
    /// whose nodes must never power off (existing hosts) or that stops
    /// them itself returns `None`, and the supervisor uses [`Stop::Hard`].
    fn clean_stop_command(&self, node: &str, reboot: bool) -> Option<Vec<String>> {
        let _ = node;
        let verb = if reboot { "reboot" } else { "poweroff" };
        Some(vec![
            "systemctl".to_owned(),
            verb.to_owned(),
            "--no-block".to_owned(),
        ])
    }
    /// The command the node's agent runs to set the guest's clock to
    /// `stamp` (`@SECONDS.MILLIS`, UTC) after its machine was saved or
    /// resumed: a stopped guest's clock stood still.
    fn clock_command(&self, node: &str, stamp: &str) -> Vec<String> {
        let _ = node;
        ["date", "-u", "-s", stamp].map(str::to_owned).to_vec()
    }
    /// Freezes (`true`) or thaws the node's CPUs.
    fn freeze(&self, node: &str, frozen: bool) -> Result<(), BackendError>;
    /// The fault table changed: apply it where the switch does not (the
    /// switch itself acts on every frame it carries).
    fn faults_changed(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Saves the machines of `nodes` (all running) into `dir`, a file per
    /// node named after it, as one consistent cut: every node's CPUs stop
    /// before the first is saved, and all run again before this returns,
    /// whether it worked or not. `quiesce` is called once the backend
    /// watches the nodes' agent channels: the supervisor ends its sessions
    /// there, and the backend waits until every guest's agent has seen
    /// that (a machine saved in the middle of a session would not answer
    /// the next host).
    fn save(&self, nodes: &[String], dir: &Path, quiesce: &dyn Fn()) -> Result<(), BackendError> {
        let _ = (nodes, dir, quiesce);
        Err(self.unsupported("save a cluster snapshot"))
    }
    /// Starts boot `generation` of `node` from its machine saved by
    /// [`Backend::save`] in `file`: it runs on from where it was, its
    /// agent waiting for a host.
    fn resume(
        &self,
        node: &NodeSpec,
        generation: u64,
        file: &Path,
    ) -> Result<Started, BackendError> {
        let _ = (node, generation, file);
        Err(self.unsupported("restore a cluster snapshot"))
    }
    /// Stops every node and removes what the backend made for the cluster;
    /// one line per action, for the log.
    fn down(&self) -> Vec<String>;
    /// [`BackendError::Unsupported`] for `what`, in this backend's name.
    fn unsupported(&self, what: &str) -> BackendError {
        BackendError::Unsupported {
            backend: self.caps().name.clone(),
            what: what.to_owned(),
        }
    }
}

/// A cluster's backend and its switch.
pub struct Opened {
    pub backend: Box<dyn Backend>,
    pub switch: SharedSwitch,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opened({})", self.backend.caps().name)
    }
}

/// The chooser: the backend `spec` names, connected and with its switch
/// started.
pub fn open(
    spec: &ClusterSpec,
    dir: &StateDir,
    events: Arc<dyn Events>,
) -> Result<Opened, BackendError> {
    match &spec.backend {
        BackendSpec::Qemu => qemu::open(spec, dir, events),
        BackendSpec::Container { engine } => container::open(spec, dir, engine, events),
        #[cfg(feature = "libvirt")]
        BackendSpec::Libvirt { hosts, placement } => {
            libvirt::open(spec, dir, hosts, placement, events)
        }
        #[cfg(not(feature = "libvirt"))]
        BackendSpec::Libvirt { .. } => Err(BackendError::Failed(WITHOUT_LIBVIRT.to_owned())),
    }
}

/// What a build without the `libvirt` feature says when asked for it.
pub const WITHOUT_LIBVIRT: &str =
    "this testbed was built without libvirt (cargo feature `libvirt`); use --backend qemu, podman or docker, or rebuild with default features";

/// Removes what the cluster in `dir` left on the host when its supervisor is
/// gone (killed with SIGKILL, say): containers and libvirt domains outlive
/// it, found by their labels or metadata naming the state directory. QEMU
/// processes are found by their pid files ([`crate::state::teardown`]).
pub fn reap(spec: &ClusterSpec, dir: &StateDir) -> Vec<String> {
    match &spec.backend {
        BackendSpec::Qemu => Vec::new(),
        BackendSpec::Container { engine } => container::reap(engine, dir),
        #[cfg(feature = "libvirt")]
        BackendSpec::Libvirt { hosts, .. } => libvirt::reap(hosts, &spec.cluster, dir),
        #[cfg(not(feature = "libvirt"))]
        BackendSpec::Libvirt { .. } => vec![WITHOUT_LIBVIRT.to_owned()],
    }
}

/// Runs `each` on every item, each on a thread of its own, and waits for
/// all of them: the first error in the items' order (a thread that
/// panicked counts as one). What a backend saves side by side.
pub(crate) fn side_by_side<T: Send>(
    items: impl IntoIterator<Item = T>,
    each: impl Fn(T) -> Result<(), String> + Sync,
) -> Result<(), String> {
    std::thread::scope(|scope| {
        let each = &each;
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(move || each(item)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a saving thread panicked".to_owned()))
            })
            .collect::<Result<Vec<()>, String>>()
            .map(drop)
    })
}

/// Appends `[testbed] LINE` on a line of its own to a node's console log,
/// so that whoever reads the log sees where testbed changed the machine
/// under the guest. Best effort: a log that cannot be written loses it.
pub(crate) fn note_in_console(log: &Path, line: &str) {
    let marker = format!("\r\n[testbed] {line}\r\n");
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(marker.as_bytes()));
}

/// Locks `m`, taking over the data of a thread that panicked with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a host check came out (`testbed doctor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckLevel {
    /// Works.
    Ok,
    /// Works, but slower or only in part; or only one backend is missing.
    Warn,
    /// `up` with the default backend cannot work.
    Fail,
}

/// One thing `testbed doctor` checked on the host, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostCheck {
    pub name: &'static str,
    pub level: CheckLevel,
    /// What was found.
    pub found: String,
    /// What to do about it, when it is not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl HostCheck {
    pub fn new(
        name: &'static str,
        level: CheckLevel,
        found: String,
        fix: Option<&str>,
    ) -> HostCheck {
        HostCheck {
            name,
            level,
            found,
            fix: fix.map(str::to_owned),
        }
    }
}

/// Each backend's check of the host, as `testbed doctor` shows them; a
/// real probe each (QEMU's version, the libvirt daemon at `libvirt_uri`,
/// the container engine), never a guess from installed packages.
pub fn host_checks(libvirt_uri: &str) -> Vec<HostCheck> {
    #[cfg(feature = "libvirt")]
    let libvirt = libvirt::host_check(libvirt_uri);
    // Without root the default is the user's own daemon (the session);
    // the system daemon, through a polkit rule, is checked too.
    #[cfg(feature = "libvirt")]
    let system = (libvirt_uri != "qemu:///system")
        .then(|| libvirt::host_check_named("libvirt (system)", "qemu:///system"));
    #[cfg(not(feature = "libvirt"))]
    let system: Option<HostCheck> = None;
    #[cfg(not(feature = "libvirt"))]
    let libvirt = {
        let _ = libvirt_uri;
        HostCheck::new(
            "libvirt",
            CheckLevel::Warn,
            WITHOUT_LIBVIRT.to_owned(),
            None,
        )
    };
    let mut checks = vec![qemu::host_check(), libvirt];
    checks.extend(system);
    checks.push(container::host_check());
    checks.extend(container::docker_check());
    checks
}

/// The first non-empty line of a command's output.
pub fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned()
}
