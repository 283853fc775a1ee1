//! Activation: turning a role's generic image into a particular node.
//!
//! [`write_files`] puts every file of the node identity in place under a
//! root prefix and is tested on the host against a temporary folder;
//! [`apply`] adds the system steps from [`crate::system`] (hostname,
//! addresses, services) when the agent runs on the guest's real root.

use std::path::Path;
use std::time::{Duration, Instant};

use testbed_proto::{Activation, ActivationReport, Identity, ServiceFailure};
use thiserror::Error;

use crate::fsutil::{self, FsError};
use crate::log::{info, warning};
use crate::system::{self, StartEnd, SystemError};

#[derive(Debug, Error)]
pub enum ActivationError {
    #[error("activation of {hostname}: {source}")]
    File { hostname: String, source: FsError },
    #[error("activation of {hostname}: {source}")]
    System {
        hostname: String,
        source: SystemError,
    },
    #[error("activation of {hostname}: invalid ssh host key algorithm {algorithm:?}")]
    KeyAlgorithm { hostname: String, algorithm: String },
    #[error("activation of {hostname}: service {} did not become active ({})", .failure.unit, .failure.state)]
    Service {
        hostname: String,
        failure: ServiceFailure,
    },
    #[error(
        "activation of {hostname}: invalid machine id {id:?} (32 lowercase hex digits expected)"
    )]
    MachineId { hostname: String, id: String },
    #[error("activation of {hostname}: cancelled")]
    Cancelled { hostname: String },
}

/// Makes a clone restored from a memory snapshot a machine of its own: the
/// clock, the random pool and the NICs' addresses (system steps, skipped
/// under a root prefix and named in the returned list), then the machine
/// id. The id is written in place, not renamed over: systemd may have
/// bind-mounted `/run/machine-id` on `/etc/machine-id` at boot.
fn apply_identity(
    root: &Path,
    mutate_system: bool,
    hostname: &str,
    identity: &Identity,
) -> Result<Vec<String>, ActivationError> {
    let system_error = |source| ActivationError::System {
        hostname: hostname.to_owned(),
        source,
    };
    let valid = identity.machine_id.len() == 32
        && identity
            .machine_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        return Err(ActivationError::MachineId {
            hostname: hostname.to_owned(),
            id: identity.machine_id.clone(),
        });
    }
    let mut skipped = Vec::new();
    if mutate_system {
        system::set_clock(identity.clock_unix_ms).map_err(system_error)?;
        system::add_entropy(&identity.entropy).map_err(system_error)?;
        for change in &identity.macs {
            system::set_mac(Path::new("/sys/class/net"), &change.from, &change.to)
                .map_err(system_error)?;
        }
    } else {
        skipped.extend(["clock", "entropy", "macs"].map(str::to_owned));
    }
    let path = root.join("etc/machine-id");
    std::fs::write(&path, format!("{}\n", identity.machine_id)).map_err(|source| {
        ActivationError::System {
            hostname: hostname.to_owned(),
            source: SystemError::Identity {
                what: "write /etc/machine-id",
                source,
            },
        }
    })?;
    Ok(skipped)
}

