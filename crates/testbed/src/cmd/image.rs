//! `testbed lock`, `testbed build`, `testbed verify`, `testbed vendor` and
//! `testbed store`: the package flags (`--offline`, `--vendor`), the verbs
//! over `testbed_cluster::images` (the roles as image specs with the guest
//! agent, the lock beside the composition), and the image builder's
//! progress on the terminal (spinners or lines, which `up` and `test` use
//! too).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use testbed_cluster::images::{self, LockNote, PackageOptions};
use testbed_image::debs::{self, Acquired};
use testbed_image::{
    Event, ImageError, ImageSpec, LockOptions, Lockfile, Origin, Progress, Step, Store,
};
use testbed_model::Composition;

use crate::output::{Failure, Outcome};

/// Where a build may take packages from: the flags `build`, `up`, `test`
/// and `lock --check` share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PackageArgs {
    /// Use no network: take every locked package from the store's package cache or a --vendor folder
    #[arg(long)]
    pub offline: bool,
    /// A folder of .deb files (as `testbed vendor` writes it) to take locked packages from; repeatable
    #[arg(long = "vendor", value_name = "DIR")]
    pub vendor: Vec<PathBuf>,
}

impl PackageArgs {
    /// The library's package options.
    pub fn options(&self) -> PackageOptions {
        PackageOptions {
            offline: self.offline,
            vendor: self.vendor.clone(),
        }
    }
}

/// The guest agent binary installed into every image: `$TESTBED_AGENT`,
/// else `testbed-agent` beside this executable.
fn agent_binary() -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe().context("cannot find the path of the testbed executable")?;
    Ok(images::agent_binary(&exe)?)
}

/// Prints a note about the lock file (above the spinners, if any).
pub fn lock_note(n: LockNote) {
    note(&n.to_string());
}

pub(crate) fn failure(e: ImageError) -> Failure {
    e.into()
}

/// Prints builder events to stderr, one line each, with the time since
/// start: what CI logs and tests get, where redrawn spinners would be
/// noise.
pub struct Lines {
    start: Instant,
    last: Mutex<Option<String>>,
}

impl Lines {
    pub fn new() -> Lines {
        Lines {
            start: Instant::now(),
            last: Mutex::new(None),
        }
    }
}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Packages => "gathering the locked packages",
        Step::Bootstrapping => "installing packages (mmdebstrap)",
        Step::Customizing => "adding static files and the agent, trimming units",
        Step::Normalizing => "removing non-deterministic files",
        Step::Artifacts => "making kernel, initramfs, erofs root and container archive",
        Step::Committing => "hashing outputs and committing to the store",
    }
}

