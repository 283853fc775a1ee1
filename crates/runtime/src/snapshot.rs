//! Role snapshots (`docs/snapshots.md`): one VM of a role booted until its
//! agent answers and systemd has finished starting, its state saved with
//! QEMU's migration into the store, and every node of the role started
//! from it instead of booting.
//!
//! - The guest's RAM is a file the template VM maps shared: it *is* the
//!   snapshot's RAM, and migration with the `x-ignore-shared` capability
//!   writes only the devices' state (a few hundred KiB). Clones map the
//!   file privately (copy on write), so the pages no clone wrote are one
//!   copy in the host's page cache for all of them.
//! - The kernel, initramfs and erofs root are the image's, referenced by
//!   path, never copied; the image key is part of the snapshot's key.
//! - An entry is `<root>/<key>/` with `ram`, `state` and `meta.json`, made
//!   in `<root>/.tmp/` and renamed into place: complete or absent.
//! - The template's NICs have placeholder MACs ([`placeholder_mac`]);
//!   a clone's agent gives each NIC its plan's MAC before activation, with
//!   a machine id, host entropy and the host's clock (`Identity`).

use std::fs;
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use testbed_proto::{Client, ClientOptions, ExecRequest};

use crate::accel::Accel;
use crate::qemu::{self, Ram, VmConfig, VmProcess};
use crate::qmp::Qmp;

/// Bumped whenever what a snapshot holds, or how it is restored, changes:
/// every older snapshot's key then differs.
pub const FORMAT: u32 = 1;

/// The RAM file, the device state and the description of an entry.
pub const RAM_FILE: &str = "ram";
pub const STATE_FILE: &str = "state";
pub const META_FILE: &str = "meta.json";
/// The template's console: the boot every clone skipped, which a clone's
/// console log starts with.
pub const CONSOLE_FILE: &str = "console.log";

/// How long saving or loading the device state may take (it is a few
/// hundred KiB; this bounds a hung QEMU).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a migration may show no status at all (it has not started:
/// the `exec:` command failed, say) before it counts as failed.
const NOT_STARTED: Duration = Duration::from_secs(10);

/// The MAC of a template's NIC number `index`: locally administered, and
/// never one the plan gives (those start with `52:54:00`).
pub fn placeholder_mac(index: usize) -> String {
    format!("02:74:62:00:00:{:02x}", index & 0xff)
}

/// What a snapshot was made from and for; `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    pub key: String,
    /// The store key of the image it was booted from; `store gc` removes
    /// the snapshot when that entry is gone.
    pub image: String,
    /// `qemu-system-x86_64 --version`'s first line.
    pub qemu: String,
    pub accel: String,
    pub memory_mib: u64,
    pub cpus: u32,
    pub nics: usize,
    /// The template's NICs' MACs, in order.
    pub macs: Vec<String>,
    /// When it was made (seconds since the epoch), and how long it took.
    pub created_unix: u64,
    pub made_in_ms: u64,
}

/// A complete entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSnapshot {
    pub dir: PathBuf,
    pub meta: Meta,
}

