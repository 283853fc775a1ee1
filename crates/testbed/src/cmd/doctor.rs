//! `testbed doctor`: checks the host for what each part of testbed needs
//! and says what to fix. Every check is a real probe (opening /dev/kvm,
//! asking QEMU its version, connecting to libvirt, asking podman), never a
//! guess from installed packages.

use std::path::Path;
use std::process::Command;

use testbed_runtime::accel::{self, Accel};

use crate::output::{Failure, Outcome};

use testbed_runtime::backend::{first_line, CheckLevel as Level, HostCheck as Check};

fn check(name: &'static str, level: Level, found: String, fix: Option<&str>) -> Check {
    Check::new(name, level, found, fix)
}

fn meminfo_kib(key: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
}

/// Free bytes on the file system holding `path` (or its nearest existing
/// parent).
fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let st = rustix::fs::statvfs(p).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

fn kvm() -> Check {
    let d = accel::detect();
    match d.accel {
        Accel::Kvm => check("kvm", Level::Ok, d.reason, None),
        Accel::Tcg => check(
            "kvm",
            Level::Warn,
            format!("VMs will be emulated (TCG, ~10x slower): {}", d.reason),
            Some("on a host with VT-x/AMD-V, load kvm_intel or kvm_amd and add your user to the kvm group; containers (--backend podman) need no KVM"),
        ),
    }
}

fn memory() -> Check {
    let available = meminfo_kib("MemAvailable:").unwrap_or(0) / 1024;
    let total = meminfo_kib("MemTotal:").unwrap_or(0) / 1024;
    let found = format!("{available} MiB available of {total} MiB");
    if available < 2048 {
        check(
            "memory",
            Level::Warn,
            found,
            Some("each VM node takes its memory (512 MiB by default) plus ~250 MiB under TCG; lower `memory` or use containers"),
        )
    } else {
        check("memory", Level::Ok, found, None)
    }
}

fn store() -> Check {
    let root = match testbed_image::store::Store::default_root() {
        Ok(root) => root,
        Err(e) => {
            return check(
                "store",
                Level::Fail,
                e.to_string(),
                Some("set TESTBED_STORE"),
            )
        }
    };
    let free = free_bytes(&root).map_or(0, |b| b / (1024 * 1024));
    let found = format!("{} ({free} MiB free)", root.display());
    if free < 4096 {
        check(
            "store",
            Level::Warn,
            found,
            Some("image builds need about 4 GiB free; `testbed store gc` removes unused images, or point TESTBED_STORE elsewhere"),
        )
    } else {
        check("store", Level::Ok, found, None)
    }
}

fn builder() -> Check {
    let found = Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| first_line(&o.stdout));
    let root = rustix::process::geteuid().is_root();
    match (found, root) {
        (Some(v), true) => check("image builder", Level::Ok, format!("{v}; as root"), None),
        // Not root: builds run in a user namespace (docs/rootless.md); the
        // probe enters one.
        (Some(v), false) => match testbed_image::rootless::probe() {
            Ok(m) => check(
                "image builder",
                Level::Ok,
                format!(
                    "{v}; rootless, as {} with subordinate ids {}+{} (users) and {}+{} (groups)",
                    m.user, m.uids.start, m.uids.count, m.gids.start, m.gids.count
                ),
                None,
            ),
            Err(problems) => {
                let found = problems
                    .iter()
                    .map(|p| p.what.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                let mut fixes: Vec<&str> = Vec::new();
                for p in &problems {
                    if !fixes.contains(&p.fix.as_str()) {
                        fixes.push(&p.fix);
                    }
                }
                let fix = fixes.join("; ");
                check(
                    "image builder",
                    Level::Warn,
                    format!("{v}; not root, and rootless builds cannot run: {found}"),
                    Some(&format!(
                        "{fix} (docs/rootless.md); running clusters from built images needs none of this"
                    )),
                )
            }
        },
        (None, _) => check(
            "image builder",
            Level::Fail,
            "mmdebstrap is not installed".to_owned(),
            Some("run scripts/setup-host.sh"),
        ),
    }
}

fn ssh_keygen() -> Check {
    match Command::new("ssh-keygen").arg("-?").output() {
        Ok(_) => check(
            "ssh-keygen",
            Level::Ok,
            "present (per-cluster keys)".to_owned(),
            None,
        ),
        Err(e) => check(
            "ssh-keygen",
            Level::Fail,
            format!("cannot run ssh-keygen: {e}"),
            Some("install openssh-client (scripts/setup-host.sh)"),
        ),
    }
}

/// `testbed doctor [--json]`: exit 0 when nothing failed (warnings
/// allowed), 1 otherwise.
pub fn doctor(json: bool) -> Outcome {
    // Each backend checks what it needs itself (QEMU, libvirt, engines).
    let backends = testbed_runtime::backend::host_checks(&testbed_cluster::libvirt::default_uri());
    let mut checks = vec![kvm(), memory(), store(), builder(), ssh_keygen()];
    checks.splice(0..0, backends.iter().take(1).cloned());
    checks.extend(backends.into_iter().skip(1));
    let failed = checks.iter().filter(|c| c.level == Level::Fail).count();
    if json {
        let text = serde_json::to_string_pretty(&checks)
            .map_err(|e| Failure::Runtime(anyhow::anyhow!(e)))?;
        outln!("{text}");
    } else {
        for c in &checks {
            let mark = match c.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            outln!("{mark} {:<14} {}", c.name, c.found);
            if let Some(fix) = &c.fix {
                outln!("     {:<14} fix: {fix}", "");
            }
        }
    }
    if failed > 0 {
        return Err(Failure::Reported(1));
    }
    Ok(())
}
