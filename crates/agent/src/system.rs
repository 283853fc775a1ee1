//! The steps that change the running system: hostname, addresses, links,
//! systemd units. Kept to thin wrappers over the kernel interface and the
//! standard tools (`ip`, `systemctl`, `journalctl`), so everything that can
//! be checked without a VM lives elsewhere and this layer is exercised by
//! the tests that boot real nodes.

use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

use thiserror::Error;

use crate::fsutil::describe;

#[derive(Debug, Error)]
pub enum SystemError {
    #[error("cannot set the hostname to {name}: {}", describe(.source))]
    Hostname { name: String, source: io::Error },
    #[error("no network interface has MAC address {mac}")]
    NoInterface { mac: String },
    #[error("cannot list network interfaces in {dir}: {}", describe(.source))]
    Interfaces { dir: String, source: io::Error },
    #[error("cannot run `{command}`: {}", describe(.source))]
    Spawn { command: String, source: io::Error },
    #[error("cannot {what}: {}", describe(.source))]
    Identity {
        what: &'static str,
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Runs a tool and returns its stdout; a non-zero exit is an error carrying
/// its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, SystemError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| SystemError::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(SystemError::Failed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Sets the kernel's hostname (the files are written by activation).
pub fn set_hostname(name: &str) -> Result<(), SystemError> {
    // A container gets its name when it is created and its /proc/sys is
    // read-only: a name that is already right is left alone.
    if fs::read_to_string("/proc/sys/kernel/hostname").is_ok_and(|current| current.trim() == name) {
        return Ok(());
    }
    fs::write("/proc/sys/kernel/hostname", name).map_err(|source| SystemError::Hostname {
        name: name.to_owned(),
        source,
    })
}

/// Sets the real-time clock of the running system (not the hardware's) to
/// `unix_ms`. A clone restored from a memory snapshot still has the time
/// the snapshot was taken.
pub fn set_clock(unix_ms: u64) -> Result<(), SystemError> {
    let time = rustix::time::Timespec {
        tv_sec: i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX),
        tv_nsec: i64::try_from((unix_ms % 1000) * 1_000_000).unwrap_or(0),
    };
    rustix::time::clock_settime(rustix::time::ClockId::Realtime, time).map_err(|e| {
        SystemError::Identity {
            what: "set the clock",
            source: e.into(),
        }
    })
}

/// Mixes `bytes` into the kernel's input pool (a write to `/dev/urandom`)
/// and makes the output generator reseed from it at once (the
/// `RNDRESEEDCRNG` ioctl): every clone of a snapshot starts with the same
/// generator state, and a write alone changes its output only at the next
/// periodic reseed, up to a minute later. (Kernels with a `vmgenid` driver
/// also reseed when QEMU's generation id changes; Debian's cloud kernel
/// has none.)
pub fn add_entropy(bytes: &[u8]) -> Result<(), SystemError> {
    let failed = |what| move |source| SystemError::Identity { what, source };
    let mut urandom = fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(failed("open /dev/urandom"))?;
    io::Write::write_all(&mut urandom, bytes).map_err(failed("write to /dev/urandom"))?;
    reseed(&urandom).map_err(failed("reseed the kernel's random generator"))
}

/// `ioctl(fd, RNDRESEEDCRNG)`: `_IO('R', 0x07)`, no argument.
#[allow(unsafe_code)]
fn reseed(urandom: &fs::File) -> io::Result<()> {
    use rustix::ioctl::{ioctl, opcode, NoArg};
    const RNDRESEEDCRNG: rustix::ioctl::Opcode = opcode::none(b'R', 0x07);
    // SAFETY: RNDRESEEDCRNG takes no argument, which is what `NoArg`
    // passes, and the descriptor is the random device's.
    unsafe { ioctl(urandom, NoArg::<RNDRESEEDCRNG>::new()) }.map_err(io::Error::from)
}

/// Gives the interface that has MAC `from` the address `to` (over
/// rtnetlink; with `ip` if that fails).
pub fn set_mac(sys_class_net: &Path, from: &str, to: &str) -> Result<(), SystemError> {
    let name = interface_by_mac(sys_class_net, from)?;
    let fast = || -> io::Result<()> {
        let mac = crate::netlink::parse_mac(to)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a MAC"))?;
        let change = crate::netlink::LinkChange {
            mac: Some(mac),
            ..Default::default()
        };
        crate::netlink::set_link(crate::netlink::index_of(&name)?, &change)
    };
    match fast() {
        Ok(()) => Ok(()),
        Err(e) => {
            crate::log::info!("{name}'s MAC over rtnetlink: {e}; with ip");
            run("ip", &["link", "set", "dev", &name, "address", to]).map(drop)
        }
    }
}

/// Finds the interface with this MAC in a `/sys/class/net`-shaped folder.
pub fn interface_by_mac(sys_class_net: &Path, mac: &str) -> Result<String, SystemError> {
    let wanted = mac.trim().to_ascii_lowercase();
    let entries = fs::read_dir(sys_class_net).map_err(|source| SystemError::Interfaces {
        dir: sys_class_net.display().to_string(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let address = fs::read_to_string(entry.path().join("address")).ok()?;
            (address.trim().to_ascii_lowercase() == wanted)
                .then(|| entry.file_name().to_string_lossy().into_owned())
        })
        .collect();
    // Deterministic if a MAC were ever shared (a bond, a VLAN on top).
    names.sort();
    names
        .into_iter()
        .next()
        .ok_or_else(|| SystemError::NoInterface {
            mac: mac.to_owned(),
        })
}

/// Brings a link up with its addresses. Replacing addresses (as `ip addr
/// replace`) keeps this idempotent, so a repeated activation (after an
/// agent restart) succeeds. Over rtnetlink, without starting a process;
/// if any of that fails (a container that may not change its links), with
/// `ip`, asking only for what is missing.
pub fn configure_interface(
    name: &str,
    addresses: &[String],
    mtu: Option<u32>,
) -> Result<(), SystemError> {
    let fast = || -> io::Result<()> {
        let index = crate::netlink::index_of(name)?;
        for address in addresses {
            let (ip, prefix) = crate::netlink::parse_cidr(address)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, address.clone()))?;
            crate::netlink::replace_address(index, ip, prefix)?;
        }
        // The MTU and the up flag in one request.
        let change = crate::netlink::LinkChange {
            mac: None,
            mtu,
            up: !link_is_up(name),
        };
        if change == crate::netlink::LinkChange::default() {
            return Ok(());
        }
        crate::netlink::set_link(index, &change)
    };
    match fast() {
        Ok(()) => return Ok(()),
        Err(e) => crate::log::info!("{name}'s addresses over rtnetlink: {e}; with ip"),
    }
    if let Some(mtu) = mtu {
        run("ip", &["link", "set", "dev", name, "mtu", &mtu.to_string()])?;
    }
    // A container's engine has already given its interfaces their
    // addresses, and the container may not change them (no CAP_NET_ADMIN):
    // only what is missing is asked for.
    let present = run("ip", &["-o", "addr", "show", "dev", name]).unwrap_or_default();
    for address in addresses {
        if !has_address(&present, address) {
            run("ip", &["addr", "replace", address, "dev", name])?;
        }
    }
    if !link_is_up(name) {
        run("ip", &["link", "set", "dev", name, "up"])?;
    }
    Ok(())
}

