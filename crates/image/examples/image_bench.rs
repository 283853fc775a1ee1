//! Benchmark of image builds (not a test; it only prints): locks the given
//! roles, builds them cold into an empty store, runs plain `mmdebstrap` with
//! the same package lists side by side, then builds again warm (cache hit).
//! Prints the cold time as a ratio to plain mmdebstrap, and the warm time.
//!
//! Usage: `image_bench [ROLE=pkg,pkg ...]`; the default is the Slurm
//! example's roles. `bench/image-build.sh` runs it in release mode.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use testbed_image::apt::sources_for;
use testbed_image::lock::{lock, LockOptions, ALWAYS};
use testbed_image::{build, BuildOptions, ImageSpec, NoProgress, Store};

type Error = Box<dyn std::error::Error>;

fn main() {
    if let Err(e) = run() {
        let _ = writeln!(std::io::stderr(), "image_bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Error> {
    let mut roles: Vec<(String, Vec<String>)> = std::env::args()
        .skip(1)
        .filter_map(|a| {
            let (role, pkgs) = a.split_once('=')?;
            Some((
                role.to_string(),
                pkgs.split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect(),
            ))
        })
        .collect();
    if roles.is_empty() {
        roles = vec![
            (
                "ctl".into(),
                vec!["munge".into(), "slurm-client".into(), "slurmctld".into()],
            ),
            ("compute".into(), vec!["munge".into(), "slurmd".into()]),
        ];
    }
    let specs: Vec<ImageSpec> = roles
        .iter()
        .map(|(role, packages)| ImageSpec {
            role: role.clone(),
            vendor: "debian".into(),
            suite: "bookworm".into(),
            mirror: None,
            kernel: "linux-image-cloud-amd64".into(),
            packages: packages.clone(),
            debconf: vec![],
            files: vec![],
            agent: None,
        })
        .collect();
    let mut out = std::io::stdout();
    let tmp = tempfile::tempdir()?;
    let started = Instant::now();
    let lockfile = lock(&specs, None, &LockOptions::default(), &NoProgress)?;
    let lock_time = started.elapsed();
    let store = Store::open(&tmp.path().join("store"))?;

    let started = Instant::now();
    build(
        &store,
        &specs,
        &lockfile,
        &BuildOptions::default(),
        &NoProgress,
    )?;
    let cold = started.elapsed();

    // Plain mmdebstrap of the same package lists, as many at once as the
    // builder ran, against the same sources.
    let sources = sources_for("debian", "bookworm", None)?;
    let started = Instant::now();
    let children: Vec<_> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let mut include: Vec<String> = spec.packages.clone();
            include.extend(ALWAYS.iter().map(|s| s.to_string()));
            include.push(spec.kernel.clone());
            let mut cmd = Command::new("mmdebstrap");
            cmd.arg("--quiet")
                .arg("--variant=apt")
                .arg(format!("--include={}", include.join(",")))
                .arg("bookworm")
                .arg(tmp.path().join(format!("plain{i}")));
            for s in &sources {
                cmd.arg(s.one_line());
            }
            cmd.spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut child in children {
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("plain mmdebstrap failed: {status}").into());
        }
    }
    let plain = started.elapsed();

    let started = Instant::now();
    build(
        &store,
        &specs,
        &lockfile,
        &BuildOptions::default(),
        &NoProgress,
    )?;
    let warm = started.elapsed();

    let secs = |d: Duration| d.as_secs_f64();
    writeln!(
        out,
        "roles:          {}",
        roles
            .iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(out, "lock:           {:.1} s", secs(lock_time))?;
    writeln!(out, "cold build:     {:.1} s", secs(cold))?;
    writeln!(
        out,
        "plain mmdebstrap (same packages, side by side): {:.1} s",
        secs(plain)
    )?;
    writeln!(
        out,
        "cold / plain:   {:.2}x (target <= 1.3x)",
        secs(cold) / secs(plain)
    )?;
    writeln!(out, "warm build:     {:.3} s (target < 1 s)", secs(warm))?;
    Ok(())
}
