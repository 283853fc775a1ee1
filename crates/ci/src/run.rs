//! The run: find, load, key, build, test (as `testbed test` processes,
//! up to `jobs` at once as memory allows), record, report.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testbed_driver::TestReport;
use testbed_model::{Composition, Plan, Scale};

use crate::key::{self, KeyInputs};
use crate::results::{Passed, Results};
use crate::summary::{slug, utc, Attempt, Entry, Status, Summary};
use crate::{discover, html, junit};

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// The folder searched.
    pub dir: PathBuf,
    /// Where the reports go (emptied first; see [`prepare_out`]).
    pub out: PathBuf,
    /// The result cache.
    pub results: Results,
    /// The testbed executable run as `testbed build` and `testbed test`.
    pub exe: PathBuf,
    /// Run every test, cached or not.
    pub rerun: bool,
    /// Attempts per test run (1 and up), to hunt flaky tests; a cached
    /// test is still skipped unless `rerun`.
    pub repeat: u32,
    /// Tests at once, at most (1 and up).
    pub jobs: usize,
    /// Arguments for `testbed build` (package sources).
    pub build_args: Vec<String>,
    /// Arguments for `testbed test` (backend, accelerator); part of the
    /// result key.
    pub test_args: Vec<String>,
    /// Set (by a signal handler of the caller's) to stop: the tests under
    /// way are stopped and their clusters taken down, the others are not
    /// started, and the reports say so.
    pub stop: Arc<AtomicBool>,
}

/// Progress of a run, for the caller to show.
#[derive(Debug, Clone, PartialEq)]
pub enum CiEvent {
    /// The compositions with a test, and how many were found in all.
    Found { tests: usize, compositions: usize },
    /// Not run: it passed before with the same inputs.
    Cached { name: String, reason: String },
    /// Cannot run: why.
    Invalid { name: String, reason: String },
    /// Building (or pulling) its images.
    Building { name: String },
    /// Its images are in the store.
    Built { name: String, duration: Duration },
    /// Waiting for memory before starting the next test.
    Waiting {
        name: String,
        needs_mib: u64,
        free_mib: u64,
    },
    Started {
        name: String,
        attempt: u32,
        of: u32,
        log: PathBuf,
    },
    Finished {
        name: String,
        attempt: u32,
        status: Status,
        duration: Duration,
        /// The failed subtests, or why it could not run.
        detail: Option<String>,
    },
    /// A report written.
    Wrote { path: PathBuf },
}

