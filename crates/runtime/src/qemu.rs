//! One QEMU process per VM node: its command line ([`argv`], pure and
//! snapshot-tested) and the running process ([`VmProcess`]).
//!
//! The layout of a VM (described with the reason for every flag in
//! `docs/qemu.md`):
//! - direct kernel boot (`-kernel`, `-initrd`, `-append`) of the image's
//!   kernel and stage-1 initramfs, no firmware boot menu, no bootloader;
//! - the role's `rootfs.erofs` as the first and only virtio-blk disk,
//!   read-only, so every node of a role shares one file (the guest's
//!   `/dev/vda`);
//! - one virtio-net NIC per composition network, each a `-netdev dgram`
//!   over unix datagram sockets to a port of the switch, and nothing else:
//!   no user-mode networking, no tap, no route out of the cluster;
//! - the agent's virtio-serial port, the serial console and QMP, each a
//!   unix socket QEMU listens on without waiting for a client.
//!
//! **A QEMU process dies with the thread that spawned it.**
//! [`VmProcess::spawn`] sets `PR_SET_PDEATHSIG` to `SIGKILL` in the child,
//! and Linux sends that signal when the *thread* that forked the child
//! exits, not when the process does. This is what keeps a crashed
//! supervisor from leaving VMs behind, and it means the caller must spawn
//! from a thread that lives exactly as long as the VM should: a long-lived
//! owner thread, never a short-lived worker or a thread pool's task.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::accel::Accel;
use crate::qmp::{Qmp, QmpError};

/// The QEMU binary looked up on `PATH`.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// The Debian package that provides [`QEMU_BINARY`].
pub const QEMU_PACKAGE: &str = "qemu-system-x86";
/// Environment variable naming the QEMU binary to use instead.
pub const QEMU_ENV: &str = "TESTBED_QEMU";

/// How long QEMU may take from exec to answering on its QMP socket. QEMU's
/// own initialization takes well under a second; this only bounds a hung
/// start on a badly overloaded host. The guest's boot is not part of it.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The QOM id of the agent's virtio-serial port: QMP's `VSERPORT_CHANGE`
/// events (the guest opened or closed its end) name it.
pub const AGENT_PORT_ID: &str = "agent-port";

/// How many lines of QEMU's log an error quotes.
const TAIL_LINES: usize = 30;