impl RoleSnapshot {
    pub fn ram(&self) -> PathBuf {
        self.dir.join(RAM_FILE)
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Appends the template's boot to `log` (a clone's console log), then
    /// a line saying the machine was restored here, so that `testbed logs`
    /// shows a boot as it does for a booted node.
    pub fn append_boot(&self, log: &Path) {
        let boot = fs::read(self.dir.join(CONSOLE_FILE)).unwrap_or_default();
        let marker = format!(
            "\r\n[testbed] the boot above is role snapshot {}'s; this node was restored from it here\r\n",
            &self.meta.key[..12.min(self.meta.key.len())]
        );
        let _ = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| {
                f.write_all(&boot)?;
                f.write_all(marker.as_bytes())
            });
    }

    /// Removes the entry (one that did not restore), first moving it out
    /// of the way so that no one finds it half removed. Clones already
    /// running keep their mapping of the RAM file.
    pub fn discard(&self) {
        let Some(root) = self.dir.parent() else {
            return;
        };
        let aside = root.join(".tmp").join(format!(
            "{}.discarded.{}",
            self.meta.key,
            std::process::id()
        ));
        let _ = fs::create_dir_all(root.join(".tmp"));
        if fs::rename(&self.dir, &aside).is_ok() {
            let _ = fs::remove_dir_all(&aside);
        }
    }

    /// The entry of `key` under `root`, if it is complete: its description
    /// reads and names this key, and the RAM file has the guest's size.
    pub fn find(root: &Path, key: &str) -> Option<RoleSnapshot> {
        let dir = root.join(key);
        let meta: Meta = serde_json::from_slice(&fs::read(dir.join(META_FILE)).ok()?).ok()?;
        let ram = fs::metadata(dir.join(RAM_FILE)).ok()?;
        // The description is read back from disk: a size that overflows
        // is a damaged entry, not a panic.
        let complete = meta.key == key
            && meta.memory_mib.checked_mul(1024 * 1024) == Some(ram.len())
            && dir.join(STATE_FILE).is_file();
        complete.then_some(RoleSnapshot { dir, meta })
    }
}

/// Everything a snapshot depends on besides the image: the QEMU it was made
/// with and, under KVM, the host CPU (its features are the guest's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub qemu: String,
    pub cpu: String,
}

impl Host {
    /// Asks `qemu` for its version; reads the CPU model for KVM.
    pub fn probe(qemu_bin: &Path, accel: &Accel) -> Result<Host, String> {
        let out = std::process::Command::new(qemu_bin)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {} --version: {e}", qemu_bin.display()))?;
        let qemu = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let cpu = if matches!(accel, Accel::Kvm) {
            fs::read_to_string("/proc/cpuinfo")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("model name") || l.starts_with("flags"))
                .take(2)
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            String::new()
        };
        Ok(Host { qemu, cpu })
    }
}

/// The template of a node's role: `node`'s VM with placeholder MACs, its
/// sockets and console log in `dir`, its RAM a shared file at `ram`, and
/// its NICs connected to nothing (their peer sockets are never bound).
pub fn template(node: &VmConfig, dir: &Path, ram: &Path) -> VmConfig {
    let mut t = node.clone();
    t.name = "snapshot".to_owned();
    for (i, nic) in t.nics.iter_mut().enumerate() {
        nic.mac = placeholder_mac(i);
        nic.local = dir.join(format!("n{i}.sock"));
        nic.remote = dir.join(format!("n{i}.peer"));
    }
    t.agent_socket = dir.join("a.sock");
    t.console_socket = dir.join("c.sock");
    t.console_log = dir.join("console.log");
    t.qmp_socket = dir.join("q.sock");
    t.ram = Ram::File {
        path: ram.to_owned(),
        shared: true,
    };
    t.incoming = false;
    t
}