/// An event as one line of text.
fn describe(event: &Event) -> String {
    match event {
        Event::UpdatingIndex { distro } => format!("downloading the package index of {distro}"),
        Event::Resolving { role } => format!("{role}: resolving packages"),
        Event::Locked { role, packages } => format!("{role}: locked {packages} packages"),
        Event::CacheHit { role, key } => format!("{role}: up to date ({})", short(key)),
        Event::SharedWith { role, builder } => format!("{role}: same image as {builder}"),
        Event::Step { role, step } => format!("{role}: {}", step_name(*step)),
        Event::Built { role, key, elapsed } => format!(
            "{role}: built {} in {:.1}s",
            short(key),
            elapsed.as_secs_f64()
        ),
        Event::CleanedStale { name } => format!("removed {name}, left by an interrupted build"),
        Event::Cache { role, message } => format!("{role}: {message}"),
        Event::PackagesFrom { origin, packages } => from_line(origin, packages),
        Event::Downloading { origin, count } => {
            format!(
                "downloading {count} package{} from {origin}",
                plural(*count)
            )
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Where packages came from, as one line: counts for the usual sources
/// (the cache, the mirror), the packages by name for the others, so that a
/// build from a snapshot archive or a vendor folder says what it took
/// there.
fn from_line(origin: &Origin, packages: &[String]) -> String {
    /// Beyond this many, a vendor folder or another cache is summed up.
    const NAMED: usize = 12;
    let n = packages.len();
    let mut names = packages.to_vec();
    names.sort();
    match origin {
        Origin::Cache | Origin::Mirror => format!("{n} package{} from {origin}", plural(n)),
        // The exception worth reading in full: what the mirror no longer has.
        Origin::Snapshot { .. } => {
            format!(
                "{n} package{} from {origin}: {}",
                plural(n),
                names.join(", ")
            )
        }
        _ if n <= NAMED => {
            format!(
                "{n} package{} from {origin}: {}",
                plural(n),
                names.join(", ")
            )
        }
        _ => format!(
            "{n} packages from {origin}: {}, and {} more",
            names[..NAMED].join(", "),
            n - NAMED
        ),
    }
}

impl Progress for Lines {
    fn event(&self, event: Event) {
        let line = describe(&event);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() == Some(line.as_str()) {
            return;
        }
        errln!("[{:>6.1}s] {line}", self.start.elapsed().as_secs_f64());
        *last = Some(line);
    }
}

/// The spinners being drawn, if any, so that [`note`] prints above them
/// instead of being overwritten by their next redraw.
static LIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Prints a line to stderr that is not a builder event (e.g. that a lock
/// was created), above the spinners while they are drawn.
pub fn note(line: &str) {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    match live.as_ref() {
        Some(multi) if multi.println(line).is_ok() => {}
        _ => errln!("{line}"),
    }
}

/// What a spinner line is for: the package index download, or a role.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    Index,
    Role(String),
}

/// One spinner per role (and one for the package index download) showing
/// the current step and the time since the role's first event; finished
/// lines keep their last message.
pub struct Spinners {
    multi: MultiProgress,
    running: ProgressStyle,
    done: ProgressStyle,
    stopped: ProgressStyle,
    bars: Mutex<Vec<(Subject, ProgressBar)>>,
}

impl Spinners {
    fn new(target: ProgressDrawTarget) -> Spinners {
        let style = |template: &str, ticks: &[&str]| {
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_spinner())
                .tick_strings(ticks)
        };
        // The last tick string is what a finished bar shows.
        let spin = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏", "✓"];
        Spinners {
            multi: MultiProgress::with_draw_target(target),
            running: style("{spinner} {prefix:<12} {msg} [{elapsed}]", &spin),
            done: style("{spinner} {prefix:<12} {msg}", &spin),
            stopped: style("{spinner} {prefix:<12} {msg}", &["✗", "✗"]),
            bars: Mutex::new(Vec::new()),
        }
    }

    /// The line for `subject`; a new one starts with `message`, so that it
    /// is never drawn empty.
    fn bar(&self, subject: Subject, message: &str) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, bar)) = bars.iter().find(|(s, _)| *s == subject) {
            return bar.clone();
        }
        let prefix = match &subject {
            Subject::Index => "apt".to_string(),
            Subject::Role(role) => role.clone(),
        };
        let bar = ProgressBar::new_spinner()
            .with_style(self.running.clone())
            .with_prefix(prefix)
            .with_message(message.to_string());
        let bar = self.multi.add(bar);
        bar.enable_steady_tick(Duration::from_millis(100));
        bars.push((subject, bar.clone()));
        bar
    }

    fn show(&self, subject: Subject, message: String) {
        let bar = self.bar(subject, &message);
        if bar.is_finished() {
            // A role that is busy again (`verify`'s rebuild after the
            // reference build) gets its spinner and its clock back.
            bar.reset();
            bar.set_style(self.running.clone());
            bar.enable_steady_tick(Duration::from_millis(100));
        }
        bar.set_message(message);
    }

    fn finish(&self, subject: Subject, message: String) {
        let bar = self.bar(subject, &message);
        bar.set_style(self.done.clone());
        bar.finish_with_message(message);
    }

    /// (prefix, message, finished) of every line, in order.
    #[cfg(test)]
    fn lines(&self) -> Vec<(String, String, bool)> {
        let bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        bars.iter()
            .map(|(_, b)| (b.prefix(), b.message(), b.is_finished()))
            .collect()
    }
}