/// Longest path a unix socket can be bound at (`sun_path` is 108 bytes
/// with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Errors of starting and managing QEMU processes.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// No QEMU binary on `PATH`.
    #[error("{QEMU_BINARY} not found on PATH; install the Debian package {QEMU_PACKAGE}, or set {QEMU_ENV} to the binary")]
    NotFound,
    /// `$TESTBED_QEMU` does not name an executable file.
    #[error("{QEMU_ENV}={0} is not an executable file")]
    BadOverride(PathBuf),
    /// The configuration cannot be turned into a working command line.
    #[error("invalid VM configuration for node {node}: {reason}")]
    InvalidConfig {
        /// The node.
        node: String,
        /// What is wrong.
        reason: String,
    },
    /// The log file could not be opened or written.
    #[error("cannot write the qemu log of node {node} at {path}: {source}")]
    Log {
        /// The node.
        node: String,
        /// The log file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The process could not be started at all.
    #[error("cannot start {qemu} for node {node}: {source}")]
    Spawn {
        /// The node.
        node: String,
        /// The binary.
        qemu: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// QEMU exited before it was up (a bad argument, a missing file, a
    /// socket path in use...). The log's tail says why.
    #[error("qemu of node {node} exited during startup ({status}); the end of {log}:\n{tail}")]
    Exited {
        /// The node.
        node: String,
        /// How it exited.
        status: ExitStatus,
        /// The log file.
        log: PathBuf,
        /// The last lines QEMU wrote in this run.
        tail: String,
    },
    /// QEMU kept running but never answered on its QMP socket; it was
    /// killed.
    #[error("qemu of node {node} did not come up: {source}; the end of {log}:\n{tail}")]
    NotReady {
        /// The node.
        node: String,
        /// What the QMP probe saw (boxed: it is large and rare).
        source: Box<QmpError>,
        /// The log file.
        log: PathBuf,
        /// The last lines QEMU wrote in this run.
        tail: String,
    },
    /// Waiting for, or signalling, the process failed.
    #[error("cannot {action} the qemu process of node {node} (pid {pid}): {source}")]
    Process {
        /// The node.
        node: String,
        /// The pid.
        pid: u32,
        /// `wait for` or `kill`.
        action: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// Everything that makes one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// The node's name (QEMU's `-name`, and every error message).
    pub name: String,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// The accelerator.
    pub accel: Accel,
    /// The kernel (`-kernel`).
    pub kernel: PathBuf,
    /// The stage-1 initramfs (`-initrd`).
    pub initramfs: PathBuf,
    /// The role's `rootfs.erofs`, attached read-only as the first
    /// virtio-blk disk; shared by every node of the role.
    pub rootfs: PathBuf,
    /// The kernel command line, normally
    /// `testbed_image::initramfs::KERNEL_CMDLINE`.
    pub cmdline: String,
    /// The NICs, in the composition's network order.
    pub nics: Vec<NicConfig>,
    /// Where QEMU listens for the agent's virtio-serial port.
    pub agent_socket: PathBuf,
    /// Where QEMU listens for the serial console (`ttyS0`).
    pub console_socket: PathBuf,
    /// Where everything the guest prints on the serial console is appended,
    /// whether or not a client is attached to `console_socket`.
    pub console_log: PathBuf,
    /// Where QEMU listens for QMP.
    pub qmp_socket: PathBuf,
    /// Where the guest's RAM lives.
    #[serde(default)]
    pub ram: Ram,
    /// Wait for an incoming migration (a restore from a memory snapshot,
    /// started over QMP) instead of booting: `-incoming defer`.
    #[serde(default)]
    pub incoming: bool,
}

/// The guest RAM's backing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ram {
    /// A memfd: anonymous shared memory (every cold boot).
    #[default]
    Memfd,
    /// A file: mapped shared while a role's snapshot is made (the guest's
    /// RAM is then the file, and migration skips it), privately by the
    /// nodes restored from it (copy on write: pages no clone wrote stay
    /// shared between them in the host's page cache).
    File { path: PathBuf, shared: bool },
}

/// One NIC: a virtio-net device whose frames travel as datagrams between
/// two unix sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    /// The MAC address, `52:54:00:xx:xx:xx`.
    pub mac: String,
    /// The socket QEMU binds (the switch port's peer address).
    pub local: PathBuf,
    /// The socket QEMU sends to (the switch port's own address).
    pub remote: PathBuf,
}

