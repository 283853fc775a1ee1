//! `testbed ci [DIR]`: every composition's test under a folder, with
//! cached results and one report (docs/ci.md). The work is
//! `testbed_ci::run`; this prints its progress, the summary, and on
//! GitHub Actions the step summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::ValueEnum;
use testbed_ci::{CiEvent, Options, Results, Status, Summary};

use super::cluster::BackendArgs;
use super::image::PackageArgs;
use crate::output::{Failure, Outcome};

#[derive(Debug, clap::Args)]
pub struct CiArgs {
    /// The folder searched for compositions (`testbed.toml`) with a `[test]` [default: .]
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Where the reports go: summary.json, junit.xml, index.html and a folder per composition (emptied first; refused if it holds anything else)
    #[arg(short, long, value_name = "DIR", default_value = "testbed-ci")]
    pub out: PathBuf,
    /// Run every test, even those that passed before with the same inputs
    #[arg(long)]
    pub rerun: bool,
    /// Run each test N times, to hunt flaky tests (with --rerun, the cached ones too)
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Tests at once, at most (fewer when memory would not hold their nodes)
    #[arg(short, long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: u32,
    /// Where passing results are remembered [default: $XDG_CACHE_HOME/testbed/ci-results]
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// Print the summary as JSON on stdout (progress stays on stderr)
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub packages: PackageArgs,
}

/// The flags each `testbed test` gets: the backend's.
fn test_args(b: &BackendArgs) -> Vec<String> {
    let name = |v: Option<clap::builder::PossibleValue>| {
        v.map(|v| v.get_name().to_owned()).unwrap_or_default()
    };
    let mut args = vec![
        "--backend".to_owned(),
        name(b.backend.to_possible_value()),
        "--accel".to_owned(),
        name(b.accel.to_possible_value()),
    ];
    if let Some(uri) = &b.connect {
        args.extend(["--connect".to_owned(), uri.clone()]);
    }
    for host in &b.hosts {
        args.extend(["--host".to_owned(), host.clone()]);
    }
    if b.cold {
        args.push("--cold".to_owned());
    }
    if let Some(name) = &b.from {
        args.extend(["--from".to_owned(), name.clone()]);
    }
    args
}

/// The flags each `testbed build` gets: where packages come from.
fn build_args(p: &PackageArgs) -> Vec<String> {
    let mut args = Vec::new();
    if p.offline {
        args.push("--offline".to_owned());
    }
    for dir in &p.vendor {
        args.extend(["--vendor".to_owned(), dir.display().to_string()]);
    }
    args
}

pub fn run(args: &CiArgs) -> Outcome {
    let start = Instant::now();
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    if !dir.is_dir() {
        return Err(Failure::Usage(format!(
            "{} is not a folder; `testbed ci` searches a folder for compositions (`testbed test` runs one)",
            dir.display()
        )));
    }
    let results = match &args.results {
        Some(d) => d.clone(),
        None => Results::default_dir().ok_or_else(|| {
            Failure::Usage("neither XDG_CACHE_HOME nor HOME is set: give --results DIR".to_owned())
        })?,
    };
    let exe = std::env::current_exe().context("cannot find the testbed executable")?;
    // Ctrl-C (which the tests under way get too), a CI job cancelled
    // (SIGTERM), a closed terminal: the run stops its tests, takes their
    // clusters down and still writes its reports.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install a signal handler")?;
    }
    let options = Options {
        dir,
        out: args.out.clone(),
        results: Results::new(results),
        exe,
        rerun: args.rerun,
        repeat: args.repeat,
        jobs: args.jobs as usize,
        build_args: build_args(&args.packages),
        test_args: test_args(&args.backend),
        stop,
    };
    let summary =
        testbed_ci::run(&options, &|e| show(start, &args.out, e)).map_err(|e| match e {
            testbed_ci::CiError::NothingToTest { .. } | testbed_ci::CiError::ForeignOut { .. } => {
                Failure::Usage(e.to_string())
            }
            e => Failure::Runtime(e.into()),
        })?;
    if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) {
        step_summary(Path::new(&path), &summary);
    }
    if args.json {
        outln!("{}", summary.to_json());
    } else {
        print_summary(&summary, &args.out);
    }
    if summary.interrupted {
        errln!("interrupted: the tests under way were stopped and their clusters taken down");
        return Err(Failure::Reported(130));
    }
    if summary.passed() {
        Ok(())
    } else {
        Err(Failure::Reported(1))
    }
}

