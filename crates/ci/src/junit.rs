//! The run's one JUnit file: a `testsuite` per composition (per attempt
//! with `--repeat`), a `testcase` per subtest; a cached test is one
//! skipped case saying why, a test that could not run one case in error.

use std::fmt::Write as _;

use testbed_driver::report::escape;

use crate::summary::{Attempt, Entry, Status, Summary};

pub fn render(summary: &Summary) -> String {
    let mut suites = String::new();
    let (mut tests, mut failures, mut errors, mut skipped) = (0, 0, 0, 0);
    for entry in &summary.entries {
        if entry.attempts.is_empty() {
            let (kind, message) = match entry.status {
                Status::Cached => ("skipped", entry.reason.clone().unwrap_or_default()),
                _ => ("error", entry.reason.clone().unwrap_or_default()),
            };
            if kind == "skipped" {
                skipped += 1;
            } else {
                errors += 1;
            }
            tests += 1;
            let first = message.lines().next().unwrap_or_default();
            let _ = write!(
                suites,
                "  <testsuite name=\"{name}\" tests=\"1\" failures=\"0\" errors=\"{e}\" skipped=\"{s}\" time=\"0.000\">\n{props}    <testcase name=\"{name}\" classname=\"{name}\" time=\"0.000\">\n      <{kind} message=\"{m}\">{body}</{kind}>\n    </testcase>\n  </testsuite>\n",
                name = escape(&entry.name),
                e = u8::from(kind == "error"),
                s = u8::from(kind == "skipped"),
                props = properties(entry),
                m = escape(first),
                body = escape(&message),
            );
            continue;
        }
        for attempt in &entry.attempts {
            let (t, f, e) = suite(&mut suites, summary, entry, attempt);
            tests += t;
            failures += f;
            errors += e;
        }
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"testbed ci\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{:.3}\">\n{suites}</testsuites>\n",
        summary.duration
    )
}

fn properties(entry: &Entry) -> String {
    let mut out = String::from("    <properties>\n");
    for (name, value) in [
        ("composition", entry.composition.display().to_string()),
        ("cluster", entry.cluster.clone()),
        ("result_key", entry.key.clone().unwrap_or_default()),
    ] {
        let _ = writeln!(
            out,
            "      <property name=\"{name}\" value=\"{}\"/>",
            escape(&value)
        );
    }
    out.push_str("    </properties>\n");
    out
}

/// One attempt's suite; returns its tests, failures and errors.
fn suite(out: &mut String, summary: &Summary, entry: &Entry, a: &Attempt) -> (usize, usize, usize) {
    let name = if summary.repeat > 1 {
        format!("{} (attempt {})", entry.name, a.number)
    } else {
        entry.name.clone()
    };
    let mut cases = String::new();
    let (mut tests, mut failures, mut errors) = (0, 0, 0);
    match &a.report {
        Some(report) => {
            tests += report.cases.len();
            failures += report.failures();
            cases.push_str(&report.junit_cases(&name));
        }
        None => {
            tests += 1;
            errors += 1;
            let why = a.reason.clone().unwrap_or_default();
            let _ = write!(
                cases,
                "    <testcase name=\"{n}\" classname=\"{n}\" time=\"{:.3}\">\n      <error message=\"{}\">{}</error>\n    </testcase>\n",
                a.duration,
                escape(why.lines().next().unwrap_or_default()),
                escape(&why),
                n = escape(&name),
            );
        }
    }
    let _ = write!(
        out,
        "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"0\" time=\"{:.3}\">\n{}{cases}  </testsuite>\n",
        escape(&name),
        a.duration,
        properties(entry),
    );
    (tests, failures, errors)
}