impl Progress for Spinners {
    fn event(&self, event: Event) {
        // Any event after the index download means the download is over.
        if !matches!(event, Event::UpdatingIndex { .. }) {
            let index = self
                .bars
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(s, _)| *s == Subject::Index)
                .map(|(_, b)| b.clone());
            if let Some(bar) = index.filter(|b| !b.is_finished()) {
                let message = bar.message().replace("downloading", "downloaded");
                bar.set_style(self.done.clone());
                bar.finish_with_message(message);
            }
        }
        let role = |r: &str| Subject::Role(r.to_string());
        match event {
            Event::UpdatingIndex { distro } => self.show(
                Subject::Index,
                format!("downloading the package index of {distro}"),
            ),
            Event::Resolving { role: r } => self.show(role(&r), "resolving packages".into()),
            Event::Locked { role: r, packages } => {
                self.finish(role(&r), format!("locked {packages} packages"))
            }
            Event::CacheHit { role: r, key } => {
                self.finish(role(&r), format!("up to date ({})", short(&key)))
            }
            Event::SharedWith { role: r, builder } => {
                self.finish(role(&r), format!("same image as {builder}"))
            }
            Event::Step { role: r, step } => self.show(role(&r), step_name(step).into()),
            Event::Built {
                role: r,
                key,
                elapsed,
            } => self.finish(
                role(&r),
                format!("built {} in {:.1}s", short(&key), elapsed.as_secs_f64()),
            ),
            event @ (Event::CleanedStale { .. }
            | Event::Cache { .. }
            | Event::PackagesFrom { .. }
            | Event::Downloading { .. }) => {
                let _ = self.multi.println(describe(&event));
            }
        }
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        // Lines still spinning when the verb ends were cut short by an
        // error (printed next): freeze them with a mark that says so.
        let bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        for (_, bar) in bars.iter().filter(|(_, b)| !b.is_finished()) {
            bar.set_style(self.stopped.clone());
            bar.abandon_with_message(format!("{} (stopped)", bar.message()));
        }
    }
}

/// Where builder progress goes: spinners when stderr is a terminal,
/// timestamped lines otherwise.
pub enum Reporter {
    Lines(Lines),
    Spinners(Box<Spinners>),
}

impl Reporter {
    pub fn new() -> Reporter {
        let terminal =
            std::io::stderr().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb");
        if terminal {
            let spinners = Spinners::new(ProgressDrawTarget::stderr());
            *LIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(spinners.multi.clone());
            Reporter::Spinners(Box::new(spinners))
        } else {
            Reporter::Lines(Lines::new())
        }
    }
}

