//! `testbed test`: brings the cluster up if needed, runs the test script
//! with `testbed-driver`, prints progress and a summary, writes JUnit/JSON
//! reports, keeps artifacts of a failure, and takes the cluster down again
//! unless it was already running or `--keep` is given. `--interactive`
//! swaps the script for a prompt with the same API.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use testbed_cluster::Target;
use testbed_driver::{
    artifacts, check_script, ApiCluster, Driver, DriverOptions, Event, EventSink, TestReport,
};
use testbed_model::{Scale, ScaleArg};
use testbed_runtime::spec::ClusterSpec;
use testbed_runtime::state::{cluster_key, StateDir};

use super::cluster::{self, parse_duration, BackendArgs};
use crate::output::{Failure, Outcome};
use crate::prompt::{self, Session};

/// The limit of a whole test when the composition has no `[test]`.
const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, clap::Args)]
// `up`'s backend flags, with help saying that they matter only when the
// cluster is not running yet.
#[command(
    mut_arg("backend", |a| a.help("Backend, if the cluster has to be brought up")),
    mut_arg("connect", |a| a.help("libvirt: the URI of the one host (see `testbed up --help`)")),
    mut_arg("hosts", |a| a.help("libvirt: a host's URI; repeat for several (see `testbed up --help`)")),
    mut_arg("accel", |a| a.help("Accelerator, if the cluster has to be brought up")),
)]
pub struct TestArgs {
    /// The test script [default: the composition's `[test] script`]
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// Leave the cluster running afterwards (passed or failed)
    #[arg(long)]
    pub keep: bool,
    /// Write a JUnit XML report here
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write a JSON report here
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Time limit of the whole script [default: `[test] timeout`, else 30m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Where to keep logs and journals of a failed run [default: testbed-artifacts/ beside the composition]
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// A prompt with the script API instead of the script (`.exit` or Ctrl-D leaves)
    #[arg(short, long)]
    pub interactive: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub packages: super::image::PackageArgs,
}

fn elapsed(start: Instant) -> String {
    format!("{:>6.1}s", start.elapsed().as_secs_f64())
}

fn short(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', "; ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut s: String = one_line.chars().take(max).collect();
    s.push('…');
    s
}

/// The last `max` lines of a failure, indented under its FAILED line (the
/// end of a command's output says why it failed; the whole text is in the
/// summary and the reports).
fn indented_tail(text: &str, max: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let skipped = lines.len().saturating_sub(max);
    let mut out = String::new();
    if skipped > 0 {
        out.push_str(&format!(
            "        ({skipped} earlier lines in the report)\n"
        ));
    }
    let shown: Vec<String> = lines[skipped..]
        .iter()
        .map(|l| format!("        {l}"))
        .collect();
    out.push_str(&shown.join("\n"));
    out
}

/// Prints events on stderr; repeated identical commands (the retries of a
/// `wait_until_*`) are folded into a count.
fn printer(start: Instant) -> EventSink {
    let last: Mutex<Option<(String, u32)>> = Mutex::new(None);
    Arc::new(move |event: &Event| {
        let t = elapsed(start);
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        let line = match event {
            Event::CommandStarted { .. } | Event::ActionStarted { .. } => return,
            Event::CommandFinished {
                node,
                command,
                result,
                duration,
            } => {
                let how = match result {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("not run: {e}"),
                };
                let key = format!("{node}$ {} -> {how}", short(command, 70));
                if let Some((prev, n)) = last.as_mut() {
                    if *prev == key {
                        *n += 1;
                        return;
                    }
                }
                flush_repeats(&mut last);
                *last = Some((key.clone(), 0));
                format!("{t} {key} ({:.1}s)", duration.as_secs_f64())
            }
            Event::SubtestStarted { name } => format!("{t} subtest: {name}"),
            Event::SubtestFinished {
                name,
                duration,
                failure,
            } => match failure {
                None => format!("{t} ok: {name} ({:.1}s)", duration.as_secs_f64()),
                Some(why) => format!(
                    "{t} FAILED: {name} ({:.1}s)\n{}",
                    duration.as_secs_f64(),
                    indented_tail(why, 20)
                ),
            },
            Event::Log { message } => format!("{t} log: {message}"),
            Event::ActionFinished {
                node,
                action,
                duration,
                error,
            } => {
                let who = node
                    .as_deref()
                    .map(|n| format!("{n}: "))
                    .unwrap_or_default();
                match error {
                    None => format!("{t} {who}{action} ({:.1}s)", duration.as_secs_f64()),
                    Some(e) => format!("{t} {who}{action} failed: {}", short(e, 200)),
                }
            }
        };
        flush_repeats(&mut last);
        *last = None;
        errln!("{line}");
    })
}

fn flush_repeats(last: &mut Option<(String, u32)>) {
    if let Some((_, n)) = last.as_ref() {
        if *n > 0 {
            errln!(
                "        (the same {n} more time{})",
                if *n == 1 { "" } else { "s" }
            );
        }
    }
    *last = None;
}

/// A path relative to the current folder when it is inside it, for
/// shorter messages.
fn display_path(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            std::path::absolute(path)
                .ok()?
                .strip_prefix(cwd)
                .ok()
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| path.to_path_buf())
}

