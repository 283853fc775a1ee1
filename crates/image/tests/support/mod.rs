//! Test infrastructure for the tests that build real images and boot them:
//! a rootfs to build from, and a QEMU runner with a serial log.
//!
//! The rootfs comes from [`build_test_rootfs`]: mmdebstrap run directly
//! (the host's apt sources, the package set of a node image and nothing
//! more, without the lock and the store, so that the boot test does not
//! need them); set `TESTBED_TEST_ROOTFS` to a rootfs directory to reuse one
//! while iterating locally (it is copied, never modified).

// Each test binary uses part of this module; `keep_if_asked` tells the
// developer where the kept files are, on stderr.
#![allow(dead_code, clippy::print_stderr)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testbed_test_support::{run_ok, wait_until};

/// The kernel package of node images (the composition's default).
pub const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// The packages every node image has: the builder's `ALWAYS` set and the
/// kernel; see `docs/boot.md` for why each is needed to boot.
pub fn boot_packages() -> Vec<&'static str> {
    let mut packages = testbed_image::lock::ALWAYS.to_vec();
    packages.push(KERNEL_PACKAGE);
    packages
}

/// A rootfs directory with the packages of a node image, at `dir/rootfs`.
pub fn build_test_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    if let Some(src) = std::env::var_os("TESTBED_TEST_ROOTFS") {
        run_ok(Command::new("cp").arg("-a").arg(&src).arg(&rootfs));
        return rootfs;
    }
    run_ok(
        Command::new("mmdebstrap")
            .args(["--quiet", "--variant=apt", "--mode=root"])
            .arg(format!("--include={}", boot_packages().join(",")))
            .args(["bookworm"])
            .arg(&rootfs)
            .env("SOURCE_DATE_EPOCH", "1700000000"),
    );
    rootfs
}

/// Writes `content` to `path` inside `rootfs`, creating parent directories.
pub fn write_in(rootfs: &Path, path: &str, content: &str) {
    let host = rootfs.join(path.trim_start_matches('/'));
    fs::create_dir_all(host.parent().unwrap()).unwrap();
    fs::write(host, content).unwrap();
}

/// The accelerator for test VMs: TCG unless `TESTBED_TEST_ACCEL` says
/// otherwise (e.g. `kvm` on a host where KVM really works).
pub fn accel() -> String {
    std::env::var("TESTBED_TEST_ACCEL").unwrap_or_else(|_| "tcg,thread=multi".to_string())
}

/// A QEMU process booting kernel + initramfs with a serial log in a file.
/// Dropping it kills the VM.
pub struct Vm {
    child: Child,
    pub serial: PathBuf,
    pub started: Instant,
}

impl Vm {
    /// Boots `kernel` and `initrd` with `root` (if any) as the first virtio
    /// disk, read-only, and `cmdline`. No network device, no display; the
    /// VM exits when the guest powers off (or reboots: `-no-reboot`).
    pub fn boot(
        kernel: &Path,
        initrd: &Path,
        root: Option<&Path>,
        cmdline: &str,
        serial: &Path,
    ) -> Vm {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-accel", &accel(), "-smp", "2", "-m", "1024"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", cmdline])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()));
        if let Some(root) = root {
            cmd.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio,readonly=on",
                root.display()
            ));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start qemu-system-x86_64 (package qemu-system-x86): {e}")
        });
        Vm {
            child,
            serial: serial.to_path_buf(),
            started: Instant::now(),
        }
    }

    /// Waits until QEMU exits, at most `timeout`; returns how long it ran,
    /// or `None` (and kills it) on timeout.
    pub fn wait(&mut self, timeout: Duration) -> Option<Duration> {
        let exited = wait_until(timeout, || self.child.try_wait().ok().flatten());
        match exited {
            Some(_) => Some(self.started.elapsed()),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                None
            }
        }
    }

    /// The serial console output so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// When `needle` first appeared on the serial console, polling the log.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Option<Duration> {
        wait_until(timeout, || {
            if self.log().contains(needle) {
                Some(self.started.elapsed())
            } else {
                None
            }
        })
    }

    /// QEMU's own stderr, once it has exited.
    pub fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A temporary directory that is deleted at the end of the test unless
/// `TESTBED_TEST_KEEP` is set, in which case its path is printed.
pub enum Scratch {
    Deleted(tempfile::TempDir),
    Kept(PathBuf),
}

impl Scratch {
    pub fn path(&self) -> &Path {
        match self {
            Scratch::Deleted(t) => t.path(),
            Scratch::Kept(p) => p,
        }
    }
}

pub fn keep_if_asked(tmp: tempfile::TempDir) -> Scratch {
    if std::env::var_os("TESTBED_TEST_KEEP").is_some() {
        let path = tmp.keep();
        eprintln!("keeping {}", path.display());
        Scratch::Kept(path)
    } else {
        Scratch::Deleted(tmp)
    }
}

/// The last `n` lines of `log`, for failure messages.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