/// Whether `ip -o addr show` output lists `address` (`IP/PREFIX`).
fn has_address(ip_output: &str, address: &str) -> bool {
    ip_output
        .lines()
        .any(|line| line.split_whitespace().any(|word| word == address))
}

/// Whether the interface is administratively up (`IFF_UP` in its flags).
pub fn link_is_up(name: &str) -> bool {
    fs::read_to_string(format!("/sys/class/net/{name}/flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & 1 == 1)
}

/// Whether systemd is the running init.
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

pub fn daemon_reload() -> Result<(), SystemError> {
    run("systemctl", &["daemon-reload"]).map(drop)
}

/// How a blocking start of units ended.
#[derive(Debug)]
pub enum StartEnd {
    /// `systemctl start` returned: every start job finished (`Ok`), or one
    /// failed or could not be queued (its error).
    Done(Result<(), SystemError>),
    /// Asked to stop: `systemctl` was killed (its jobs stay queued).
    Cancelled,
    /// The deadline came first: `systemctl` was killed (its jobs stay
    /// queued).
    TimedOut,
}

/// Starts `units` and waits until their start jobs have finished, as a
/// plain `systemctl start` does: it waits for systemd's job signals, so
/// the guest's CPU goes to the services, not to polling their states (under
/// TCG one `systemctl show` costs about 0.3 s of the node's only vCPU).
/// `cancelled` is asked every 100 ms.
pub fn start_units_and_wait(
    units: &[String],
    deadline: std::time::Instant,
    cancelled: &mut dyn FnMut(std::time::Duration) -> bool,
) -> StartEnd {
    let mut args = vec!["start", "--"];
    args.extend(units.iter().map(String::as_str));
    let command = format!("systemctl {}", args.join(" "));
    let child = Command::new("systemctl")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(source) => return StartEnd::Done(Err(SystemError::Spawn { command, source })),
    };
    let stop = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                return StartEnd::Done(if status.success() {
                    Ok(())
                } else {
                    Err(SystemError::Failed {
                        command,
                        status: status.to_string(),
                        stderr: stderr.trim().to_owned(),
                    })
                });
            }
            Ok(None) => {}
            Err(source) => {
                stop(&mut child);
                return StartEnd::Done(Err(SystemError::Spawn { command, source }));
            }
        }
        if std::time::Instant::now() >= deadline {
            stop(&mut child);
            return StartEnd::TimedOut;
        }
        if cancelled(std::time::Duration::from_millis(100)) {
            stop(&mut child);
            return StartEnd::Cancelled;
        }
    }
}