/// What stops a whole run (a composition that cannot be tested is an
/// entry with [`Status::Error`], not this).
#[derive(Debug, thiserror::Error)]
pub enum CiError {
    #[error("cannot search {}: {source}", path.display())]
    Search { path: PathBuf, source: io::Error },
    #[error("no composition with a [test] under {}", path.display())]
    NothingToTest { path: PathBuf },
    #[error("{} is not empty and holds no earlier `testbed ci` output (no summary.json); give an empty or new folder with --out", path.display())]
    ForeignOut { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// The reason of what an interrupted run did not finish.
const INTERRUPTED: &str = "not run to the end: the run was interrupted";

/// Why a test was stopped.
#[derive(Debug, Clone, Copy)]
enum Stopped {
    /// It ran past this limit.
    TimedOut(Duration),
    /// The run was interrupted.
    Interrupted,
}

/// How long a test may take beyond its own time limit (bringing its
/// cluster up and down) before it is stopped.
const GRACE: Duration = Duration::from_secs(30 * 60);

/// Memory counted per node beyond its guest memory (QEMU, its switch
/// port, the supervisor's share).
const NODE_OVERHEAD_MIB: u64 = 128;

/// One composition as the run sees it.
struct Job {
    entry: Entry,
    comp: Option<Composition>,
    /// Drawn into the output folder once it is prepared (a run that finds
    /// nothing to test does not touch it).
    plan: Option<Plan>,
    memory_mib: u64,
    limit: Duration,
}

/// Runs the tests of every composition under `options.dir`.
pub fn run(options: &Options, events: &dyn Fn(&CiEvent)) -> Result<Summary, CiError> {
    let started = Instant::now();
    let started_at = now();
    let found = discover::compositions(&options.dir, Some(&options.out)).map_err(|source| {
        CiError::Search {
            path: options.dir.clone(),
            source,
        }
    })?;
    let compositions = found.len();
    let mut jobs: Vec<Job> = found
        .iter()
        .filter_map(|path| load(options, path))
        .collect();
    if jobs.is_empty() {
        return Err(CiError::NothingToTest {
            path: options.dir.clone(),
        });
    }
    events(&CiEvent::Found {
        tests: jobs.len(),
        compositions,
    });
    prepare_out(&options.out)?;
    for job in &mut jobs {
        if job.entry.status == Status::Error {
            events(&CiEvent::Invalid {
                name: job.entry.name.clone(),
                reason: job.entry.reason.clone().unwrap_or_default(),
            });
            continue;
        }
        write_topology(options, job)?;
        // A committed lock gives the key before any build: a cached test
        // costs no build.
        settle_key(options, job, Moment::BeforeBuild);
        if pending(job) && !cached(options, job, events) {
            build(options, job, events);
            if job.entry.key.is_none() && pending(job) {
                settle_key(options, job, Moment::AfterBuild);
                if pending(job) {
                    cached(options, job, events);
                }
            }
        }
    }
    test_all(options, &mut jobs, events);
    for job in &jobs {
        if job.entry.status == Status::Passed {
            if let Some(key) = &job.entry.key {
                let passed = Passed {
                    name: job.entry.name.clone(),
                    passed_at: now(),
                    duration: job.entry.duration,
                };
                // A record that cannot be written costs a rerun, no more.
                let _ = options.results.put(key, &passed);
            }
        }
    }
    let summary = Summary {
        dir: options.dir.clone(),
        testbed_version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at,
        duration: started.elapsed().as_secs_f64(),
        repeat: options.repeat,
        interrupted: options.stop.load(Ordering::SeqCst),
        entries: jobs.into_iter().map(|j| j.entry).collect(),
    };
    write_reports(&options.out, &summary, events)?;
    Ok(summary)
}

/// The output folder, emptied: refused if it holds anything but an
/// earlier run's output (a mistyped `--out` must not delete a folder).
pub fn prepare_out(out: &Path) -> Result<(), CiError> {
    let write = |source| CiError::Write {
        path: out.to_path_buf(),
        source,
    };
    match fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                if !out.join("summary.json").is_file() {
                    return Err(CiError::ForeignOut {
                        path: out.to_path_buf(),
                    });
                }
                fs::remove_dir_all(out).map_err(write)?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write(e)),
    }
    fs::create_dir_all(out).map_err(write)
}

/// The entry of the composition at `path`; `None` when it has no
/// `[test]`. One that does not load is an entry in error (with its first
/// problems), so that a broken composition fails the run visibly.
fn load(options: &Options, path: &Path) -> Option<Job> {
    let name = discover::name(&options.dir, path);
    let mut entry = Entry {
        name,
        composition: path.to_path_buf(),
        cluster: String::new(),
        // Until its test ran (see `pending`).
        status: Status::Failed,
        reason: None,
        key: None,
        duration: 0.0,
        topology: None,
        nodes: Vec::new(),
        attempts: Vec::new(),
    };
    let error = |mut entry: Entry, why: String| {
        entry.status = Status::Error;
        entry.reason = Some(why);
        Some(Job {
            entry,
            comp: None,
            plan: None,
            memory_mib: 0,
            limit: GRACE,
        })
    };
    // A file that does not even parse may still be meant as a test: it
    // is reported rather than skipped.
    let comp = match testbed_model::load(path) {
        Ok(comp) => comp,
        Err(diags) => return error(entry, format!("invalid composition:\n{diags}")),
    };
    comp.test.as_ref()?;
    entry.cluster = comp.cluster.name.clone();
    let plan = match testbed_model::check(path, &Scale::default()) {
        Ok((_, plan)) => plan,
        Err(diags) => return error(entry, format!("invalid composition:\n{diags}")),
    };
    if comp.test.as_ref().is_some_and(|t| t.script.is_none()) {
        return error(
            entry,
            format!("its [test] has no script ({})", path.display()),
        );
    }
    entry.nodes = plan
        .nodes
        .iter()
        .map(|n| format!("{} ({})", n.name, n.role))
        .collect();
    let memory_mib = memory(&plan);
    let limit = comp.test.as_ref().map_or(GRACE, |t| t.timeout + GRACE);
    entry.topology = Some(PathBuf::from(slug(&entry.name)).join("topology.svg"));
    Some(Job {
        entry,
        comp: Some(comp),
        plan: Some(plan),
        memory_mib,
        limit,
    })
}