fn show(start: Instant, out: &Path, event: &CiEvent) {
    let t = format!("{:>6.1}s", start.elapsed().as_secs_f64());
    match event {
        CiEvent::Found { tests, compositions } => errln!(
            "{t} {tests} test{} to consider ({compositions} composition{} found)",
            plural(*tests),
            plural(*compositions)
        ),
        CiEvent::Cached { name, reason } => errln!("{t} {name}: skipped: {reason}"),
        CiEvent::Invalid { name, reason } => {
            errln!("{t} {name}: ERROR: {}", indent(reason));
        }
        CiEvent::Building { name } => errln!("{t} {name}: building its images"),
        CiEvent::Built { name, duration } => errln!(
            "{t} {name}: images ready ({:.1}s)",
            duration.as_secs_f64()
        ),
        CiEvent::Waiting {
            name,
            needs_mib,
            free_mib,
        } => errln!(
            "{t} {name}: waiting for memory (needs ~{needs_mib} MiB, {free_mib} MiB left of what was free)"
        ),
        CiEvent::Started {
            name,
            attempt,
            of,
            log,
        } => {
            let n = if *of > 1 {
                format!(" (attempt {attempt} of {of})")
            } else {
                String::new()
            };
            errln!("{t} {name}: testing{n}; log in {}", out.join(log).display());
        }
        CiEvent::Finished {
            name,
            attempt,
            status,
            duration,
            detail,
        } => {
            let word = match status {
                Status::Passed => "passed",
                Status::Failed => "FAILED",
                Status::Error => "ERROR",
                Status::Cached => "cached",
            };
            let n = if *attempt > 1 {
                format!(" (attempt {attempt})")
            } else {
                String::new()
            };
            let detail = detail
                .as_deref()
                .map(|d| format!(": {}", indent(d)))
                .unwrap_or_default();
            errln!(
                "{t} {name}{n}: {word} ({:.1}s){detail}",
                duration.as_secs_f64()
            );
        }
        CiEvent::Wrote { path } => errln!("{t} wrote {}", path.display()),
    }
}

/// Lines after the first indented under it.
fn indent(text: &str) -> String {
    text.trim_end().replace('\n', "\n        ")
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn print_summary(summary: &Summary, out: &Path) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o);
    for e in &summary.entries {
        let mark = match e.status {
            Status::Passed => "ok    ",
            Status::Failed => "FAILED",
            Status::Error => "ERROR ",
            Status::Cached => "cached",
        };
        let _ = writeln!(o, "{mark} {} ({:.1}s)", e.name, e.duration);
    }
    let _ = writeln!(
        o,
        "\n{}: {} passed, {} failed, {} error, {} cached in {:.1}s; report: {}",
        if summary.passed() {
            "ci passed"
        } else {
            "ci FAILED"
        },
        summary.count(Status::Passed),
        summary.count(Status::Failed),
        summary.count(Status::Error),
        summary.count(Status::Cached),
        summary.duration,
        out.join("index.html").display()
    );
}

/// Appends the run to GitHub's step summary; a failure to is a warning.
fn step_summary(path: &Path, summary: &Summary) {
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .and_then(|mut f| f.write_all(testbed_ci::markdown::render(summary).as_bytes()));
    if let Err(e) = appended {
        errln!(
            "warning: cannot append to GITHUB_STEP_SUMMARY ({}): {e}",
            path.display()
        );
    }
}
