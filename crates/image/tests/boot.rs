//! Boots a real node image under QEMU (TCG): the kernel and stage-1
//! initramfs from `initramfs`, the root from `erofs`, and checks that
//! systemd reaches `multi-user.target` with no failed unit and the guest
//! agent running. The rootfs gets what the builder does to every image
//! (`rootfs::customize` with the agent, then `rootfs::normalize`), so the
//! boot is that of a shipped image. Also checks that the three boot
//! outputs (initramfs, erofs image, rootfs archive) are bit-for-bit
//! reproducible on a real rootfs, and that a stage-1 failure is reported on
//! the serial console and ends the VM.
//!
//! Needs root (mmdebstrap), mmdebstrap, erofs-utils and qemu-system-x86:
//! `scripts/setup-host.sh` installs them.

// Measured times go to stderr, which the test harness shows only with
// `--nocapture` or on failure; the library itself never prints.
#![allow(clippy::print_stderr)]

mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{tail, Vm};
use testbed_image::archive::write_rootfs_tar;
use testbed_image::erofs::{build_erofs, ErofsOptions};
use testbed_image::initramfs::{build_initramfs, copy_kernel, InitramfsOptions, KERNEL_CMDLINE};
use testbed_image::rootfs;
use testbed_test_support::agent_binary;

const EPOCH: u64 = 1_700_000_000;

/// Under TCG a Debian base system reaches multi-user in 10-30 s; this only
/// bounds a hung boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the marker unit prints once `multi-user.target` is active.
const MARKER: &str = "TESTBED-BOOT-TEST multi-user.target=";

/// A unit pulled in by `multi-user.target` and ordered after it. Its script
/// waits until systemd says the boot is finished (no jobs left), then prints
/// on the console whether `multi-user.target` is active, the overall state
/// (`running`, or `degraded` if a unit failed), whether the agent's unit is
/// active, the failed units and when the target was reached, and powers the
/// VM off. This is the test's own tweak of the rootfs; node images do not
/// have it.
const MARKER_UNIT: &str = "\
[Unit]
Description=testbed boot test marker
After=multi-user.target

[Service]
Type=simple
ExecStart=/usr/local/sbin/testbed-boot-marker
";

const MARKER_SCRIPT: &str = r#"#!/bin/sh
system=$(systemctl is-system-running --wait)
target=$(systemctl is-active multi-user.target)
agent=$(systemctl is-active testbed-agent.service)
at=$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)
failed=$(systemctl list-units --failed --plain --no-legend | cut -d' ' -f1 | tr '\n' ' ')
echo "TESTBED-BOOT-TEST multi-user.target=$target agent=$agent system=$system failed=[$failed] reached_us=$at" >/dev/console
systemctl poweroff --no-block
"#;

/// The backend's command line without `quiet`, so that a failing boot
/// leaves the kernel's and systemd's messages in the test output.
fn cmdline() -> String {
    KERNEL_CMDLINE.replace(" quiet", "")
}

/// Whether two files have the same bytes (byte comparison rather than a
/// digest: unoptimized test builds hash hundreds of MiB slowly).
fn same_bytes(a: &Path, b: &Path) -> bool {
    let read =
        |p: &Path| fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    read(a) == read(b)
}