fn write_topology(options: &Options, job: &mut Job) -> Result<(), CiError> {
    let (Some(plan), Some(rel)) = (job.plan.take(), &job.entry.topology) else {
        return Ok(());
    };
    write_file(
        &options.out.join(rel),
        testbed_model::graph::svg(&plan).as_bytes(),
    )
}

fn memory(plan: &Plan) -> u64 {
    plan.nodes
        .iter()
        .map(|n| n.memory_mib + NODE_OVERHEAD_MIB)
        .sum()
}

/// When [`settle_key`] is asked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// Before any build: no key yet (no lock, a stale one) is no error.
    BeforeBuild,
    /// The images are built: a key must come out now, or the entry is in
    /// error.
    AfterBuild,
}

/// Sets the entry's result key when the images' keys can be known (a
/// lock exists).
fn settle_key(options: &Options, job: &mut Job, moment: Moment) {
    let after_build = moment == Moment::AfterBuild;
    let Some(comp) = &job.comp else { return };
    let keys = match key::image_keys(comp, &options.exe) {
        Ok(Some(keys)) => keys,
        Ok(None) if !after_build => return,
        Ok(None) => {
            job.entry.status = Status::Error;
            job.entry.reason = Some("its images built, but it has no lock".to_owned());
            return;
        }
        // A stale lock or a missing file: the build says it best.
        Err(_) if !after_build => return,
        Err(e) => {
            job.entry.status = Status::Error;
            job.entry.reason = Some(e);
            return;
        }
    };
    let inputs = KeyInputs {
        exe: &options.exe,
        image_keys: &keys,
        args: &options.test_args,
    };
    match key::result_key(comp, &inputs) {
        Ok(k) => job.entry.key = Some(k),
        Err(e) => {
            job.entry.status = Status::Error;
            job.entry.reason = Some(e.to_string());
        }
    }
}

/// Marks the entry cached if its key passed before (and the options
/// allow skipping it).
fn cached(options: &Options, job: &mut Job, events: &dyn Fn(&CiEvent)) -> bool {
    if options.rerun {
        return false;
    }
    let Some(key) = &job.entry.key else {
        return false;
    };
    let Some(passed) = options.results.get(key) else {
        return false;
    };
    let reason = format!(
        "passed at {} with the same inputs (result key {}); --rerun runs it again",
        utc(passed.passed_at),
        &key[..12]
    );
    job.entry.status = Status::Cached;
    job.entry.reason = Some(reason.clone());
    events(&CiEvent::Cached {
        name: job.entry.name.clone(),
        reason,
    });
    true
}

/// `testbed build` of the composition (locks it if it has no lock):
/// every image is then in the store, so that tests running at once do not
/// build the same image twice.
fn build(options: &Options, job: &mut Job, events: &dyn Fn(&CiEvent)) {
    if options.stop.load(Ordering::SeqCst) {
        job.entry.status = Status::Error;
        job.entry.reason = Some(INTERRUPTED.to_owned());
        return;
    }
    let name = job.entry.name.clone();
    events(&CiEvent::Building { name: name.clone() });
    let start = Instant::now();
    let log_rel = PathBuf::from(slug(&name)).join("build.log");
    let log = options.out.join(&log_rel);
    let outcome = spawn_logged(
        Command::new(&options.exe)
            .arg("build")
            .arg(&job.entry.composition)
            .args(&options.build_args),
        &log,
    )
    .and_then(|mut child| loop {
        if let Some(status) = child.try_wait()? {
            break Ok(status);
        }
        if options.stop.load(Ordering::SeqCst) {
            let _ = child.kill();
            break child.wait();
        }
        std::thread::sleep(Duration::from_millis(200));
    });
    if options.stop.load(Ordering::SeqCst) {
        job.entry.status = Status::Error;
        job.entry.reason = Some(INTERRUPTED.to_owned());
        return;
    }
    match outcome {
        Ok(status) if status.success() => events(&CiEvent::Built {
            name,
            duration: start.elapsed(),
        }),
        Ok(status) => {
            job.entry.status = Status::Error;
            job.entry.reason = Some(format!(
                "its images did not build ({}; {}):\n{}",
                describe(status),
                log_rel.display(),
                tail(&log, 15)
            ));
        }
        Err(e) => {
            job.entry.status = Status::Error;
            job.entry.reason = Some(format!("cannot run `testbed build`: {e}"));
        }
    }
}

