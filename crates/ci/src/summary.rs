//! What a `testbed ci` run found and did: the data behind its JSON
//! summary, its JUnit file and its HTML report. Paths in it are relative
//! to the run's output folder, so the folder can be moved or published
//! as it is.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use testbed_driver::TestReport;

/// How one composition's test ended in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The test ran and passed (every attempt, with `--repeat`).
    Passed,
    /// The test ran and failed (at least one attempt).
    Failed,
    /// The test could not run: the composition is invalid, an image did
    /// not build, or the cluster did not come up. `reason` says which.
    Error,
    /// Not run: it passed before with exactly the same inputs (its result
    /// key), and `--rerun` was not given. `reason` says when.
    Cached,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Error => "error",
            Status::Cached => "cached",
        }
    }

    /// Whether the run counts it as a success.
    pub fn is_ok(self) -> bool {
        matches!(self, Status::Passed | Status::Cached)
    }
}

/// One run of a composition's test (there are several with `--repeat`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based.
    pub number: u32,
    pub status: Status,
    /// Seconds, from starting `testbed test` to its end.
    pub duration: f64,
    /// `testbed test`'s exit code (`None`: killed by a signal).
    pub exit_code: Option<i32>,
    /// Everything `testbed test` printed (progress, summary), relative to
    /// the output folder.
    pub log: PathBuf,
    /// The driver's report, when the script ran.
    pub report: Option<TestReport>,
    /// The report's JUnit file, when the script ran.
    pub junit: Option<PathBuf>,
    /// The artifacts of a failure (console logs, journals, fault
    /// history), relative to the output folder: files, not the folder.
    pub artifacts: Vec<PathBuf>,
    /// Why it could not run, or the last lines of its log when it failed
    /// without a report.
    pub reason: Option<String>,
}

/// One composition with a `[test]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The composition's folder relative to the folder searched (`.` for
    /// that folder itself); unique in a run; the report's name for it.
    pub name: String,
    /// The composition file, as found.
    pub composition: PathBuf,
    /// Its cluster's name.
    pub cluster: String,
    pub status: Status,
    /// Why it was cached, or why it could not run.
    pub reason: Option<String>,
    /// The result key: a digest of everything the test depends on
    /// (docs/ci.md). `None` when the composition could not be loaded.
    pub key: Option<String>,
    /// Seconds spent on it in this run (all attempts; 0 when cached).
    pub duration: f64,
    /// The topology picture (`testbed graph`), relative to the output
    /// folder.
    pub topology: Option<PathBuf>,
    /// Its nodes as `name (role)`, in plan order.
    pub nodes: Vec<String>,
    pub attempts: Vec<Attempt>,
}

/// A whole `testbed ci` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The folder searched, as given.
    pub dir: PathBuf,
    /// `testbed --version`'s number.
    pub testbed_version: String,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    /// Seconds.
    pub duration: f64,
    /// Attempts per test (`--repeat`).
    pub repeat: u32,
    /// Whether the run was stopped before its end (a signal): what had
    /// not finished is an error saying so.
    #[serde(default)]
    pub interrupted: bool,
    pub entries: Vec<Entry>,
}

impl Summary {
    /// How many entries ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.entries.iter().filter(|e| e.status == status).count()
    }

    /// Whether every test passed or was cached.
    pub fn passed(&self) -> bool {
        !self.interrupted && self.entries.iter().all(|e| e.status.is_ok())
    }

    /// The summary as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The folder of an entry in the output folder: its name with `/` as
/// `--` (`.` is `_root`), so that every entry has one flat folder.
pub fn slug(name: &str) -> String {
    if name == "." || name.is_empty() {
        return "_root".to_owned();
    }
    name.replace('/', "--")
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(epoch_secs: f64) -> String {
    let (y, m, d, h, min, sec) = civil(epoch_secs);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{min:02}:{sec:02} UTC")
}

/// Seconds since the Unix epoch (not finite: 0) as the UTC year, month,
/// day, hour, minute and second, to the second below.
pub(crate) fn civil(epoch_secs: f64) -> (i64, u32, u32, i64, i64, i64) {
    let secs = if epoch_secs.is_finite() {
        epoch_secs.floor() as i64
    } else {
        0
    };
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_657_452.9), "2026-12-07 15:30:52 UTC");
    }

    #[test]
    fn slugs_are_flat_folder_names() {
        assert_eq!(slug("."), "_root");
        assert_eq!(slug("examples/slurm"), "examples--slurm");
    }
}