impl Progress for Reporter {
    fn event(&self, event: Event) {
        match self {
            Reporter::Lines(lines) => lines.event(event),
            Reporter::Spinners(spinners) => spinners.event(event),
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Reporter::Spinners(_) = self {
            *LIVE.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

fn short(key: &str) -> &str {
    key.get(..12).unwrap_or(key)
}

/// The composition and its specs; with the agent unless `for_lock` (the
/// lock does not depend on it, so locking works without one).
pub(crate) fn load(
    path: Option<&Path>,
    for_lock: bool,
) -> Result<(Composition, Vec<ImageSpec>), Failure> {
    let path = testbed_model::resolve_path(path);
    let comp = testbed_model::load(&path)?;
    let specs = if for_lock {
        images::specs(&comp, None)?
    } else {
        images::specs(&comp, Some(&agent_binary()?))?
    };
    Ok((comp, specs))
}

pub fn lock(
    path: Option<&Path>,
    update: bool,
    check: bool,
    json: bool,
    packages: &PackageArgs,
) -> Outcome {
    let (comp, specs) = load(path, true)?;
    if check {
        return lock_check(&comp, &specs, packages, json);
    }
    if packages.offline || !packages.vendor.is_empty() {
        return Err(Failure::Usage(
            "--offline and --vendor go with --check: locking reads the archive's current index"
                .into(),
        ));
    }
    let lock_file = images::lock_path(&comp);
    let previous = Lockfile::read_if_exists(&lock_file).map_err(failure)?;
    if let (Some(prev), false) = (&previous, update) {
        if prev.check_fresh(&specs, &lock_file).is_ok() {
            outln!(
                "{} is up to date (use --update to move to current package versions)",
                lock_file.display()
            );
            return Ok(());
        }
    }
    let progress = Reporter::new();
    let lock = testbed_image::lock(
        &specs,
        previous.as_ref(),
        &LockOptions::default(),
        &progress,
    )
    .map_err(failure)?;
    drop(progress);
    if previous.as_ref() == Some(&lock) {
        outln!("{} is unchanged", lock_file.display());
        return Ok(());
    }
    lock.write(&lock_file).map_err(failure)?;
    match &previous {
        Some(prev) => {
            let changes = lock.changes_from(prev);
            outln!(
                "wrote {}: {} change{}",
                lock_file.display(),
                changes.len(),
                plural(changes.len())
            );
            for c in changes {
                outln!("  {c}");
            }
        }
        None => outln!("wrote {}", lock_file.display()),
    }
    Ok(())
}

/// `lock --check`: can every locked package be had, and from where? Reads
/// indices, downloads no package, changes nothing.
fn lock_check(
    comp: &Composition,
    specs: &[ImageSpec],
    packages: &PackageArgs,
    json: bool,
) -> Outcome {
    // Checked as the build would read it, without writing an upgrade.
    let (lock, lock_file) = existing_lock(comp, specs, false)?;
    let store = Store::open_default().map_err(failure)?;
    let roles: Vec<(&str, &testbed_image::lock::RoleLock)> =
        lock.roles.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let reporter = Reporter::new();
    // Where the packages come from goes to stdout below, once.
    let progress = |event: Event| {
        if !matches!(event, Event::PackagesFrom { .. }) {
            reporter.event(event)
        }
    };
    let acquired = debs::acquire(
        &store,
        &roles,
        &packages.options().sources(comp),
        false,
        &progress,
    )
    .map_err(failure)?;
    drop(reporter);
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&check_json(&lock_file, &acquired)).unwrap_or_default()
        );
        return if acquired.missing.is_empty() {
            Ok(())
        } else {
            Err(Failure::Reported(1))
        };
    }
    for (origin, packages) in &acquired.from {
        outln!("{}", from_line(origin, packages));
    }
    for r in &acquired.refused {
        outln!("refused: {r}");
    }
    if acquired.missing.is_empty() {
        outln!("every locked package of {} can be had", lock_file.display());
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow::anyhow!(
            "{}",
            ImageError::Unavailable {
                missing: acquired.missing
            }
        )))
    }
}

/// `lock --check --json`: every source with its packages, the refused
/// files, and what no source has.
fn check_json(lock_file: &Path, acquired: &Acquired) -> serde_json::Value {
    let from: Vec<serde_json::Value> = acquired
        .from
        .iter()
        .map(|(origin, packages)| {
            let mut v = match origin {
                Origin::Cache => serde_json::json!({ "source": "cache" }),
                Origin::OtherCache(path) => {
                    serde_json::json!({ "source": "other-cache", "path": path })
                }
                Origin::Vendor(path) => serde_json::json!({ "source": "vendor", "path": path }),
                Origin::Mirror => serde_json::json!({ "source": "mirror" }),
                Origin::Snapshot { base, point } => {
                    serde_json::json!({ "source": "snapshot", "base": base, "point": point })
                }
            };
            v["packages"] = serde_json::json!(packages);
            v
        })
        .collect();
    let missing: Vec<serde_json::Value> = acquired
        .missing
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name, "version": m.version, "arch": m.arch,
                "roles": m.roles, "tried": m.tried,
            })
        })
        .collect();
    serde_json::json!({
        "lock": lock_file,
        "ok": acquired.missing.is_empty(),
        "from": from,
        "refused": acquired.refused,
        "missing": missing,
    })
}

/// The composition's lock, which must exist and fit its roles; a format 1
/// lock is upgraded (in place, with a note, when `write`).
fn existing_lock(
    comp: &Composition,
    specs: &[ImageSpec],
    write: bool,
) -> Result<(Lockfile, PathBuf), Failure> {
    let lock_file = images::lock_path(comp);
    let Some(mut lock) = Lockfile::read_if_exists(&lock_file).map_err(failure)? else {
        return Err(Failure::Usage(format!(
            "{} does not exist; `testbed lock` makes it",
            lock_file.display()
        )));
    };
    lock.check_fresh(specs, &lock_file).map_err(failure)?;
    if write {
        images::upgrade(&mut lock, &lock_file, &mut lock_note)?;
    } else {
        lock.upgrade(images::current_sources).map_err(failure)?;
    }
    Ok((lock, lock_file))
}