/// `testbed test DIR/check.rhai`, the way people hand a script to a test
/// runner: the script runs against the composition of its folder. Returns
/// the composition's path and the script to run.
fn script_given_as_path(
    path: Option<&Path>,
    script: Option<&Path>,
) -> Result<(Option<PathBuf>, Option<PathBuf>), Failure> {
    let Some(path) = path else {
        return Ok((None, script.map(Path::to_path_buf)));
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("rhai") => {
            if let Some(other) = script {
                return Err(Failure::Usage(format!(
                    "two scripts: {} and --script {}; give one (a script given as the path runs against the composition of its folder)",
                    path.display(),
                    other.display()
                )));
            }
            let folder = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Ok((Some(folder.to_path_buf()), Some(path.to_path_buf())))
        }
        Some("py") => Err(Failure::Usage(format!(
            "{} is a Python file; `testbed test` runs Rhai scripts (`testbed test DIR/SCRIPT.rhai`, or `--script FILE.rhai` with the composition as PATH); Python tests run with pytest and the testbed Python package (docs/python.md)",
            path.display()
        ))),
        _ => Ok((Some(path.to_path_buf()), script.map(Path::to_path_buf))),
    }
}

/// `testbed test`.
pub fn run(path: Option<&Path>, scale: &[ScaleArg], args: &TestArgs) -> Outcome {
    let start = Instant::now();
    let scale: Scale = scale.iter().cloned().collect();
    let (path, script_arg) = script_given_as_path(path, args.script.as_deref())?;
    let target = Target::load(path.as_deref(), &scale)?;
    let (comp, plan, dir) = (&target.comp, &target.plan, &target.dir);
    let comp_dir = comp
        .source
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();

    let script = match (
        &script_arg,
        comp.test.as_ref().and_then(|t| t.script.clone()),
    ) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(s)) => Some(s),
        (None, None) if args.interactive => None,
        (None, None) => {
            return Err(Failure::Usage(format!(
                "no test script: set `[test] script` in {} or pass --script FILE",
                comp.source.path.display()
            )))
        }
    };
    let source = match &script {
        None => None,
        Some(s) => Some(std::fs::read_to_string(s).map_err(|e| {
            Failure::Usage(format!("cannot read the test script {}: {e}", s.display()))
        })?),
    };
    let script_name = script.as_deref().map(display_path);
    let nodes: Vec<String> = plan.nodes.iter().map(|n| n.name.clone()).collect();
    if let (Some(source), Some(name)) = (&source, &script_name) {
        // Before any VM boots: a typo should not cost a boot.
        check_script(source, name, &nodes).map_err(|e| Failure::Usage(e.to_string()))?;
    }
    let time_limit = args
        .timeout
        .or(comp.test.as_ref().map(|t| t.timeout))
        .unwrap_or(DEFAULT_TIME_LIMIT);

    let was_running = testbed_cluster::running(dir).is_some();
    if !was_running {
        let mut options = cluster::up_options(&args.backend, &args.packages)?;
        options.keep_failed = args.keep;
        cluster::bring_up(&target, &options)?;
    } else {
        errln!(
            "{} cluster {} is already running; it stays up afterwards",
            elapsed(start),
            plan.cluster
        );
    }
    let teardown = !args.keep && !was_running;
    let input = match (script_name, source) {
        (Some(name), Some(source)) if !args.interactive => Input::Script(name, source),
        _ => Input::Prompt(prompt::history_file(&cluster_key(
            &plan.cluster,
            &comp.source.path,
        ))),
    };
    let result = drive(args, dir, input, time_limit, &comp_dir, start);
    if teardown {
        errln!(
            "{} {}",
            elapsed(start),
            testbed_cluster::down(dir, &plan.cluster)
        );
    } else {
        errln!(
            "{} cluster {} is left running; `testbed down` removes it",
            elapsed(start),
            plan.cluster
        );
    }
    result
}

/// The driver's view of the cluster: its API, with the boot timeout and
/// the nodes' services that `up` wrote into the spec (the driver does not
/// read the spec: it holds secrets). A spec that cannot be read leaves the
/// driver's defaults; the first call will say why.
fn api_cluster(dir: &StateDir) -> ApiCluster {
    let cluster = ApiCluster::open(dir);
    let Ok(spec) = ClusterSpec::read(&dir.spec()) else {
        return cluster;
    };
    cluster
        .with_boot_timeout(spec.boot_timeout() + spec.activation_timeout())
        .with_services(
            spec.nodes
                .iter()
                .map(|n| (n.name.clone(), n.activation.services.clone()))
                .collect(),
        )
}

/// What the driver runs.
enum Input {
    /// A script: its path (as shown) and its text.
    Script(PathBuf, String),
    /// The prompt, with its history file.
    Prompt(Option<PathBuf>),
}

