//! The run as Markdown: what `testbed ci` appends to GitHub's step
//! summary (`$GITHUB_STEP_SUMMARY`).

use std::fmt::Write as _;

use crate::summary::{Status, Summary};

/// A heading with the totals, then a table: one row per composition.
pub fn render(summary: &Summary) -> String {
    let mut out = String::new();
    let mark = if summary.passed() { "✅" } else { "❌" };
    let _ = writeln!(
        out,
        "## {mark} testbed ci: {}\n\n{} passed, {} failed, {} error, {} cached in {:.0}s\n",
        cell(&summary.dir.display().to_string()),
        summary.count(Status::Passed),
        summary.count(Status::Failed),
        summary.count(Status::Error),
        summary.count(Status::Cached),
        summary.duration
    );
    if summary.interrupted {
        out.push_str("**Interrupted**: what did not finish is marked as an error.\n\n");
    }
    out.push_str("| composition | status | subtests | duration | note |\n");
    out.push_str("|---|---|---|---|---|\n");
    for e in &summary.entries {
        let subtests = e
            .attempts
            .last()
            .and_then(|a| a.report.as_ref())
            .map(|r| {
                let failed = r.failures();
                format!("{} passed, {failed} failed", r.cases.len() - failed)
            })
            .unwrap_or_default();
        let note = e
            .reason
            .as_deref()
            .and_then(|r| r.lines().next())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {subtests} | {:.1}s | {} |",
            cell(&e.name),
            e.status.as_str(),
            e.duration,
            cell(note)
        );
    }
    out
}

/// Text safe in a table cell: no line break, no column separator, no
/// HTML.
fn cell(text: &str) -> String {
    text.replace('\n', " ")
        .replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::Entry;

    #[test]
    fn a_row_per_composition_and_cells_cannot_break_the_table() {
        let entry = |name: &str, status, reason: Option<&str>| Entry {
            name: name.into(),
            composition: format!("{name}/testbed.toml").into(),
            cluster: "c".into(),
            status,
            reason: reason.map(String::from),
            key: None,
            duration: 1.25,
            topology: None,
            nodes: Vec::new(),
            attempts: Vec::new(),
        };
        let summary = Summary {
            dir: "tests".into(),
            testbed_version: "0.1.0".into(),
            started_at: 0.0,
            duration: 12.0,
            repeat: 1,
            interrupted: false,
            entries: vec![
                entry("a", Status::Cached, Some("passed at 2026\nmore")),
                entry("b|<x>", Status::Error, Some("bad")),
            ],
        };
        let md = render(&summary);
        assert!(md.starts_with("## ❌ testbed ci: tests\n"), "{md}");
        assert!(
            md.contains("0 passed, 0 failed, 1 error, 1 cached in 12s"),
            "{md}"
        );
        assert!(
            md.contains("| a | cached |  | 1.2s | passed at 2026 |"),
            "{md}"
        );
        assert!(
            md.contains("| b\\|&lt;x&gt; | error |  | 1.2s | bad |"),
            "{md}"
        );
    }
}