/// Which of `units` are up, in their order, for units whose start jobs are
/// known to have finished: asked of systemd over its private socket
/// ([`crate::sdbus`]) when it answers and every unit is active (the common
/// case, no process started), else from one `systemctl show`, which also
/// tells a finished oneshot; empty if neither answers.
pub fn units_up_at_once(units: &[String]) -> Vec<bool> {
    let names: Vec<String> = units.iter().map(|u| full_unit_name(u)).collect();
    let socket = Path::new(crate::sdbus::PRIVATE_SOCKET);
    match crate::sdbus::list_units_by_names(socket, &names, std::time::Duration::from_secs(10)) {
        Ok(states) if states.iter().all(|s| s.active == "active") => {
            return vec![true; units.len()];
        }
        Ok(_) => {}
        Err(e) => crate::log::info!(
            "asking systemd over {}: {e}; asking systemctl",
            socket.display()
        ),
    }
    unit_statuses(units)
        .map(|all| all.iter().map(UnitStatus::is_up).collect())
        .unwrap_or_default()
}

/// A unit's full name: as given if it ends with a unit type, else a
/// service (as systemctl reads a bare name).
pub fn full_unit_name(unit: &str) -> String {
    const TYPES: [&str; 11] = [
        "service",
        "socket",
        "target",
        "device",
        "mount",
        "automount",
        "swap",
        "timer",
        "path",
        "slice",
        "scope",
    ];
    match unit.rsplit_once('.') {
        Some((_, kind)) if TYPES.contains(&kind) => unit.to_owned(),
        _ => format!("{unit}.service"),
    }
}

/// The states of `units`, in their order, from one `systemctl show`; no
/// job check (see [`unit_status`]): for units whose start jobs are known
/// to have finished.
pub fn unit_statuses(units: &[String]) -> Result<Vec<UnitStatus>, SystemError> {
    let mut args = vec![
        "show",
        "-p",
        "Id,ActiveState,SubState,Result,Type,LoadState,ConditionResult",
        "--",
    ];
    args.extend(units.iter().map(String::as_str));
    let text = run("systemctl", &args)?;
    let statuses = parse_unit_statuses(&text);
    if statuses.len() == units.len() {
        Ok(statuses)
    } else {
        Err(SystemError::Failed {
            command: format!("systemctl {}", args.join(" ")),
            status: "success".to_owned(),
            stderr: format!("{} units asked, {} described", units.len(), statuses.len()),
        })
    }
}

/// `systemctl show` of several units: one block of properties per unit,
/// blocks separated by an empty line.
fn parse_unit_statuses(text: &str) -> Vec<UnitStatus> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(parse_unit_status)
        .collect()
}

/// Whether the unit (with its drop-ins) has a `ConditionVirtualization=`:
/// a skip caused by it is the composition's intent, not a failure.
pub fn virtualization_conditioned(unit: &str) -> bool {
    run("systemctl", &["cat", "--", unit]).is_ok_and(|text| has_virtualization_condition(&text))
}