/// Writes `/etc/hostname`, `/etc/hosts`, secrets, rendered files, SSH host
/// keys (if the image has `/etc/ssh`) and root's `authorized_keys`, all
/// atomically, under `root`. Returns the guest paths written, in order.
pub fn write_files(root: &Path, activation: &Activation) -> Result<Vec<String>, ActivationError> {
    let hostname = &activation.hostname;
    let file_error = |source| ActivationError::File {
        hostname: hostname.clone(),
        source,
    };
    let mut written = Vec::new();
    let mut write = |path: &str, contents: &[u8], owner: &str, mode: u32| {
        fsutil::write_file(root, path, contents, Some(owner), mode).map_err(file_error)?;
        written.push(path.to_owned());
        Ok::<(), ActivationError>(())
    };
    write(
        "/etc/hostname",
        format!("{hostname}\n").as_bytes(),
        "root:root",
        0o644,
    )?;
    write(
        "/etc/hosts",
        activation.hosts.as_bytes(),
        "root:root",
        0o644,
    )?;
    // Secrets before the files that may refer to them; both before services.
    for file in activation.secrets.iter().chain(&activation.files) {
        write(&file.path, &file.contents, &file.owner, file.mode)?;
    }
    if let Some(ssh) = &activation.ssh {
        if root.join("etc/ssh").is_dir() {
            for key in &ssh.host_keys {
                let valid = !key.algorithm.is_empty()
                    && key
                        .algorithm
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                if !valid {
                    return Err(ActivationError::KeyAlgorithm {
                        hostname: hostname.clone(),
                        algorithm: key.algorithm.clone(),
                    });
                }
                let path = format!("/etc/ssh/ssh_host_{}_key", key.algorithm);
                write(
                    &path,
                    with_newline(&key.private_key).as_bytes(),
                    "root:root",
                    0o600,
                )?;
                write(
                    &format!("{path}.pub"),
                    with_newline(&key.public_key).as_bytes(),
                    "root:root",
                    0o644,
                )?;
            }
        }
        if !ssh.authorized_keys.is_empty() {
            let mut text = ssh.authorized_keys.join("\n");
            text.push('\n');
            // sshd's StrictModes wants the folder private too.
            let dir = fsutil::under_root(root, "/root/.ssh").map_err(file_error)?;
            std::fs::create_dir_all(&dir).map_err(|e| file_error(FsError::io(&dir, e)))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| file_error(FsError::io(&dir, e)))?;
            write(
                "/root/.ssh/authorized_keys",
                text.as_bytes(),
                "root:root",
                0o600,
            )?;
        }
    }
    Ok(written)
}

fn with_newline(text: &str) -> String {
    if text.ends_with('\n') {
        text.to_owned()
    } else {
        format!("{text}\n")
    }
}

