//! Real QEMU processes, started paused (`-S`) with the runtime's own command
//! line: what QEMU opens, binds and answers before any guest code runs, how
//! it fails, and how it dies. No image is needed (see
//! `support::write_fake_kernel`); the package qemu-system-x86 is.
//!
//! The test harness runs every test on its own thread, and a QEMU dies with
//! the thread that spawned it: each test keeps its VMs within its body.

// The detected accelerator and its reason are shown with --nocapture.
#![allow(clippy::print_stderr)]

mod support;

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::{node, BootFiles, PATIENCE};
use testbed_runtime::accel::{self, Accel};
use testbed_runtime::qemu::{find_qemu, QemuError, VmConfig, VmProcess};
use testbed_runtime::qmp::Qmp;
use testbed_test_support::wait_until;

/// The accelerator this host supports, as the supervisor would pick it.
fn host_accel() -> Accel {
    accel::detect().accel
}

/// Starts `config` paused, logging to `dir/NAME.qemu.log`.
fn spawn_paused(config: &VmConfig, dir: &Path) -> VmProcess {
    let qemu = find_qemu().expect("qemu");
    let log = dir.join(format!("{}.qemu.log", config.name));
    VmProcess::spawn_with(&qemu, config, &["-S"], &log)
        .unwrap_or_else(|e| panic!("cannot start qemu: {e}"))
}

/// The `query-block` entry of the root disk.
fn root_block(qmp: &mut Qmp) -> Value {
    let blocks = qmp.execute("query-block", None).expect("query-block");
    blocks
        .as_array()
        .expect("a list")
        .iter()
        .find(|b| b["inserted"]["node-name"] == "rootfs")
        .unwrap_or_else(|| panic!("no rootfs block node in {blocks}"))
        .clone()
}

#[test]
fn paused_vm_binds_its_sockets_answers_qmp_and_quits() {
    let dir = tempfile::tempdir().unwrap();
    let boot = BootFiles::new(dir.path());
    let config = node(
        "alpha",
        host_accel(),
        &boot,
        dir.path(),
        &["lan", "storage"],
    );
    let mut vm = spawn_paused(&config, dir.path());

    let mut qmp = Qmp::connect_node("alpha", &config.qmp_socket, PATIENCE).expect("qmp");
    let status = qmp.query_status().expect("query-status");
    assert!(
        status == "prelaunch" || status == "paused",
        "status {status}"
    );

    // The root is attached read-only, from the file given.
    let root = root_block(&mut qmp);
    assert_eq!(root["inserted"]["ro"], true, "{root}");
    assert_eq!(
        root["inserted"]["file"],
        config.rootfs.to_str().unwrap(),
        "{root}"
    );

    // QEMU bound each NIC's local socket; a frame from where the switch
    // sits arrives at a NIC whose guest is not running, and QEMU survives.
    for nic in &config.nics {
        assert!(nic.local.exists(), "{} not bound", nic.local.display());
        let switch_side = UnixDatagram::bind(&nic.remote).expect("bind switch side");
        let mut frame = vec![0xffu8; 6];
        frame.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 0x99, 0x88, 0xb5]);
        frame.extend_from_slice(b"hello from the switch");
        switch_side.send_to(&frame, &nic.local).expect("send frame");
    }
    assert_eq!(vm.try_wait().unwrap(), None, "qemu exited after a frame");
    let status = qmp.query_status().expect("query-status after frames");
    assert!(
        status == "prelaunch" || status == "paused",
        "status {status}"
    );

    // The agent's port and the console accept a client; the console's log
    // exists before the guest prints anything.
    UnixStream::connect(&config.agent_socket).expect("agent socket");
    UnixStream::connect(&config.console_socket).expect("console socket");
    assert!(config.console_log.exists());

    // Spawn logged the command line before QEMU's own output.
    let log = std::fs::read_to_string(vm.log_path()).unwrap();
    assert!(log.starts_with("testbed: "), "{log}");
    assert!(
        log.contains(" -name guest=alpha,debug-threads=on "),
        "{log}"
    );

    qmp.quit().expect("quit");
    let exited = vm.wait_timeout(PATIENCE).unwrap();
    let status = exited.expect("qemu still running after quit");
    assert!(status.success(), "{status}");
}

/// `-no-reboot` turns every reset into an exit, the host's too: a node is
/// "rebooted" by starting a new QEMU, and a crash never loops.
#[test]
fn system_reset_ends_qemu_because_of_no_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let boot = BootFiles::new(dir.path());
    let config = node("resetme", host_accel(), &boot, dir.path(), &[]);
    let mut vm = spawn_paused(&config, dir.path());
    let mut qmp = Qmp::connect_node("resetme", &config.qmp_socket, PATIENCE).unwrap();
    qmp.system_reset().expect("system_reset");
    let shutdown = qmp
        .wait_event("SHUTDOWN", PATIENCE)
        .expect("SHUTDOWN event");
    assert_eq!(
        shutdown.data["reason"], "host-qmp-system-reset",
        "{shutdown:?}"
    );
    let status = vm.wait_timeout(PATIENCE).unwrap();
    assert!(status.expect("qemu still running").success());
}