/// Runs the script (or the prompt) on the running cluster.
fn drive(
    args: &TestArgs,
    dir: &StateDir,
    input: Input,
    time_limit: Duration,
    comp_dir: &Path,
    start: Instant,
) -> Outcome {
    let api = Arc::new(api_cluster(dir));
    // At the prompt, errors point into what was typed, and relative host
    // paths start from the current folder.
    let script_path = match &input {
        Input::Script(path, _) => path.clone(),
        Input::Prompt(_) => PathBuf::from("<stdin>"),
    };
    let mut options = DriverOptions::new(script_path);
    options.time_limit = Some(time_limit);
    let mut driver = Driver::new(api.clone(), options, printer(start))
        .context("cannot start the test driver")?;
    let (script, source) = match input {
        Input::Script(script, source) => (script, source),
        Input::Prompt(history) => return repl(&mut driver, history),
    };
    errln!(
        "{} running {} (time limit {}, timeout factor {})",
        elapsed(start),
        script.display(),
        testbed_driver::units::format_duration(time_limit),
        driver.timeout_factor()
    );
    let report = driver.run(&source);
    print_summary(&report);
    let mut problems = Vec::new();
    for (path, text) in [
        (&args.junit, report.to_junit()),
        (&args.json, report.to_json()),
    ] {
        if let Some(path) = path {
            match write_report(path, &text) {
                Ok(()) => errln!("report written to {}", path.display()),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
    }
    if !report.passed {
        let dest = match &args.artifacts {
            Some(d) => d.clone(),
            None => {
                let d = comp_dir.join("testbed-artifacts");
                // Ours alone: an earlier run's leftovers would mislead.
                let _ = std::fs::remove_dir_all(&d);
                d
            }
        };
        let timeouts = testbed_driver::Timeouts {
            factor: driver.timeout_factor(),
            ..testbed_driver::Timeouts::default()
        };
        errln!("{} collecting artifacts", elapsed(start));
        match artifacts::collect(api.as_ref(), &dest, &timeouts) {
            Ok(a) => {
                for p in &a.problems {
                    errln!("  note: {p}");
                }
                errln!(
                    "artifacts (console logs, journals, fault history) are in {}",
                    display_path(&dest).display()
                );
            }
            Err(e) => problems.push(format!("cannot collect artifacts: {e}")),
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            errln!("error: {p}");
        }
        return Err(Failure::Reported(1));
    }
    if report.passed {
        Ok(())
    } else {
        Err(Failure::Reported(1))
    }
}

fn write_report(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn print_summary(report: &TestReport) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out);
    for case in &report.cases {
        let mark = if case.passed { "ok    " } else { "FAILED" };
        let _ = writeln!(
            out,
            "{mark} {} ({:.1}s)",
            case.name,
            case.duration.as_secs_f64()
        );
    }
    if let Some(failure) = &report.failure {
        let _ = writeln!(out, "\nerror: {failure}");
    }
    let failed = report.failures();
    let _ = writeln!(
        out,
        "\n{}: {} passed, {} failed in {:.1}s",
        if report.passed {
            "test passed"
        } else {
            "test FAILED"
        },
        report.cases.len() - failed,
        failed,
        report.duration.as_secs_f64()
    );
}

/// The prompt on the driver (see [`prompt`]): each complete piece of
/// input is evaluated in a scope that persists.
fn repl(driver: &mut Driver, history: Option<PathBuf>) -> Outcome {
    errln!(
        "test driver prompt; nodes: {}; `.exit` or Ctrl-D leaves",
        driver.nodes().join(", ")
    );
    prompt::run(&mut DriverSession(driver), history)
        .map_err(|e| Failure::Runtime(anyhow!("cannot read standard input: {e}")))
}

/// The driver as the prompt sees it.
struct DriverSession<'a>(&'a mut Driver);

impl Session for DriverSession<'_> {
    fn is_incomplete(&self, code: &str) -> bool {
        self.0.is_incomplete(code)
    }

    fn evaluate(&mut self, code: &str) {
        evaluate(self.0, code);
    }

    fn vocabulary(&self) -> testbed_driver::Vocabulary {
        self.0.vocabulary()
    }
}

fn evaluate(driver: &mut Driver, code: &str) {
    match driver.eval(code) {
        Ok(Some(value)) => {
            let mut out = io::stdout().lock();
            // Command output already ends with a newline.
            let _ = write!(out, "{value}");
            if !value.ends_with('\n') {
                let _ = writeln!(out);
            }
            let _ = out.flush();
        }
        Ok(None) => {}
        Err(e) => errln!("error: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::indented_tail;

    #[test]
    fn a_failure_is_shown_by_its_last_lines_indented() {
        assert_eq!(indented_tail("one\ntwo\n", 5), "        one\n        two");
        let long: Vec<String> = (1..=30).map(|i| format!("line {i}")).collect();
        let shown = indented_tail(&long.join("\n"), 3);
        assert_eq!(
            shown,
            "        (27 earlier lines in the report)\n        line 28\n        line 29\n        line 30"
        );
    }
}