fn has_virtualization_condition(unit_text: &str) -> bool {
    unit_text
        .lines()
        .any(|l| l.trim_start().starts_with("ConditionVirtualization="))
}

/// The properties of a unit that tell whether it is up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitStatus {
    pub active: String,
    pub sub: String,
    pub result: String,
    pub kind: String,
    pub load: String,
    /// `yes`/`no`: whether the unit's `Condition*=` held when last
    /// checked (`no` also for a unit never started).
    pub condition: String,
    /// Whether a job (our start) is still queued or running for it.
    pub job_pending: bool,
}

impl UnitStatus {
    /// Active, or a oneshot service that ran and exited successfully
    /// (without `RemainAfterExit` such a unit goes back to `inactive`).
    pub fn is_up(&self) -> bool {
        self.active == "active"
            || (self.kind == "oneshot"
                && self.active == "inactive"
                && self.result == "success"
                && !self.skipped())
    }

    pub fn has_failed(&self) -> bool {
        self.active == "failed"
            || self.load == "not-found"
            || self.load == "error"
            || self.skipped()
    }

    /// Its start job ran but a `Condition*=` did not hold, so systemd
    /// skipped it: it will stay inactive, waiting longer is pointless.
    pub fn skipped(&self) -> bool {
        // systemd 252 records no condition timestamp for a skipped start,
        // so "the start job is gone and the unit is still inactive with a
        // failed condition" is how a skip is told from "not started yet".
        self.active == "inactive" && self.condition == "no" && !self.job_pending
    }

    pub fn describe(&self) -> String {
        if self.load == "not-found" {
            "not found".to_owned()
        } else if self.skipped() {
            "skipped: a Condition in the unit does not hold".to_owned()
        } else {
            format!("{}/{}", self.active, self.sub)
        }
    }
}

pub fn unit_status(unit: &str) -> Result<UnitStatus, SystemError> {
    // A name without a type suffix is a service, as for systemctl itself.
    let full = full_unit_name(unit);
    // The jobs first, then the state: a start job that runs between the
    // two reads is then seen as pending, never as "gone" next to the
    // state from before it ran (inactive, and a condition result of "no",
    // which is also what a unit that never started shows): that race
    // made a slow start look like a skip on a busy host.
    let jobs = run(
        "systemctl",
        &["list-jobs", "--no-legend", "--plain", "--", &full],
    )?;
    let text = run(
        "systemctl",
        &[
            "show",
            "-p",
            "ActiveState,SubState,Result,Type,LoadState,ConditionResult",
            "--",
            unit,
        ],
    )?;
    let mut status = parse_unit_status(&text);
    status.job_pending = jobs
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&full));
    Ok(status)
}

fn parse_unit_status(text: &str) -> UnitStatus {
    let mut status = UnitStatus::default();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once('=') {
            let slot = match key {
                "ActiveState" => &mut status.active,
                "SubState" => &mut status.sub,
                "Result" => &mut status.result,
                "Type" => &mut status.kind,
                "LoadState" => &mut status.load,
                "ConditionResult" => &mut status.condition,
                _ => continue,
            };
            *slot = value.to_owned();
        }
    }
    status
}

/// The last 50 journal lines of a unit, or why they could not be read (the
/// caller is already reporting a failure; this is supporting detail).
pub fn journal_tail(unit: &str) -> String {
    match run("journalctl", &["-u", unit, "-n", "50", "--no-pager"]) {
        Ok(text) => text,
        Err(e) => format!("(no journal: {e})"),
    }
}