/// Doubles commas, QEMU's escape inside `key=value,...` option strings, so
/// a path with a comma stays one value. Paths are checked to be UTF-8 by
/// [`VmConfig::check`] before they get here.
fn opt(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// The QEMU command line for `config`, without the program name.
///
/// Pure: no file is looked at. [`VmProcess::spawn`] checks the
/// configuration first ([`VmConfig::check`]).
pub fn argv(config: &VmConfig) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |args: &[&str]| a.extend(args.iter().map(|s| s.to_string()));
    push(&[
        "-name",
        &format!("guest={},debug-threads=on", config.name.replace(',', ",,")),
    ]);
    // Nothing implicit: no default NIC (which would be user-mode
    // networking, a route out), no VGA, no floppy/CD, no config file.
    push(&["-nodefaults", "-no-user-config"]);
    // A guest reboot, or a kernel panic with panic=-1, ends the process,
    // so a crash is visible as an exit instead of a silent boot loop.
    push(&["-no-reboot", "-display", "none", "-msg", "timestamp=on"]);
    // Guest RAM from a memfd: shared memory is not backed by transparent
    // huge pages (shmem_enabled is `never` by default, while QEMU madvises
    // anonymous RAM for THP), so an idle node costs the host the 4 KiB
    // pages its guest touched rather than whole 2 MiB pages.
    match &config.ram {
        Ram::Memfd => push(&[
            "-object",
            &format!("memory-backend-memfd,id=ram,size={}M", config.memory_mib),
        ]),
        Ram::File { path, shared } => push(&[
            "-object",
            &format!(
                "memory-backend-file,id=ram,size={}M,mem-path={},share={}",
                config.memory_mib,
                opt(path),
                if *shared { "on" } else { "off" }
            ),
        ]),
    }
    push(&["-machine", "q35,memory-backend=ram"]);
    push(config.accel.qemu_args());
    push(&["-m", &format!("{}M", config.memory_mib)]);
    push(&["-smp", &config.cpus.to_string()]);
    push(&["-kernel", &config.kernel.to_string_lossy()]);
    push(&["-initrd", &config.initramfs.to_string_lossy()]);
    push(&["-append", &config.cmdline]);
    // The root: read-only at both layers of the block graph. A read-only
    // open takes only shared locks, so any number of QEMUs can open the
    // same file while a writer (which would corrupt them all) is refused.
    push(&[
        "-blockdev",
        &format!(
            "driver=file,node-name=rootfs-file,filename={},read-only=on",
            opt(&config.rootfs)
        ),
    ]);
    push(&[
        "-blockdev",
        "driver=raw,node-name=rootfs,file=rootfs-file,read-only=on",
    ]);
    // The first (and only) virtio-blk device is the guest's /dev/vda.
    push(&["-device", "virtio-blk-pci,drive=rootfs,id=rootfs-disk"]);
    // Guests need entropy early (systemd, SSH keys, TLS); under TCG the
    // kernel's own jitter entropy is slow to gather.
    push(&["-device", "virtio-rng-pci"]);
    for (i, nic) in config.nics.iter().enumerate() {
        push(&[
            "-netdev",
            &format!(
                "dgram,id=net{i},local.type=unix,local.path={},remote.type=unix,remote.path={}",
                opt(&nic.local),
                opt(&nic.remote)
            ),
        ]);
        // romfile= drops the iPXE option ROM: nothing boots from the
        // network, and firmware skips initializing it.
        push(&[
            "-device",
            &format!("virtio-net-pci,netdev=net{i},mac={},romfile=", nic.mac),
        ]);
    }
    push(&["-device", "virtio-serial-pci,id=virtio-serial0"]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=agent,path={},server=on,wait=off",
            opt(&config.agent_socket)
        ),
    ]);
    push(&[
        "-device",
        &format!(
            "virtserialport,bus=virtio-serial0.0,chardev=agent,name={},id={AGENT_PORT_ID}",
            testbed_proto::VIRTIO_PORT_NAME
        ),
    ]);
    // logfile= records the console whether or not a client is attached:
    // with no client, the socket chardev discards output but still logs it.
    push(&[
        "-chardev",
        &format!(
            "socket,id=console,path={},server=on,wait=off,logfile={},logappend=on",
            opt(&config.console_socket),
            opt(&config.console_log)
        ),
    ]);
    push(&["-serial", "chardev:console"]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=qmp,path={},server=on,wait=off",
            opt(&config.qmp_socket)
        ),
    ]);
    push(&["-mon", "chardev=qmp,mode=control"]);
    // A fresh generation id per QEMU process: a guest restored from a
    // snapshot sees it change and reseeds its random number generator.
    push(&["-device", "vmgenid,guid=auto"]);
    if config.incoming {
        push(&["-incoming", "defer"]);
    }
    a
}