/// Whether the job's test is still to run: neither in error nor cached.
fn pending(job: &Job) -> bool {
    !matches!(job.entry.status, Status::Error | Status::Cached)
}

/// A test under way.
struct Running {
    job: usize,
    attempt: u32,
    child: Child,
    started: Instant,
    folder: PathBuf,
}

/// Runs every attempt of every job still to run, up to `options.jobs`
/// at once, and never more than the memory available at the start
/// (one test always runs, whatever it needs).
fn test_all(options: &Options, jobs: &mut [Job], events: &dyn Fn(&CiEvent)) {
    let mut queue: VecDeque<(usize, u32)> = VecDeque::new();
    for (i, job) in jobs.iter().enumerate() {
        if pending(job) {
            for n in 1..=options.repeat.max(1) {
                queue.push_back((i, n));
            }
        }
    }
    let budget = available_mib().unwrap_or(u64::MAX);
    let mut running: Vec<Running> = Vec::new();
    let mut told_waiting = None;
    loop {
        if options.stop.load(Ordering::SeqCst) {
            // Nothing more starts; what runs is stopped below.
            for (i, n) in queue.drain(..) {
                let mut attempt = failed_to_start(&jobs[i], n, INTERRUPTED.to_owned());
                attempt.log = PathBuf::new();
                finish(options, &mut jobs[i], attempt, events);
            }
        }
        while running.len() < options.jobs.max(1) {
            // The first waiting attempt whose cluster is not running: a
            // composition's attempts, and compositions of one cluster
            // name (their containers' names would collide), take turns.
            let busy = |i: usize| {
                running
                    .iter()
                    .any(|r| r.job == i || jobs[r.job].entry.cluster == jobs[i].entry.cluster)
            };
            let Some(at) = queue.iter().position(|&(i, _)| !busy(i)) else {
                break;
            };
            let (i, n) = queue[at];
            let used: u64 = running.iter().map(|r| jobs[r.job].memory_mib).sum();
            let needs = jobs[i].memory_mib;
            if !running.is_empty() && used + needs > budget {
                if told_waiting != Some((i, n)) {
                    events(&CiEvent::Waiting {
                        name: jobs[i].entry.name.clone(),
                        needs_mib: needs,
                        free_mib: budget.saturating_sub(used),
                    });
                    told_waiting = Some((i, n));
                }
                break;
            }
            queue.remove(at);
            match start(options, jobs, i, n, events) {
                Ok(r) => running.push(r),
                Err(why) => {
                    let attempt = failed_to_start(&jobs[i], n, why);
                    finish(options, &mut jobs[i], attempt, events);
                }
            }
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut k = 0;
        while k < running.len() {
            let r = &mut running[k];
            let limit = jobs[r.job].limit;
            let stopping = options.stop.load(Ordering::SeqCst);
            let status = match r.child.try_wait() {
                Ok(Some(status)) if !stopping => Some(Ok(status)),
                Ok(None) if !stopping && r.started.elapsed() <= limit => None,
                waited => {
                    if matches!(waited, Ok(None)) {
                        let _ = r.child.kill();
                        let _ = r.child.wait();
                    }
                    // Its cluster may still run: take it down.
                    let _ = Command::new(&options.exe)
                        .arg("down")
                        .arg(&jobs[r.job].entry.composition)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    Some(Err(if stopping {
                        Stopped::Interrupted
                    } else {
                        Stopped::TimedOut(limit)
                    }))
                }
            };
            if let Some(status) = status {
                let r = running.swap_remove(k);
                let attempt = ended(options, &r, status);
                finish(options, &mut jobs[r.job], attempt, events);
            } else {
                k += 1;
            }
        }
    }
}

fn start(
    options: &Options,
    jobs: &[Job],
    index: usize,
    attempt: u32,
    events: &dyn Fn(&CiEvent),
) -> Result<Running, String> {
    let job = &jobs[index];
    let folder = PathBuf::from(slug(&job.entry.name)).join(attempt.to_string());
    let abs = options.out.join(&folder);
    let _ = fs::remove_dir_all(&abs);
    fs::create_dir_all(&abs).map_err(|e| format!("cannot create {}: {e}", abs.display()))?;
    let child = spawn_logged(
        Command::new(&options.exe)
            .arg("test")
            .arg(&job.entry.composition)
            .arg("--junit")
            .arg(abs.join("junit.xml"))
            .arg("--json")
            .arg(abs.join("report.json"))
            .arg("--artifacts")
            .arg(abs.join("artifacts"))
            .args(&options.test_args),
        &abs.join("log.txt"),
    )
    .map_err(|e| format!("cannot run `testbed test`: {e}"))?;
    events(&CiEvent::Started {
        name: job.entry.name.clone(),
        attempt,
        of: options.repeat.max(1),
        log: folder.join("log.txt"),
    });
    Ok(Running {
        job: index,
        attempt,
        child,
        started: Instant::now(),
        folder,
    })
}

fn failed_to_start(job: &Job, attempt: u32, why: String) -> Attempt {
    Attempt {
        number: attempt,
        status: Status::Error,
        duration: 0.0,
        exit_code: None,
        log: PathBuf::from(slug(&job.entry.name))
            .join(attempt.to_string())
            .join("log.txt"),
        report: None,
        junit: None,
        artifacts: Vec::new(),
        reason: Some(why),
    }
}

/// The attempt of a `testbed test` that ended (or was stopped after
/// `limit`).
fn ended(options: &Options, r: &Running, status: Result<ExitStatus, Stopped>) -> Attempt {
    let abs = options.out.join(&r.folder);
    let log = r.folder.join("log.txt");
    let report: Option<TestReport> = fs::read_to_string(abs.join("report.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let junit = abs
        .join("junit.xml")
        .is_file()
        .then(|| r.folder.join("junit.xml"));
    let artifacts = files_under(&options.out, &abs.join("artifacts"));
    let (state, exit_code, reason) = match status {
        Err(Stopped::Interrupted) => (Status::Error, None, Some(INTERRUPTED.to_owned())),
        Err(Stopped::TimedOut(limit)) => (
            Status::Error,
            None,
            Some(format!(
                "stopped after {} (its time limit plus {} to bring the cluster up and down); last lines of {}:\n{}",
                testbed_driver::units::format_duration(limit),
                testbed_driver::units::format_duration(GRACE),
                log.display(),
                tail(&abs.join("log.txt"), 15)
            )),
        ),
        Ok(status) if status.success() => (Status::Passed, status.code(), None),
        Ok(status) => match &report {
            Some(report) if !report.passed => (Status::Failed, status.code(), None),
            _ => (
                Status::Error,
                status.code(),
                Some(format!(
                    "`testbed test` ended with {} before its script ran to the end; last lines of {}:\n{}",
                    describe(status),
                    log.display(),
                    tail(&abs.join("log.txt"), 15)
                )),
            ),
        },
    };
    Attempt {
        number: r.attempt,
        status: state,
        duration: r.started.elapsed().as_secs_f64(),
        exit_code,
        log,
        report,
        junit,
        artifacts,
        reason,
    }
}

/// Adds an attempt to its entry, and the entry's status once all its
/// attempts are in: passed if every one passed, else failed (or error if
/// none ran its script).
fn finish(options: &Options, job: &mut Job, attempt: Attempt, events: &dyn Fn(&CiEvent)) {
    let detail = match (&attempt.reason, &attempt.report) {
        (Some(why), _) => Some(why.clone()),
        (None, Some(report)) if !report.passed => {
            let failed: Vec<&str> = report
                .cases
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.name.as_str())
                .collect();
            Some(if failed.is_empty() {
                report
                    .failure
                    .as_ref()
                    .map_or_else(|| "failed".to_owned(), ToString::to_string)
            } else {
                format!("failed: {}", failed.join(", "))
            })
        }
        _ => None,
    };
    events(&CiEvent::Finished {
        name: job.entry.name.clone(),
        attempt: attempt.number,
        status: attempt.status,
        duration: Duration::from_secs_f64(attempt.duration),
        detail,
    });
    job.entry.duration += attempt.duration;
    job.entry.attempts.push(attempt);
    job.entry.attempts.sort_by_key(|a| a.number);
    if job.entry.attempts.len() < options.repeat.max(1) as usize {
        return;
    }
    let (status, reason) = outcome(&job.entry.attempts);
    job.entry.status = status;
    job.entry.reason = reason;
}

/// An entry's status from all its attempts: passed if every one passed;
/// failed if one failed, or if some passed and others could not run;
/// error if none ran its script. Several attempts that disagree are
/// flaky, and the reason says so.
fn outcome(all: &[Attempt]) -> (Status, Option<String>) {
    if all.iter().any(|a| a.reason.as_deref() == Some(INTERRUPTED)) {
        return (Status::Error, Some(INTERRUPTED.to_owned()));
    }
    let passed = all.iter().filter(|a| a.status == Status::Passed).count();
    let status = if passed == all.len() {
        Status::Passed
    } else if passed > 0 || all.iter().any(|a| a.status == Status::Failed) {
        Status::Failed
    } else {
        Status::Error
    };
    let reason = if passed > 0 && passed < all.len() {
        Some(format!("flaky: passed {passed} of {} attempts", all.len()))
    } else if status == Status::Error {
        all.iter().find_map(|a| a.reason.clone())
    } else {
        None
    };
    (status, reason)
}

fn write_reports(out: &Path, summary: &Summary, events: &dyn Fn(&CiEvent)) -> Result<(), CiError> {
    for (name, text) in [
        ("summary.json", summary.to_json()),
        ("junit.xml", junit::render(summary)),
    ] {
        let path = out.join(name);
        write_file(&path, text.as_bytes())?;
        events(&CiEvent::Wrote { path });
    }
    html::write(out, summary).map_err(|source| CiError::Write {
        path: out.join("index.html"),
        source,
    })?;
    events(&CiEvent::Wrote {
        path: out.join("index.html"),
    });
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CiError> {
    let write = |source| CiError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(write)?;
    }
    fs::write(path, bytes).map_err(write)
}

/// Runs `command` with its stdout and stderr into `log` (created with its
/// folder), stdin closed.
fn spawn_logged(command: &mut Command, log: &Path) -> io::Result<Child> {
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent)?;
    }
    let file = fs::File::create(log)?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
}