/// Builds kernel, initramfs, erofs root and archive of `rootfs` into `out`.
fn build_outputs(rootfs: &Path, out: &Path) {
    fs::create_dir_all(out).unwrap();
    copy_kernel(rootfs, &out.join("kernel")).unwrap();
    let stage1 = build_initramfs(
        rootfs,
        &out.join("initramfs"),
        &InitramfsOptions {
            epoch: EPOCH,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        stage1.modules.iter().any(|m| m.ends_with("/erofs.ko")),
        "{stage1:?}"
    );
    build_erofs(
        rootfs,
        &out.join("rootfs.erofs"),
        &ErofsOptions {
            epoch: EPOCH,
            ..Default::default()
        },
    )
    .unwrap();
    write_rootfs_tar(rootfs, &out.join("rootfs.tar.gz"), EPOCH).unwrap();
}

#[test]
fn stage1_boots_the_erofs_root_to_multi_user_under_tcg() {
    let tmp = tempfile::Builder::new()
        .prefix("testbed-boot-")
        .tempdir()
        .unwrap();
    // TESTBED_TEST_KEEP=1 keeps the rootfs, outputs and serial logs.
    let tmp = support::keep_if_asked(tmp);
    let t = Instant::now();
    let rootfs = support::build_test_rootfs(tmp.path());
    eprintln!("rootfs ready in {:.1}s", t.elapsed().as_secs_f64());
    let agent = agent_binary();
    rootfs::customize("boot-test", &rootfs, &[], Some(agent)).unwrap();
    rootfs::normalize(&rootfs, EPOCH).unwrap();
    support::write_in(
        &rootfs,
        "/etc/systemd/system/testbed-boot-marker.service",
        MARKER_UNIT,
    );
    support::write_in(
        &rootfs,
        "/usr/local/sbin/testbed-boot-marker",
        MARKER_SCRIPT,
    );
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        rootfs.join("usr/local/sbin/testbed-boot-marker"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let wants = rootfs.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "../testbed-boot-marker.service",
        wants.join("testbed-boot-marker.service"),
    )
    .unwrap();

    // Reproducibility: two builds of every output from the same rootfs.
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let t = Instant::now();
    build_outputs(&rootfs, &a);
    eprintln!("boot outputs built in {:.1}s", t.elapsed().as_secs_f64());
    build_outputs(&rootfs, &b);
    for name in ["kernel", "initramfs", "rootfs.erofs", "rootfs.tar.gz"] {
        assert!(
            same_bytes(&a.join(name), &b.join(name)),
            "{name} differs between two builds"
        );
    }

    // The real boot.
    let mut vm = Vm::boot(
        &a.join("kernel"),
        &a.join("initramfs"),
        Some(&a.join("rootfs.erofs")),
        &cmdline(),
        &tmp.path().join("serial.log"),
    );
    let reached = vm.wait_for_line(MARKER, BOOT_TIMEOUT);
    let exited = vm.wait(Duration::from_secs(120));
    let log = vm.log();
    let Some(reached) = reached else {
        panic!(
            "no boot marker after {BOOT_TIMEOUT:?}; serial console:\n{}\nqemu: {}",
            tail(&log, 60),
            vm.stderr()
        );
    };
    let line = log.lines().find(|l| l.contains(MARKER)).unwrap_or_default();
    assert!(line.contains("multi-user.target=active"), "{line}");
    // The agent's port is absent (no virtio-serial device here): it waits
    // for it, active, without failing or holding up the boot.
    assert!(line.contains(" agent=active "), "{line}");
    assert!(
        line.contains("system=running failed=[]"),
        "units failed during boot: {line}\n{}",
        tail(&log, 60)
    );
    assert!(
        log.contains("testbed-stage1: switching root to /sbin/init"),
        "{}",
        tail(&log, 60)
    );
    assert!(
        exited.is_some(),
        "the guest did not power off after the marker:\n{}",
        tail(&log, 30)
    );
    // Not an assertion (timings vary); shown with --nocapture.
    let reached_us: f64 = line
        .rsplit("reached_us=")
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    eprintln!(
        "multi-user.target reached {:.1}s after the kernel started; boot finished and reported {:.1}s after QEMU started",
        reached_us / 1e6,
        reached.as_secs_f64()
    );

    // A stage-1 failure names its step on the console and powers off, so a
    // broken image ends its VM instead of hanging it.
    let mut vm = Vm::boot(
        &a.join("kernel"),
        &a.join("initramfs"),
        None,
        "console=ttyS0 panic=-1 testbed.root=/dev/vdz testbed.rootwait=2",
        &tmp.path().join("serial-fail.log"),
    );
    let exited = vm.wait(Duration::from_secs(120));
    let log = vm.log();
    assert!(
        log.contains("testbed-stage1: FAILED at step 'wait for the root disk /dev/vdz': no block device /dev/vdz after 2s"),
        "{}",
        tail(&log, 30)
    );
    assert!(
        log.contains("add testbed.debug to the kernel command line"),
        "{}",
        tail(&log, 30)
    );
    assert!(
        exited.is_some(),
        "stage-1 did not power off after failing:\n{}",
        tail(&log, 30)
    );
}