#[test]
fn two_vms_share_one_rootfs_read_only_and_a_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let boot = BootFiles::new(dir.path());
    let a = node("a", host_accel(), &boot, dir.path(), &["lan"]);
    let b = node("b", host_accel(), &boot, dir.path(), &["lan"]);
    let _vm_a = spawn_paused(&a, dir.path());
    let _vm_b = spawn_paused(&b, dir.path());
    for config in [&a, &b] {
        let mut qmp = Qmp::connect_node(&config.name, &config.qmp_socket, PATIENCE).unwrap();
        let root = root_block(&mut qmp);
        assert_eq!(root["inserted"]["ro"], true, "{root}");
        assert_eq!(root["inserted"]["file"], boot.rootfs.to_str().unwrap());
    }

    // QEMU's image locking still protects the shared file: a QEMU that
    // wants it writable cannot start while the readers run.
    let qemu = find_qemu().unwrap();
    let mut writer = Command::new(&qemu)
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-S"])
        .args(["-machine", "q35", "-accel", "tcg", "-m", "64"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio",
            boot.rootfs.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until(PATIENCE, || writer.try_wait().unwrap());
    if status.is_none() {
        let _ = writer.kill();
        let _ = writer.wait();
        panic!("a writable QEMU started on the shared rootfs");
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut writer.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("Failed to get \"write\" lock"), "{stderr}");
}

#[test]
fn startup_failure_is_an_error_with_the_log_tail() {
    let dir = tempfile::tempdir().unwrap();
    let boot = BootFiles::new(dir.path());
    let mut config = node("broken", host_accel(), &boot, dir.path(), &[]);
    config.kernel = dir.path().join("no-such-kernel");
    let qemu = find_qemu().unwrap();
    let err = VmProcess::spawn_with(&qemu, &config, &["-S"], &dir.path().join("broken.log"))
        .expect_err("qemu started without its kernel");
    assert!(matches!(err, QemuError::Exited { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with("qemu of node broken exited during startup (exit status: 1)"),
        "{message}"
    );
    // The tail has QEMU's own reason, naming the missing file.
    assert!(message.contains("no-such-kernel"), "{message}");
    assert!(message.contains("could not open kernel file"), "{message}");
}

#[test]
fn qemu_dies_with_the_thread_that_spawned_it() {
    let dir = tempfile::tempdir().unwrap();
    let boot = BootFiles::new(dir.path());
    let config = node("orphan", host_accel(), &boot, dir.path(), &["lan"]);
    let path = dir.path().to_path_buf();
    // The handle outlives the thread (it is returned, not dropped, so its
    // own kill-on-drop plays no part); only the thread's end may kill QEMU.
    let mut vm = std::thread::spawn(move || spawn_paused(&config, &path))
        .join()
        .expect("spawning thread");
    let status = wait_until(PATIENCE, || vm.try_wait().unwrap())
        .expect("qemu still running after its spawning thread ended");
    assert_eq!(status.signal(), Some(9), "{status}");
}

#[test]
fn kill_ends_a_running_vm_and_reaps_it() {
    let dir = tempfile::tempdir().unwrap();
    let boot = BootFiles::new(dir.path());
    let config = node("victim", host_accel(), &boot, dir.path(), &[]);
    let mut vm = spawn_paused(&config, dir.path());
    let pid = vm.pid();
    assert_eq!(vm.try_wait().unwrap(), None);
    let status = vm.kill().unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
    // Reaped: no process under that pid is our child any more, zombie or
    // not (the pid could only have been reused by someone else's process).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ppid = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split(' ').nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    assert_ne!(ppid, Some(std::process::id()), "{stat}");
    // Killing again reports the same end.
    assert_eq!(vm.kill().unwrap().signal(), Some(9));
}

#[test]
fn detect_explains_its_choice_on_this_host() {
    let detection = accel::detect();
    eprintln!("accelerator: {} ({})", detection.accel, detection.reason);
    assert!(!detection.reason.is_empty());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let has_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(str::split_whitespace)
        .any(|w| w == "vmx" || w == "svm");
    // Without vmx/svm (as on the reference machine, whose /dev/kvm opens
    // but is paravirtual) KVM must never be chosen.
    if !has_flag {
        assert_eq!(detection.accel, Accel::Tcg, "{}", detection.reason);
        assert!(
            detection.reason.contains("neither vmx nor svm"),
            "{}",
            detection.reason
        );
    }
}