/// Applies a whole activation. With `mutate_system` false (a root prefix),
/// only the files are written and the system steps are listed as skipped.
/// `cancelled` is polled while waiting for services.
pub fn apply(
    root: &Path,
    mutate_system: bool,
    activation: &Activation,
    cancelled: &mut dyn FnMut(Duration) -> bool,
) -> Result<ActivationReport, ActivationError> {
    let start = Instant::now();
    let mut phases = Phases::new();
    let hostname = activation.hostname.clone();
    let mut skipped = Vec::new();
    if let Some(identity) = &activation.identity {
        skipped = apply_identity(root, mutate_system, &hostname, identity)?;
    }
    phases.end("identity");
    let files = write_files(root, activation)?;
    phases.end("files");
    let mut report = ActivationReport {
        files,
        services: Vec::new(),
        skipped,
        elapsed_ms: 0,
    };
    if !mutate_system {
        report.skipped.push("hostname".to_owned());
        if !activation.interfaces.is_empty() {
            report.skipped.push("addresses".to_owned());
        }
        if !activation.services.is_empty() {
            report.skipped.push("services".to_owned());
        }
        report.elapsed_ms = elapsed_ms(start);
        return Ok(report);
    }
    let system_error = |source| ActivationError::System {
        hostname: hostname.clone(),
        source,
    };
    system::set_hostname(&activation.hostname).map_err(system_error)?;
    for interface in &activation.interfaces {
        let name = system::interface_by_mac(Path::new("/sys/class/net"), &interface.mac)
            .map_err(system_error)?;
        system::configure_interface(&name, &interface.addresses, interface.mtu)
            .map_err(system_error)?;
    }
    // Loopback is normally up already; make sure, since services bind to it.
    system::configure_interface("lo", &[], None).map_err(system_error)?;
    phases.end("hostname and addresses");
    if activation.services.is_empty() {
        report.elapsed_ms = elapsed_ms(start);
        info!("activation of {hostname}: {}", phases.describe());
        return Ok(report);
    }
    // In a container the agent is started by the engine, not by systemd,
    // and can be faster than systemd's boot: wait for its control socket.
    let deadline = Instant::now() + Duration::from_millis(activation.service_timeout_ms);
    while !Path::new("/run/systemd/private").exists() && Instant::now() < deadline {
        if cancelled(Duration::from_millis(100)) {
            return Err(ActivationError::Cancelled { hostname });
        }
    }
    let writes_units = activation
        .files
        .iter()
        .any(|f| f.path.starts_with("/etc/systemd/") || f.path.starts_with("/usr/lib/systemd/"));
    if writes_units {
        system::daemon_reload().map_err(system_error)?;
        phases.end("daemon-reload");
    }
    // One blocking `systemctl start` of every unit: systemd orders them by
    // their own dependencies and tells systemctl when each job is done,
    // while nothing polls on the node's CPU. systemctl talks to systemd
    // over D-Bus, which may not answer within its 25 s while systemd is
    // busy (under TCG, with a node's units all starting): such a failure
    // is asked again, a few times (queueing the same start jobs again is
    // harmless). Past the service deadline, or once the jobs are done,
    // each unit's state is read below.
    let timeout = Duration::from_millis(activation.service_timeout_ms);
    let start_deadline = Instant::now() + timeout;
    let mut started = system::start_units_and_wait(&activation.services, start_deadline, cancelled);
    for _ in 0..2 {
        match &started {
            StartEnd::Done(Err(e)) if e.to_string().contains("timed out") => {
                started =
                    system::start_units_and_wait(&activation.services, start_deadline, cancelled);
            }
            _ => break,
        }
    }
    match started {
        StartEnd::Cancelled => return Err(ActivationError::Cancelled { hostname }),
        // A job that failed (or could not be queued) is not the end: a
        // service with `Restart=` may come up at its next try. Each unit's
        // state below decides, as it does after the deadline.
        StartEnd::Done(Err(e)) => warning!("{e}; waiting for each unit's own state"),
        StartEnd::Done(Ok(())) | StartEnd::TimedOut => {}
    }
    phases.end("systemctl start");
    // The units seen up at once (the common case: one question to systemd
    // for all); any other is watched below until it is up, skipped on
    // purpose or failed, or its deadline.
    let up_at_once = system::units_up_at_once(&activation.services);
    phases.end("unit states");
    for (i, unit) in activation.services.iter().enumerate() {
        let deadline = Instant::now() + timeout;
        while !up_at_once.get(i).copied().unwrap_or(false) {
            let status = match system::unit_status(unit) {
                Ok(status) => status,
                Err(_) if Instant::now() < deadline => {
                    if cancelled(Duration::from_millis(500)) {
                        return Err(ActivationError::Cancelled { hostname });
                    }
                    continue;
                }
                Err(e) => return Err(system_error(e)),
            };
            if status.is_up() {
                break;
            }
            if status.skipped() && system::virtualization_conditioned(unit) {
                // The composition made this unit run only on some kinds of
                // node (VMs, containers): skipped here on purpose.
                report
                    .skipped
                    .push(format!("{unit} (ConditionVirtualization)"));
                break;
            }
            if status.has_failed() || Instant::now() >= deadline {
                return Err(ActivationError::Service {
                    hostname,
                    failure: failure(unit, &status),
                });
            }
            if cancelled(Duration::from_millis(100)) {
                return Err(ActivationError::Cancelled { hostname });
            }
        }
        if !report
            .skipped
            .iter()
            .any(|s| s.starts_with(&format!("{unit} ")))
        {
            report.services.push(unit.clone());
        }
    }
    if up_at_once.iter().any(|up| !up) || up_at_once.len() != activation.services.len() {
        phases.end("waiting for units");
    }
    report.elapsed_ms = elapsed_ms(start);
    info!("activation of {hostname}: {}", phases.describe());
    Ok(report)
}

/// How long each step of an activation took, for the agent's log (the
/// journal): where a slow node spends its activation.
struct Phases {
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new() -> Phases {
        Phases {
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    /// The step `name` ended now.
    fn end(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done.push((name, now - self.last));
        self.last = now;
    }

    fn describe(&self) -> String {
        let total: Duration = self.done.iter().map(|(_, d)| *d).sum();
        let steps: Vec<String> = self
            .done
            .iter()
            .map(|(name, d)| format!("{name} {} ms", d.as_millis()))
            .collect();
        format!("{} ms ({})", total.as_millis(), steps.join(", "))
    }
}

/// A unit's failure with its journal tail.
pub fn failure(unit: &str, status: &system::UnitStatus) -> ServiceFailure {
    ServiceFailure {
        unit: unit.to_owned(),
        state: status.describe(),
        journal: system::journal_tail(unit),
    }
}

fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}