impl VmConfig {
    /// Checks what QEMU would otherwise reject with a less clear message, or
    /// misread: socket paths too long to bind, paths that are not UTF-8
    /// (the command line is built from strings), MACs that are not unicast
    /// `xx:xx:xx:xx:xx:xx`, and zero memory or CPUs.
    pub fn check(&self) -> Result<(), QemuError> {
        let invalid = |reason: String| QemuError::InvalidConfig {
            node: self.name.clone(),
            reason,
        };
        if self.memory_mib == 0 {
            return Err(invalid("memory must be at least 1 MiB".into()));
        }
        if self.cpus == 0 {
            return Err(invalid("a VM needs at least one CPU".into()));
        }
        let mut paths: Vec<(&str, &Path)> = vec![
            ("kernel", &self.kernel),
            ("initramfs", &self.initramfs),
            ("rootfs", &self.rootfs),
            ("console log", &self.console_log),
        ];
        let mut sockets: Vec<(&str, &Path)> = vec![
            ("agent socket", &self.agent_socket),
            ("console socket", &self.console_socket),
            ("QMP socket", &self.qmp_socket),
        ];
        for nic in &self.nics {
            sockets.push(("NIC socket", &nic.local));
            sockets.push(("NIC peer socket", &nic.remote));
        }
        for (what, path) in &sockets {
            let len = path.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(invalid(format!(
                    "the {what} path {} is {len} bytes long; unix sockets allow {MAX_SOCKET_PATH}",
                    path.display()
                )));
            }
        }
        paths.extend(sockets);
        for (what, path) in paths {
            if path.to_str().is_none() {
                return Err(invalid(format!(
                    "the {what} path {} is not valid UTF-8",
                    path.display()
                )));
            }
        }
        for nic in &self.nics {
            if !is_unicast_mac(&nic.mac) {
                return Err(invalid(format!(
                    "\"{}\" is not a unicast MAC address like 52:54:00:12:34:56",
                    nic.mac
                )));
            }
        }
        Ok(())
    }
}

pub(crate) fn is_unicast_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

/// The QEMU binary: `$TESTBED_QEMU` if set, else `qemu-system-x86_64` on
/// `PATH`.
pub fn find_qemu() -> Result<PathBuf, QemuError> {
    find_qemu_in(
        std::env::var_os(QEMU_ENV).as_deref(),
        std::env::var_os("PATH").as_deref(),
    )
}

/// [`find_qemu`] with the two environment variables given.
fn find_qemu_in(
    override_path: Option<&OsStr>,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, QemuError> {
    if let Some(p) = override_path.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(QemuError::BadOverride(p))
        };
    }
    std::env::split_paths(path_var.unwrap_or_default())
        .map(|dir| dir.join(QEMU_BINARY))
        .find(|p| is_executable(p))
        .ok_or(QemuError::NotFound)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running QEMU. Dropping it kills and reaps the process, so a VM never
/// outlives its handle.
#[derive(Debug)]
pub struct VmProcess {
    name: String,
    child: Child,
    log: PathBuf,
    /// Where this run's output starts in `log` (it is appended to across
    /// restarts).
    log_start: u64,
    status: Option<ExitStatus>,
}

impl VmProcess {
    /// Starts QEMU for `config` and returns once it answers on its QMP
    /// socket (QEMU is initialized: every file opened, every socket bound;
    /// the guest has started booting). QEMU's stdout and stderr are
    /// appended to `log`, after a line with the time and command line.
    ///
    /// QEMU gets `SIGKILL` when **the calling thread** exits (see the
    /// module documentation): call this from the thread that owns the VM
    /// for its whole life.
    ///
    /// The probe's QMP connection is closed before returning, so the caller
    /// can connect its own ([`Qmp::connect_node`]).
    ///
    /// A QEMU that exits during startup (bad argument, missing file, socket
    /// in use...) is [`QemuError::Exited`] with the tail of `log`.
    pub fn spawn(qemu: &Path, config: &VmConfig, log: &Path) -> Result<VmProcess, QemuError> {
        VmProcess::spawn_with(qemu, config, &[], log)
    }