/// The key of the snapshot for `node` (a VM of the role whose image has
/// the store key `image`): a hash of the format, the host, the image key
/// and the template's whole command line with every path made canonical,
/// so that any flag, the memory, the CPUs, the NIC count, the accelerator
/// or the kernel command line changing gives another key.
pub fn key(host: &Host, image: &str, node: &VmConfig) -> String {
    let mut canonical = template(node, Path::new("/s"), Path::new("/s/ram"));
    canonical.kernel = "/image/kernel".into();
    canonical.initramfs = "/image/initramfs".into();
    canonical.rootfs = "/image/rootfs.erofs".into();
    let mut hash = Sha256::new();
    hash.update(format!("testbed role snapshot {FORMAT}\n"));
    hash.update(format!(
        "qemu {}\ncpu {}\nimage {image}\n",
        host.qemu, host.cpu
    ));
    for arg in qemu::argv(&canonical) {
        hash.update(arg.len().to_le_bytes());
        hash.update(arg);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Quotes `path` for the shell QEMU's `exec:` migration runs.
fn shell_quoted(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', "'\\''"))
}

/// What making a snapshot needs.
#[derive(Debug)]
pub struct Making<'a> {
    pub qemu_bin: &'a Path,
    pub host: &'a Host,
    /// The store key of the role's image.
    pub image: &'a str,
    /// One node of the role, as it would boot cold.
    pub node: &'a VmConfig,
    /// The store's snapshot folder.
    pub root: &'a Path,
    /// A short folder for the template's sockets (the cluster's state
    /// directory is short enough; the store may not be).
    pub work: &'a Path,
    /// How long the template may take to boot.
    pub boot_timeout: Duration,
}

/// Boots the template, waits until its agent answers and systemd is done
/// starting, stops it and saves its devices; then moves the entry into
/// place. Returns the entry (an existing one if another process made it
/// meanwhile).
pub fn make(m: &Making<'_>) -> Result<RoleSnapshot, String> {
    let started = Instant::now();
    let key = key(m.host, m.image, m.node);
    let tmp_root = m.root.join(".tmp");
    fs::create_dir_all(&tmp_root)
        .map_err(|e| format!("cannot create {}: {e}", tmp_root.display()))?;
    let tmp = tmp_root.join(format!("{key}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let _ = fs::remove_dir_all(m.work);
    fs::create_dir_all(m.work).map_err(|e| format!("cannot create {}: {e}", m.work.display()))?;
    let result = boot_and_save(m, &tmp, &key, started);
    let _ = fs::copy(m.work.join("console.log"), tmp.join(CONSOLE_FILE));
    let _ = fs::remove_dir_all(m.work);
    match result {
        Ok(meta) => {
            let encoded = serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?;
            fs::File::create(tmp.join(META_FILE))
                .and_then(|mut f| f.write_all(&encoded).and_then(|()| f.sync_all()))
                .map_err(|e| format!("cannot write the snapshot's {META_FILE}: {e}"))?;
            let dest = m.root.join(&key);
            if let Err(e) = fs::rename(&tmp, &dest) {
                let _ = fs::remove_dir_all(&tmp);
                // Another process made the same entry first.
                if let Some(found) = RoleSnapshot::find(m.root, &key) {
                    return Ok(found);
                }
                return Err(format!(
                    "cannot move the snapshot to {}: {e}",
                    dest.display()
                ));
            }
            RoleSnapshot::find(m.root, &key)
                .ok_or_else(|| format!("the snapshot {} is incomplete", dest.display()))
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn boot_and_save(m: &Making<'_>, tmp: &Path, key: &str, started: Instant) -> Result<Meta, String> {
    let ram = tmp.join(RAM_FILE);
    let config = template(m.node, m.work, &ram);
    let mut vm = VmProcess::spawn(m.qemu_bin, &config, &m.work.join("qemu.log"))
        .map_err(|e| e.to_string())?;
    let tail = |vm: &VmProcess| {
        format!(
            "; the template's console:\n{}",
            fs::read_to_string(&config.console_log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        ) + &format!("\nqemu's log:\n{}", vm.log_tail(10))
    };
    let deadline = started + m.boot_timeout;
    let stream = loop {
        match UnixStream::connect(&config.agent_socket) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                return Err(format!(
                    "cannot connect to the template's agent: {e}{}",
                    tail(&vm)
                ))
            }
        }
    };
    let closer = stream.try_clone().map_err(|e| e.to_string())?;
    let reader = stream.try_clone().map_err(|e| e.to_string())?;
    let options = ClientOptions {
        node: config.name.clone(),
        hello_timeout: deadline.saturating_duration_since(Instant::now()),
        ..ClientOptions::default()
    };
    let client = Client::with_options(reader, stream, options)
        .map_err(|e| format!("the template's agent did not answer: {e}{}", tail(&vm)))?;
    // Snapshot a settled system: what the clones would otherwise each
    // spend booting.
    let remaining = deadline.saturating_duration_since(Instant::now());
    let settle = ExecRequest::shell("systemctl is-system-running --wait")
        .timeout(remaining.max(Duration::from_secs(1)));
    client
        .exec_output(settle)
        .map_err(|e| format!("the template's boot did not finish: {e}{}", tail(&vm)))?;
    let mut qmp = Qmp::connect_node(&config.name, &config.qmp_socket, MIGRATION_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let qmp_err = |e: crate::qmp::QmpError| format!("saving the template failed: {e}");
    // End the session and let the guest see it ended: its agent closes the
    // port, reopens it and reads it (end of file, kept open) until the next
    // host connects. Saved in the middle of the session instead, a clone's
    // agent would take the next host's first bytes for frames of the old
    // session and never answer.
    drop(client);
    let _ = closer.shutdown(std::net::Shutdown::Both);
    wait_port_closed(&mut qmp).map_err(|e| format!("{e}{}", tail(&vm)))?;
    qmp.stop().map_err(qmp_err)?;
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
    )
    .map_err(qmp_err)?;
    let state = tmp.join(STATE_FILE);
    qmp.execute(
        "migrate",
        Some(json!({"uri": format!("exec:cat > {}", shell_quoted(&state))})),
    )
    .map_err(qmp_err)?;
    wait_migration(&mut qmp).map_err(|e| format!("saving the template failed: {e}"))?;
    let _ = qmp.quit();
    let _ = vm.wait_timeout(Duration::from_secs(30));
    let _ = vm.kill();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Ok(Meta {
        format: FORMAT,
        key: key.to_owned(),
        image: m.image.to_owned(),
        qemu: m.host.qemu.clone(),
        accel: format!("{:?}", m.node.accel).to_lowercase(),
        memory_mib: m.node.memory_mib,
        cpus: m.node.cpus,
        nics: m.node.nics.len(),
        macs: config.nics.iter().map(|n| n.mac.clone()).collect(),
        created_unix: now.as_secs(),
        made_in_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Waits until the guest has closed its end of the agent's port. (QEMU
/// sends at most one `VSERPORT_CHANGE` per second and port, the first at
/// once: the agent opened the port at boot, long before, so its close
/// comes through before the reopen 200 ms later.)
fn wait_port_closed(qmp: &mut Qmp) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = qmp
            .wait_event("VSERPORT_CHANGE", left)
            .map_err(|e| format!("the template's agent did not close its port: {e}"))?;
        let ours = event.data.get("id").and_then(|v| v.as_str()) == Some(qemu::AGENT_PORT_ID);
        if ours && event.data.get("open").and_then(|v| v.as_bool()) == Some(false) {
            return Ok(());
        }
    }
}

/// Polls `query-migrate` until the migration completed (Ok) or failed.
fn wait_migration(qmp: &mut Qmp) -> Result<(), String> {
    wait_migration_for(qmp, MIGRATION_TIMEOUT)
}

fn wait_migration_for(qmp: &mut Qmp, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let info = qmp
            .execute("query-migrate", None)
            .map_err(|e| e.to_string())?;
        match info.get("status").and_then(|s| s.as_str()) {
            None if start.elapsed() > NOT_STARTED => {
                return Err(format!(
                    "QEMU did not start the migration within {}s",
                    NOT_STARTED.as_secs()
                ))
            }
            Some("completed") => return Ok(()),
            Some(status @ ("failed" | "cancelled")) => {
                let why = info
                    .get("error-desc")
                    .and_then(|s| s.as_str())
                    .unwrap_or("no reason given");
                return Err(format!("migration {status}: {why}"));
            }
            _ if Instant::now() > deadline => {
                return Err(format!(
                    "migration not done after {}s: {info}",
                    timeout.as_secs()
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The clone of `snapshot` for `node`: `node`'s VM, its RAM the snapshot's
/// file mapped privately, waiting for the incoming device state.
pub fn clone_config(node: &VmConfig, snapshot: &RoleSnapshot) -> VmConfig {
    let mut c = node.clone();
    c.ram = Ram::File {
        path: snapshot.ram(),
        shared: false,
    };
    c.incoming = true;
    c
}

/// Loads the snapshot's device state into a clone QEMU started from
/// [`clone_config`] and lets it run.
pub fn restore(qmp: &mut Qmp, snapshot: &RoleSnapshot) -> Result<(), String> {
    // Another node of the cluster may have found it bad and removed it.
    if !snapshot.state().is_file() {
        return Err(format!("{} is gone", snapshot.state().display()));
    }
    load(qmp, &snapshot.state(), true, MIGRATION_TIMEOUT)
}

/// Loads the machine saved in `file` into a QEMU started with `-incoming
/// defer` and lets it run. `ignore_shared`: the RAM is not in the file
/// (a role snapshot's, whose RAM is a file of its own).
pub fn load(
    qmp: &mut Qmp,
    file: &Path,
    ignore_shared: bool,
    timeout: Duration,
) -> Result<(), String> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": ignore_shared}]})),
    )
    .map_err(|e| e.to_string())?;
    qmp.execute(
        "migrate-incoming",
        Some(json!({"uri": format!("exec:cat {}", shell_quoted(file))})),
    )
    .map_err(|e| e.to_string())?;
    wait_migration_for(qmp, timeout)?;
    qmp.cont().map_err(|e| e.to_string())?;
    Ok(())
}

/// Saves the whole machine of a stopped QEMU (RAM and devices) into
/// `file`, at the disk's speed (QEMU's default bandwidth limit is for
/// live migration over a network). The machine stays stopped.
pub fn save_whole(qmp: &mut Qmp, file: &Path, timeout: Duration) -> Result<(), String> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": false}]})),
    )
    .map_err(|e| e.to_string())?;
    qmp.execute(
        "migrate-set-parameters",
        Some(json!({"max-bandwidth": 1u64 << 40})),
    )
    .map_err(|e| e.to_string())?;
    qmp.execute(
        "migrate",
        Some(json!({"uri": format!("exec:cat > {}", shell_quoted(file))})),
    )
    .map_err(|e| e.to_string())?;
    wait_migration_for(qmp, timeout)
}

/// How long saving or loading a whole machine of `memory_mib` may take:
/// the device state's bound plus 10 s per GiB (a disk writes far faster).
pub fn whole_machine_timeout(memory_mib: u64) -> Duration {
    MIGRATION_TIMEOUT + Duration::from_secs(10 * memory_mib.div_ceil(1024))
}

/// Waits until the guest's agent has seen its host go: the agent port's
/// first change after the host closed its end (its close; or, when QEMU
/// held the close back under its one-event-per-second limit and the
/// reopen replaced it, the reopen, which follows a close).
pub fn wait_agent_released(qmp: &mut Qmp, node: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = qmp.wait_event("VSERPORT_CHANGE", left).map_err(|e| {
            format!("{node}: the agent did not let its channel go within {timeout:?}: {e}")
        })?;
        if event.data.get("id").and_then(|v| v.as_str()) == Some(qemu::AGENT_PORT_ID) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::NicConfig;

    fn node(name: &str, mac: &str, memory_mib: u64) -> VmConfig {
        VmConfig {
            name: name.to_owned(),
            memory_mib,
            cpus: 1,
            accel: Accel::Tcg,
            kernel: "/store/abc/kernel".into(),
            initramfs: "/store/abc/initramfs".into(),
            rootfs: "/store/abc/rootfs.erofs".into(),
            cmdline: "console=ttyS0".to_owned(),
            nics: vec![NicConfig {
                mac: mac.to_owned(),
                local: format!("/run/{name}/nic").into(),
                remote: format!("/run/{name}/sw").into(),
            }],
            agent_socket: format!("/run/{name}/agent").into(),
            console_socket: format!("/run/{name}/console").into(),
            console_log: format!("/run/{name}/console.log").into(),
            qmp_socket: format!("/run/{name}/qmp").into(),
            ram: Ram::Memfd,
            incoming: false,
        }
    }

    fn host() -> Host {
        Host {
            qemu: "QEMU emulator version 7.2.0".to_owned(),
            cpu: String::new(),
        }
    }

    #[test]
    fn nodes_of_a_role_share_a_key_and_what_changes_the_machine_changes_it() {
        let a = key(&host(), "abc", &node("compute1", "52:54:00:00:00:01", 512));
        let b = key(&host(), "abc", &node("compute2", "52:54:00:00:00:02", 512));
        assert_eq!(a, b, "names, MACs and sockets are not part of the key");
        assert_eq!(a.len(), 64);
        let mut moved = node("compute1", "52:54:00:00:00:01", 512);
        moved.kernel = "/elsewhere/kernel".into();
        assert_eq!(a, key(&host(), "abc", &moved), "the store's place is not");
        let mut two_nics = node("compute1", "52:54:00:00:00:01", 512);
        two_nics.nics.push(two_nics.nics[0].clone());
        let mut two_cpus = node("compute1", "52:54:00:00:00:01", 512);
        two_cpus.cpus = 2;
        let mut cmdline = node("compute1", "52:54:00:00:00:01", 512);
        cmdline.cmdline.push_str(" quiet");
        let newer = Host {
            qemu: "QEMU emulator version 8.0.0".to_owned(),
            cpu: String::new(),
        };
        for other in [
            key(&host(), "abd", &node("compute1", "52:54:00:00:00:01", 512)),
            key(&host(), "abc", &node("compute1", "52:54:00:00:00:01", 1024)),
            key(&host(), "abc", &two_nics),
            key(&host(), "abc", &two_cpus),
            key(&host(), "abc", &cmdline),
            key(&newer, "abc", &node("compute1", "52:54:00:00:00:01", 512)),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn the_template_reaches_nothing_and_a_clone_maps_the_ram_privately() {
        let n = node("compute1", "52:54:00:00:00:01", 512);
        let t = template(&n, Path::new("/w"), Path::new("/snap/ram"));
        assert_eq!(t.nics[0].mac, placeholder_mac(0));
        assert!(t.nics[0].remote.starts_with("/w"), "{:?}", t.nics[0]);
        let args = qemu::argv(&t).join(" ");
        assert!(
            args.contains("memory-backend-file,id=ram,size=512M,mem-path=/snap/ram,share=on"),
            "{args}"
        );
        assert!(!args.contains("-incoming"), "{args}");
        let snap = RoleSnapshot {
            dir: "/snap".into(),
            meta: Meta {
                format: FORMAT,
                key: "k".into(),
                image: "abc".into(),
                qemu: String::new(),
                accel: "tcg".into(),
                memory_mib: 512,
                cpus: 1,
                nics: 1,
                macs: vec![placeholder_mac(0)],
                created_unix: 0,
                made_in_ms: 0,
            },
        };
        let c = clone_config(&n, &snap);
        let args = qemu::argv(&c).join(" ");
        assert!(args.contains("mem-path=/snap/ram,share=off"), "{args}");
        assert!(args.ends_with("-incoming defer"), "{args}");
        assert!(args.contains("mac=52:54:00:00:00:01"), "{args}");
    }

    #[test]
    fn an_incomplete_entry_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k");
        fs::create_dir_all(&dir).unwrap();
        assert!(RoleSnapshot::find(tmp.path(), "k").is_none());
        let meta = Meta {
            format: FORMAT,
            key: "k".into(),
            image: "abc".into(),
            qemu: String::new(),
            accel: "tcg".into(),
            memory_mib: 1,
            cpus: 1,
            nics: 0,
            macs: Vec::new(),
            created_unix: 0,
            made_in_ms: 0,
        };
        fs::write(dir.join(META_FILE), serde_json::to_vec(&meta).unwrap()).unwrap();
        fs::write(dir.join(STATE_FILE), b"x").unwrap();
        fs::write(dir.join(RAM_FILE), vec![0u8; 4096]).unwrap();
        assert!(
            RoleSnapshot::find(tmp.path(), "k").is_none(),
            "the RAM is short"
        );
        fs::write(dir.join(RAM_FILE), vec![0u8; 1024 * 1024]).unwrap();
        assert!(RoleSnapshot::find(tmp.path(), "k").is_some());
        assert!(RoleSnapshot::find(tmp.path(), "other").is_none());
        // A complete entry under another key's name (its meta.json names
        // "k"): a mismatch, not found.
        let other = tmp.path().join("m");
        fs::create_dir_all(&other).unwrap();
        for file in [META_FILE, STATE_FILE, RAM_FILE] {
            fs::copy(dir.join(file), other.join(file)).unwrap();
        }
        assert!(RoleSnapshot::find(tmp.path(), "m").is_none());
    }
}
