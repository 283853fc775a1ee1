//! The result of a test run and its JUnit XML and JSON forms.
//!
//! A report has one case per subtest, plus a case named after the script
//! when the script failed outside any subtest or has no subtest at all.
//! What happened outside subtests is kept as the suite's own output.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where in the script something happened (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A script error (syntax or runtime) with the place it points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptError {
    pub message: String,
    pub location: Option<Location>,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "{loc}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ScriptError {}

/// One entry of a case's captured output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Captured {
    /// A `log(...)` or `print(...)` line.
    Log {
        /// Seconds since the test started.
        at: f64,
        message: String,
    },
    /// A command run on a node, with what it printed.
    Command {
        at: f64,
        node: String,
        command: String,
        /// `exit status 0`, `killed by signal 9`, or why it could not run.
        status: String,
        stdout: String,
        stderr: String,
        #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
        duration: Duration,
    },
    /// A power change, fault, wait or copy.
    Action {
        at: f64,
        node: Option<String>,
        action: String,
        error: Option<String>,
        #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
        duration: Duration,
    },
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// Seconds as written by [`secs`]; what is not a finite, non-negative
/// number is an error, not a panic.
fn from_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = f64::deserialize(d)?;
    Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
}

/// One subtest (or the script itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestCase {
    pub name: String,
    #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
    pub duration: Duration,
    pub passed: bool,
    /// Why it failed, with the script location.
    pub failure: Option<String>,
    pub output: Vec<Captured>,
}

/// The outcome of one script run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestReport {
    /// The suite's name: the cluster's.
    pub name: String,
    pub script: PathBuf,
    /// `kvm` or `tcg`.
    pub accel: String,
    pub timeout_factor: f64,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
    pub duration: Duration,
    pub passed: bool,
    /// The error that ended the script, if any.
    pub failure: Option<ScriptError>,
    pub cases: Vec<TestCase>,
    /// What happened outside subtests.
    pub output: Vec<Captured>,
}

impl TestReport {
    pub fn failures(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed).count()
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        // Every field serializes to plain JSON values; this cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as JUnit XML: one `testsuite` with a `testcase` per case.
    pub fn to_junit(&self) -> String {
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let tests = self.cases.len();
        let failures = self.failures();
        let time = format!("{:.3}", self.duration.as_secs_f64());
        x.push_str(&format!(
            "<testsuites name=\"testbed\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" time=\"{time}\">\n"
        ));
        x.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{time}\">\n",
            escape(&self.name)
        ));
        x.push_str("    <properties>\n");
        for (name, value) in [
            ("script", self.script.display().to_string()),
            ("accel", self.accel.clone()),
            ("timeout_factor", self.timeout_factor.to_string()),
        ] {
            x.push_str(&format!(
                "      <property name=\"{name}\" value=\"{}\"/>\n",
                escape(&value)
            ));
        }
        x.push_str("    </properties>\n");
        x.push_str(&self.junit_cases(&self.name));
        x.push_str("  </testsuite>\n</testsuites>\n");
        x
    }
}

impl TestReport {
    /// The `testcase` elements of the subtests (their class named
    /// `classname`) and the script's own output as the suite's
    /// `system-out`: the body of a `testsuite`, here and in `testbed ci`'s
    /// one file for a whole run.
    pub fn junit_cases(&self, classname: &str) -> String {
        let mut x = String::new();
        for case in &self.cases {
            x.push_str(&format!(
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\">\n",
                escape(&case.name),
                escape(classname),
                case.duration.as_secs_f64()
            ));
            if let Some(failure) = &case.failure {
                let first = failure.lines().next().unwrap_or_default();
                x.push_str(&format!(
                    "      <failure message=\"{}\" type=\"failure\">{}</failure>\n",
                    escape(first),
                    escape(failure)
                ));
            }
            if !case.output.is_empty() {
                x.push_str(&format!(
                    "      <system-out>{}</system-out>\n",
                    escape(&render_output(&case.output))
                ));
            }
            x.push_str("    </testcase>\n");
        }
        if !self.output.is_empty() {
            x.push_str(&format!(
                "    <system-out>{}</system-out>\n",
                escape(&render_output(&self.output))
            ));
        }
        x
    }
}

/// Captured output as plain text, one entry after another.
pub fn render_output(entries: &[Captured]) -> String {
    let mut out = String::new();
    for entry in entries {
        match entry {
            Captured::Log { at, message } => {
                out.push_str(&format!("[{at:8.3}s] {message}\n"));
            }
            Captured::Command {
                at,
                node,
                command,
                status,
                stdout,
                stderr,
                duration,
            } => {
                out.push_str(&format!(
                    "[{at:8.3}s] {node}$ {command}\n    {status} after {:.3}s\n",
                    duration.as_secs_f64()
                ));
                for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
                    if !text.is_empty() {
                        out.push_str(&format!("    {name}:\n"));
                        for line in text.lines() {
                            out.push_str(&format!("      {line}\n"));
                        }
                    }
                }
            }
            Captured::Action {
                at,
                node,
                action,
                error,
                duration,
            } => {
                let who = node
                    .as_deref()
                    .map(|n| format!("{n}: "))
                    .unwrap_or_default();
                let how = match error {
                    None => "ok".to_owned(),
                    Some(e) => format!("failed: {e}"),
                };
                out.push_str(&format!(
                    "[{at:8.3}s] {who}{action}: {how} after {:.3}s\n",
                    duration.as_secs_f64()
                ));
            }
        }
    }
    out
}

pub use testbed_model::xml::escape;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_errors_point_at_the_script() {
        let e = ScriptError {
            message: "boom".into(),
            location: Some(Location {
                file: "t.rhai".into(),
                line: 3,
                column: 7,
            }),
        };
        assert_eq!(e.to_string(), "t.rhai:3:7: boom");
    }

    #[test]
    fn a_report_reads_back_from_its_json() {
        let report = TestReport {
            name: "c".into(),
            script: "t.rhai".into(),
            accel: "tcg".into(),
            timeout_factor: 5.0,
            started_at: 1.5,
            duration: Duration::from_millis(2500),
            passed: false,
            failure: Some(ScriptError {
                message: "boom".into(),
                location: None,
            }),
            cases: vec![TestCase {
                name: "one".into(),
                duration: Duration::from_millis(1250),
                passed: false,
                failure: Some("exit status 1".into()),
                output: vec![
                    Captured::Log {
                        at: 0.5,
                        message: "hi".into(),
                    },
                    Captured::Action {
                        at: 1.0,
                        node: Some("n".into()),
                        action: "crash".into(),
                        error: None,
                        duration: Duration::from_millis(3),
                    },
                ],
            }],
            output: Vec::new(),
        };
        let back: TestReport = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(back, report);
        let negative = report.to_json().replace("2.5", "-2.5");
        assert!(serde_json::from_str::<TestReport>(&negative).is_err());
    }
}