    /// [`VmProcess::spawn`] with `extra` arguments appended (e.g. `-S` to
    /// start with the vCPUs paused).
    pub fn spawn_with(
        qemu: &Path,
        config: &VmConfig,
        extra: &[&str],
        log: &Path,
    ) -> Result<VmProcess, QemuError> {
        config.check()?;
        let name = config.name.clone();
        let log_err = |source: io::Error| QemuError::Log {
            node: name.clone(),
            path: log.to_path_buf(),
            source,
        };
        let mut args = argv(config);
        args.extend(extra.iter().map(|s| s.to_string()));

        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(log_err)?;
        let log_start = out.seek(SeekFrom::End(0)).map_err(log_err)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        writeln!(
            out,
            "testbed: {now:.3} starting {} {}",
            qemu.display(),
            shell_words(&args)
        )
        .map_err(log_err)?;
        let err_out = out.try_clone().map_err(log_err)?;

        // A stale QMP socket (from a QEMU that was killed) would let the
        // readiness probe connect to nothing until the new QEMU replaces
        // it; QEMU unlinks and rebinds the path anyway.
        let _ = std::fs::remove_file(&config.qmp_socket);

        let mut cmd = Command::new(qemu);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err_out);
        die_with_spawning_thread(&mut cmd);
        let child = cmd.spawn().map_err(|source| QemuError::Spawn {
            node: name.clone(),
            qemu: qemu.to_path_buf(),
            source,
        })?;
        let mut vm = VmProcess {
            name,
            child,
            log: log.to_path_buf(),
            log_start,
            status: None,
        };
        vm.wait_ready(&config.qmp_socket)?;
        Ok(vm)
    }

    /// Waits until QMP answers, or QEMU exits, or [`STARTUP_TIMEOUT`].
    fn wait_ready(&mut self, qmp_socket: &Path) -> Result<(), QemuError> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        // Until the socket exists, QEMU is still parsing arguments or
        // opening files: watch for an early exit.
        loop {
            if let Some(status) = self.try_wait()? {
                return Err(self.exited(status));
            }
            if qmp_socket.exists() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match Qmp::connect_node(&self.name, qmp_socket, remaining) {
            Ok(_probe) => Ok(()),
            Err(source) => {
                // QEMU exiting during initialization closes the socket
                // under the probe: report the exit, which has the reason.
                if let Some(status) = self.wait_timeout(Duration::from_secs(2))? {
                    return Err(self.exited(status));
                }
                let _ = self.kill();
                Err(QemuError::NotReady {
                    node: self.name.clone(),
                    source: Box::new(source),
                    log: self.log.clone(),
                    tail: self.log_tail(TAIL_LINES),
                })
            }
        }
    }

    fn exited(&self, status: ExitStatus) -> QemuError {
        QemuError::Exited {
            node: self.name.clone(),
            status,
            log: self.log.clone(),
            tail: self.log_tail(TAIL_LINES),
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file QEMU's output is appended to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines QEMU (and spawn's header line) wrote to the
    /// log in this run.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = Vec::new();
        if let Ok(mut f) = File::open(&self.log) {
            if f.seek(SeekFrom::Start(self.log_start)).is_ok() {
                let _ = f.read_to_end(&mut text);
            }
        }
        tail(&String::from_utf8_lossy(&text), lines)
    }

    /// The exit status if QEMU has exited (and is now reaped), without
    /// blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, QemuError> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| self.process_error("wait for", e))?;
        }
        Ok(self.status)
    }

    /// Waits at most `timeout` for QEMU to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
    }

    /// Kills QEMU with `SIGKILL` (the guest gets no chance to shut down) and
    /// reaps it. A QEMU that already exited is only reaped.
    pub fn kill(&mut self) -> Result<ExitStatus, QemuError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.child
            .kill()
            .map_err(|e| self.process_error("kill", e))?;
        let status = self
            .child
            .wait()
            .map_err(|e| self.process_error("wait for", e))?;
        self.status = Some(status);
        Ok(status)
    }

    fn process_error(&self, action: &'static str, source: io::Error) -> QemuError {
        QemuError::Process {
            node: self.name.clone(),
            pid: self.child.id(),
            action,
            source,
        }
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Makes the child get `SIGKILL` when the thread that spawns it exits.
#[allow(unsafe_code)]
pub fn die_with_spawning_thread(cmd: &mut Command) {
    use rustix::process::{getpid, getppid, set_parent_process_death_signal, Signal};
    let parent = getpid();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe operations are allowed. It makes two system calls
    // (prctl and getppid), allocates nothing and takes no lock; the error
    // it may return is built from a raw errno, also without allocating.
    unsafe {
        cmd.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::KILL))?;
            // If the whole parent process died between fork and prctl, the
            // child was already reparented and the signal will never come:
            // give up rather than run unowned.
            if getppid() != Some(parent) {
                return Err(rustix::io::Errno::SRCH.into());
            }
            Ok(())
        });
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The arguments as a shell would need them, for the log.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=,.:/+@%".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            name: "n1".into(),
            memory_mib: 256,
            cpus: 1,
            accel: Accel::Tcg,
            kernel: "/s/kernel".into(),
            initramfs: "/s/initramfs".into(),
            rootfs: "/s/rootfs.erofs".into(),
            cmdline: "console=ttyS0".into(),
            nics: vec![NicConfig {
                mac: "52:54:00:00:00:01".into(),
                local: "/r/nic.sock".into(),
                remote: "/r/sw.sock".into(),
            }],
            agent_socket: "/r/agent.sock".into(),
            console_socket: "/r/console.sock".into(),
            console_log: "/r/console.log".into(),
            qmp_socket: "/r/qmp.sock".into(),
            ram: Ram::default(),
            incoming: false,
        }
    }

    #[test]
    fn commas_in_paths_are_escaped_as_one_value() {
        let mut c = config();
        c.rootfs = "/s/a,b/rootfs.erofs".into();
        let a = argv(&c);
        assert!(
            a.iter()
                .any(|x| x.contains("filename=/s/a,,b/rootfs.erofs,")),
            "{a:?}"
        );
    }

    #[test]
    fn check_rejects_long_socket_paths_bad_macs_and_zero_sizes() {
        assert!(config().check().is_ok());
        let mut c = config();
        c.qmp_socket = PathBuf::from(format!("/{}", "q".repeat(MAX_SOCKET_PATH)));
        let err = c.check().unwrap_err().to_string();
        assert!(
            err.starts_with("invalid VM configuration for node n1: the QMP socket path /qqq"),
            "{err}"
        );
        assert!(
            err.ends_with("is 108 bytes long; unix sockets allow 107"),
            "{err}"
        );
        for bad in [
            "52:54:00:00:00",
            "53:54:00:00:00:01",
            "52:54:00:00:00:zz",
            "",
        ] {
            let mut c = config();
            c.nics[0].mac = bad.into();
            let err = c.check().unwrap_err().to_string();
            assert!(err.contains("is not a unicast MAC address"), "{bad}: {err}");
        }
        let mut c = config();
        c.cpus = 0;
        assert!(c.check().is_err());
        let mut c = config();
        c.memory_mib = 0;
        assert!(c.check().is_err());
    }

    #[test]
    fn qemu_is_found_on_path_or_from_the_override() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join(QEMU_BINARY);
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let path_var = std::env::join_paths([other.as_path(), dir.path()]).unwrap();

        // Not executable yet: not found, and the message names the package.
        let err = find_qemu_in(None, Some(&path_var)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "qemu-system-x86_64 not found on PATH; install the Debian package qemu-system-x86, or set TESTBED_QEMU to the binary"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_qemu_in(None, Some(&path_var)).unwrap(), bin);
        assert_eq!(
            find_qemu_in(Some(bin.as_os_str()), None).unwrap(),
            bin,
            "the override needs no PATH"
        );
        let err = find_qemu_in(Some(other.as_os_str()), Some(&path_var)).unwrap_err();
        assert!(matches!(err, QemuError::BadOverride(_)), "{err}");
        // An empty override is no override.
        assert_eq!(
            find_qemu_in(Some(OsStr::new("")), Some(&path_var)).unwrap(),
            bin
        );
    }

    #[test]
    fn log_lines_quote_what_a_shell_would_split() {
        let args: Vec<String> = ["-m", "512M", "-append", "console=ttyS0 quiet", "it's", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            shell_words(&args),
            "-m 512M -append 'console=ttyS0 quiet' 'it'\\''s' ''"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