/// `systemctl is-system-running` (which exits non-zero for `degraded`, so
/// its stdout is read either way).
pub fn system_state() -> Option<String> {
    if !systemd_running() {
        return None;
    }
    let output = Command::new("systemctl")
        .arg("is-system-running")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_virtualization_condition_is_found_in_the_unit_or_a_drop_in() {
        let text = "# /etc/systemd/system/nfs-server.service\n[Unit]\nDescription=NFS\n\n\
                    # /etc/systemd/system/nfs-server.service.d/vm.conf\n[Unit]\n  ConditionVirtualization=!container\n";
        assert!(has_virtualization_condition(text));
        assert!(!has_virtualization_condition(
            "[Unit]\nConditionPathExists=/etc/exports\n# ConditionVirtualization=vm\n"
        ));
    }

    #[test]
    fn an_address_the_engine_gave_is_recognised() {
        let out = "2: eth0    inet 10.44.0.11/24 brd 10.44.0.255 scope global eth0\\       valid_lft forever preferred_lft forever\n\
                   2: eth0    inet6 fe80::5054:ff:fe2c:b/64 scope link \\       valid_lft forever preferred_lft forever\n";
        assert!(has_address(out, "10.44.0.11/24"));
        assert!(!has_address(out, "10.44.0.1/24"));
        assert!(!has_address(out, "10.44.0.11/16"));
        assert!(!has_address("", "10.44.0.11/24"));
    }

    #[test]
    fn interfaces_are_found_by_mac() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mac) in [("lo", "00:00:00:00:00:00"), ("ens4", "52:54:00:12:34:56")] {
            fs::create_dir(dir.path().join(name)).unwrap();
            fs::write(dir.path().join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        assert_eq!(
            interface_by_mac(dir.path(), "52:54:00:12:34:56").unwrap(),
            "ens4"
        );
        assert_eq!(
            interface_by_mac(dir.path(), "52:54:00:12:34:56".to_uppercase().as_str()).unwrap(),
            "ens4"
        );
        assert_eq!(
            interface_by_mac(dir.path(), "52:54:00:00:00:01")
                .unwrap_err()
                .to_string(),
            "no network interface has MAC address 52:54:00:00:00:01"
        );
    }

    #[test]
    fn unit_status_is_parsed() {
        let status = parse_unit_status(
            "Type=oneshot\nResult=success\nLoadState=loaded\nActiveState=inactive\nSubState=dead\n",
        );
        assert!(status.is_up());
        let status = parse_unit_status("ActiveState=failed\nSubState=failed\nLoadState=loaded\n");
        assert!(status.has_failed());
        assert_eq!(status.describe(), "failed/failed");
        let status = parse_unit_status("LoadState=not-found\nActiveState=inactive\n");
        assert!(status.has_failed());
        assert_eq!(status.describe(), "not found");
        // Skipped for an unmet condition (slurmd without slurm.conf).
        let skipped = "Type=simple\nResult=success\nLoadState=loaded\nActiveState=inactive\nSubState=dead\nConditionResult=no\nConditionTimestampMonotonic=18750000\n";
        let status = parse_unit_status(skipped);
        assert!(status.has_failed() && !status.is_up());
        assert!(
            status.describe().contains("Condition"),
            "{}",
            status.describe()
        );
        let oneshot = skipped.replace("Type=simple", "Type=oneshot");
        assert!(!parse_unit_status(&oneshot).is_up());
        // Not started yet: no condition checked, keep waiting.
        let pending = parse_unit_status("ActiveState=inactive\nLoadState=loaded\nConditionResult=yes\nConditionTimestampMonotonic=0\n");
        assert!(!pending.has_failed() && !pending.is_up());
    }

    #[test]
    fn a_bare_name_is_a_service_and_a_typed_one_is_kept() {
        assert_eq!(full_unit_name("munge"), "munge.service");
        assert_eq!(full_unit_name("ssh.service"), "ssh.service");
        assert_eq!(full_unit_name("home.automount"), "home.automount");
        assert_eq!(full_unit_name("srv-home.mount"), "srv-home.mount");
        // A dot that ends no unit type is part of a service's name.
        assert_eq!(full_unit_name("etcd.v3"), "etcd.v3.service");
    }

    /// `systemctl show` of several units, as systemd 252 prints it (an
    /// empty `Type=` for a unit that is not a service or not found).
    #[test]
    fn statuses_of_several_units_are_parsed_in_their_order() {
        let text = "Type=notify\nResult=success\nId=ssh.service\nLoadState=loaded\nActiveState=active\nSubState=running\nConditionResult=yes\n\n\
                    Result=success\nId=home.automount\nLoadState=loaded\nActiveState=active\nSubState=waiting\nConditionResult=yes\n\n\
                    Type=\nResult=success\nId=nosuch.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nConditionResult=no\n";
        let statuses = parse_unit_statuses(text);
        assert_eq!(statuses.len(), 3);
        assert!(statuses[0].is_up() && statuses[0].kind == "notify");
        assert!(statuses[1].is_up() && statuses[1].sub == "waiting");
        assert!(statuses[2].has_failed() && statuses[2].describe() == "not found");
        assert!(parse_unit_statuses("").is_empty());
    }
}