/// `testbed vendor`: every locked package into a folder, for `--vendor`.
pub fn vendor(path: Option<&Path>, dir: &Path, json: bool) -> Outcome {
    let (comp, specs) = load(path, true)?;
    let (lock, lock_file) = existing_lock(&comp, &specs, true)?;
    let store = Store::open_default().map_err(failure)?;
    let roles: Vec<(&str, &testbed_image::lock::RoleLock)> =
        lock.roles.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let progress = Reporter::new();
    let sources = PackageOptions::default().sources(&comp);
    let done = debs::vendor(&store, &roles, &sources, dir, &progress).map_err(failure)?;
    drop(progress);
    if json {
        let v = serde_json::json!({
            "dir": dir,
            "packages": done.packages,
            "bytes": done.bytes,
        });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    outln!(
        "{} packages ({:.1} MiB) of {} in {}, with SHA256SUMS",
        done.packages,
        done.bytes as f64 / (1024.0 * 1024.0),
        lock_file.display(),
        dir.display()
    );
    outln!(
        "build from it alone with: testbed build --offline --vendor {} {}",
        dir.display(),
        comp.dir.display()
    );
    Ok(())
}

pub fn build(path: Option<&Path>, json: bool, packages: &PackageArgs) -> Outcome {
    let comp = testbed_model::load(&testbed_model::resolve_path(path))?;
    let progress = Reporter::new();
    let packages = packages.options();
    // What `up` builds, the cache included (docs/cache.md).
    let built = images::build(
        &comp,
        &packages,
        &agent_binary()?,
        &progress,
        &mut lock_note,
    )?;
    drop(progress);
    if json {
        let v: Vec<serde_json::Value> = built
            .iter()
            .map(|b| serde_json::json!({ "role": b.role, "key": b.key, "dir": b.dir, "cached": b.cached }))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for b in &built {
            outln!(
                "{:<12} {}  {}",
                b.role,
                if b.cached { "cached" } else { "built " },
                b.dir.display()
            );
        }
        if built.iter().all(|b| b.cached) {
            outln!("nothing to rebuild");
        }
    }
    Ok(())
}

/// `build-steps`: a rootless build's steps after mmdebstrap, in its user
/// namespace; each step's name on stdout as it starts, for the build that
/// started this process.
pub fn build_steps(request: &Path) -> Outcome {
    let mut out = std::io::stdout().lock();
    testbed_image::rootless::finish(request, &mut out).map_err(failure)
}

pub fn verify(path: Option<&Path>) -> Outcome {
    let (comp, specs) = load(path, false)?;
    let progress = Reporter::new();
    let packages = PackageOptions::default();
    let lock = images::ensure_lock(&comp, &specs, &packages, &progress, &mut lock_note)?;
    let (store, options) = images::store_and_options(&comp, &packages)?;
    let v = testbed_image::verify(&store, &specs, &lock, &options, &progress).map_err(failure)?;
    drop(progress);
    for r in &v.roles {
        match &r.difference {
            None => outln!(
                "{:<12} identical ({} outputs, {})",
                r.role,
                r.compared,
                short(&r.key)
            ),
            Some(d) => {
                outln!(
                    "{:<12} DIFFERS: {} is {} in the store but {} when rebuilt",
                    r.role,
                    d.output,
                    d.expected,
                    d.actual
                );
                if let Some((a, b)) = &d.first_path {
                    outln!("             first differing file:\n               store:   {a}\n               rebuilt: {b}");
                }
            }
        }
    }
    if v.identical() {
        Ok(())
    } else {
        if let Some(kept) = &v.kept_store {
            errln!("the rebuild is kept in {} for inspection", kept.display());
        }
        Err(Failure::Reported(1))
    }
}

pub fn store_ls(json: bool) -> Outcome {
    let store = Store::open_default().map_err(failure)?;
    let entries = store.list().map_err(failure)?;
    let cache = store.package_cache().map_err(failure)?;
    if json {
        let v: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                let users: Vec<serde_json::Value> = e
                    .users
                    .iter()
                    .map(|(lock, roles)| serde_json::json!({ "lock": lock, "roles": roles }))
                    .collect();
                serde_json::json!({ "key": e.key, "path": e.path, "size": e.size, "users": users })
            })
            .collect();
        let v = serde_json::json!({
            "store": store.root(),
            "shared": store.shared(),
            "entries": v,
            "packages": { "path": cache.path, "count": cache.count, "size": cache.size },
        });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    outln!("store: {}", store.root().display());
    if let Some(shared) = store.shared() {
        outln!(
            "shared store (read-only for you, its images are used too): {}",
            shared.display()
        );
    }
    for e in &entries {
        let users: Vec<String> = e
            .users
            .iter()
            .map(|(lock, roles)| format!("{} ({})", lock.display(), roles.join(", ")))
            .collect();
        let users = if users.is_empty() {
            "unused".to_string()
        } else {
            users.join("; ")
        };
        outln!(
            "{}  {:>8.1} MiB  {users}",
            short(&e.key),
            e.size as f64 / (1024.0 * 1024.0)
        );
    }
    if entries.is_empty() {
        outln!("(no images)");
    }
    outln!(
        "package cache: {} .deb file{}, {:.1} MiB",
        cache.count,
        plural(cache.count),
        cache.size as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

pub fn store_gc() -> Outcome {
    let store = Store::open_default().map_err(failure)?;
    let report = store.gc(&Reporter::new()).map_err(failure)?;
    for key in &report.removed {
        outln!("removed {}", short(key));
    }
    for key in &report.snapshots_removed {
        outln!("removed snapshot {} (its image is gone)", short(key));
    }
    outln!(
        "freed {:.1} MiB; kept {} entr{} still used by a lock file; package cache: removed {}, kept {} a lock file names",
        report.freed as f64 / (1024.0 * 1024.0),
        report.kept.len(),
        if report.kept.len() == 1 { "y" } else { "ies" },
        report.packages_removed,
        report.packages_kept,
    );
    if let Some(note) = &report.packages_note {
        outln!("{note}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(prefix: &str, message: &str, finished: bool) -> (String, String, bool) {
        (prefix.to_string(), message.to_string(), finished)
    }

    #[test]
    fn spinners_show_each_roles_current_step_and_outcome() {
        let s = Spinners::new(ProgressDrawTarget::hidden());
        let role = |r: &str| r.to_string();
        s.event(Event::UpdatingIndex {
            distro: "debian/bookworm".into(),
        });
        assert_eq!(
            s.lines(),
            [line(
                "apt",
                "downloading the package index of debian/bookworm",
                false
            )]
        );
        s.event(Event::Step {
            role: role("ctl"),
            step: Step::Packages,
        });
        s.event(Event::CacheHit {
            role: role("compute"),
            key: "0123456789abcdef".into(),
        });
        s.event(Event::Step {
            role: role("ctl"),
            step: Step::Bootstrapping,
        });
        assert_eq!(
            s.lines(),
            [
                line(
                    "apt",
                    "downloaded the package index of debian/bookworm",
                    true
                ),
                line("ctl", "installing packages (mmdebstrap)", false),
                line("compute", "up to date (0123456789ab)", true),
            ]
        );
        s.event(Event::Built {
            role: role("ctl"),
            key: "fedcba9876543210".into(),
            elapsed: Duration::from_millis(61_250),
        });
        assert_eq!(
            s.lines()[1],
            line("ctl", "built fedcba987654 in 61.2s", true)
        );
        // `verify` rebuilds a role that was up to date: its line spins again.
        s.event(Event::Step {
            role: role("compute"),
            step: Step::Normalizing,
        });
        assert_eq!(
            s.lines()[2],
            line("compute", "removing non-deterministic files", false)
        );
    }

    #[test]
    fn spinners_cut_short_by_an_error_say_so() {
        let s = Spinners::new(ProgressDrawTarget::hidden());
        s.event(Event::Step {
            role: "ctl".into(),
            step: Step::Bootstrapping,
        });
        s.event(Event::SharedWith {
            role: "login".into(),
            builder: "ctl".into(),
        });
        let bars: Vec<ProgressBar> = s
            .bars
            .lock()
            .expect("bars")
            .iter()
            .map(|(_, b)| b.clone())
            .collect();
        drop(s);
        assert_eq!(
            bars[0].message(),
            "installing packages (mmdebstrap) (stopped)"
        );
        assert!(bars[0].is_finished());
        assert_eq!(bars[1].message(), "same image as ctl");
    }
}