/// Every file under `folder`, relative to `base`, sorted.
fn files_under(base: &Path, folder: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(path),
                Ok(t) if t.is_file() => {
                    if let Ok(rel) = path.strip_prefix(base) {
                        out.push(rel.to_path_buf());
                    }
                }
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// The last `n` lines of a file, or why it cannot be read.
fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.trim_end().lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

/// `MemAvailable` of `/proc/meminfo`, in MiB.
fn available_mib() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(number: u32, status: Status, reason: Option<&str>) -> Attempt {
        Attempt {
            number,
            status,
            duration: 1.0,
            exit_code: Some(1),
            log: PathBuf::from("x/1/log.txt"),
            report: None,
            junit: None,
            artifacts: Vec::new(),
            reason: reason.map(String::from),
        }
    }

    #[test]
    fn attempts_that_disagree_are_a_flaky_failure() {
        use Status::*;
        let all = |s: &[Status]| -> Vec<Attempt> {
            s.iter()
                .enumerate()
                .map(|(i, s)| attempt(i as u32 + 1, *s, (*s == Error).then_some("no cluster")))
                .collect()
        };
        assert_eq!(outcome(&all(&[Passed, Passed])), (Passed, None));
        assert_eq!(outcome(&all(&[Failed, Failed])), (Failed, None));
        assert_eq!(
            outcome(&all(&[Passed, Failed, Passed])),
            (Failed, Some("flaky: passed 2 of 3 attempts".into()))
        );
        assert_eq!(
            outcome(&all(&[Error, Passed])),
            (Failed, Some("flaky: passed 1 of 2 attempts".into()))
        );
        assert_eq!(
            outcome(&all(&[Error, Error])),
            (Error, Some("no cluster".into()))
        );
        assert_eq!(outcome(&all(&[Error, Failed])), (Failed, None));
        let mut stopped = all(&[Passed, Passed]);
        stopped[1].status = Error;
        stopped[1].reason = Some(INTERRUPTED.into());
        assert_eq!(
            outcome(&stopped),
            (Error, Some(INTERRUPTED.into())),
            "an interrupted run is not a flaky test"
        );
    }

    #[test]
    fn an_output_folder_of_something_else_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("precious.txt"), "keep me").unwrap();
        assert!(matches!(prepare_out(&out), Err(CiError::ForeignOut { .. })));
        assert!(out.join("precious.txt").is_file());
        fs::write(out.join("summary.json"), "{}").unwrap();
        prepare_out(&out).unwrap();
        assert_eq!(
            fs::read_dir(&out).unwrap().count(),
            0,
            "an earlier run's output is emptied"
        );
        prepare_out(&dir.path().join("new")).unwrap();
        assert!(dir.path().join("new").is_dir());
    }
}
