//! The static HTML report of a `testbed ci` run: `OUT/index.html` (every
//! composition with its status) and `OUT/<slug>/index.html` per
//! composition (its topology, its attempts, their subtests, output and
//! artifacts).
//!
//! The pages are self-contained and static: inline CSS, no script, no
//! font or anything else fetched, relative links only, so the folder can
//! be opened from disk (`file://`), archived by CI or published as it is.
//! Every string that comes from the data is escaped; every path in a link
//! is percent-encoded.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use testbed_driver::report::render_output;
use testbed_driver::TestReport;
use testbed_model::xml::escape;

use crate::summary::{slug, Attempt, Entry, Status, Summary};

/// Writes `OUT/index.html` and `OUT/<slug>/index.html` for each entry
/// (creating the folders), and returns the files written. An entry's
/// topology picture is read from `OUT/<entry.topology>` and inlined.
pub fn write(out: &Path, summary: &Summary) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let mut written = Vec::with_capacity(summary.entries.len() + 1);
    let index = out.join("index.html");
    std::fs::write(&index, index_page(summary))?;
    written.push(index);
    for entry in &summary.entries {
        let dir = out.join(slug(&entry.name));
        std::fs::create_dir_all(&dir)?;
        let page = dir.join("index.html");
        std::fs::write(&page, entry_page(out, summary, entry))?;
        written.push(page);
    }
    Ok(written)
}

const STYLE: &str = "
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 1.5rem 2rem; color: #1f2937; background: #ffffff; line-height: 1.4; }
h1 { font-size: 1.5rem; margin: 0 0 0.75rem 0; }
h2 { font-size: 1.2rem; margin: 1.5rem 0 0.5rem 0; }
h3 { font-size: 1.05rem; margin: 1.25rem 0 0.5rem 0; }
a { color: #1d4ed8; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #d1d5db; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.facts th { width: 9rem; }
.status { display: inline-block; padding: 0.05rem 0.5rem; border-radius: 0.6rem; font-weight: bold; font-size: 0.9em; }
.status.passed { background: #15803d; color: #ffffff; }
.status.failed { background: #b91c1c; color: #ffffff; }
.status.error { background: #c2410c; color: #ffffff; }
.status.cached { background: #475569; color: #ffffff; }
.case-failed td.result { color: #b91c1c; font-weight: bold; }
pre { background: #f8fafc; border: 1px solid #e2e8f0; padding: 0.5rem; overflow-x: auto; white-space: pre-wrap; word-break: break-word; margin: 0.25rem 0; font-size: 0.85em; }
details { margin: 0.25rem 0; }
summary { cursor: pointer; }
figure#topology { margin: 0.5rem 0; padding: 0.5rem; border: 1px solid #e2e8f0; display: inline-block; max-width: 100%; overflow-x: auto; }
figure#topology svg { display: block; }
.missing { color: #6b7280; font-style: italic; }
.interrupted { background: #fef3c7; border: 1px solid #f59e0b; padding: 0.5rem; }
.totals span { margin-right: 1.25rem; }
section.attempt { border-top: 2px solid #e5e7eb; margin-top: 1.25rem; }
code { font-size: 0.9em; }
";

/// The start of a page, up to the opening of its body.
fn head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(title)
    )
}

const FOOT: &str = "</body>\n</html>\n";

/// A status badge: `<span class="status passed">passed</span>`.
fn badge(status: Status) -> String {
    let s = status.as_str();
    format!("<span class=\"status {s}\">{s}</span>")
}

/// The index: totals, then one row per entry.
fn index_page(summary: &Summary) -> String {
    let dir = summary.dir.display().to_string();
    let mut h = head(&format!("testbed ci: {dir}"));
    let _ = writeln!(h, "<h1>testbed ci: {}</h1>", escape(&dir));
    let _ = writeln!(
        h,
        "<p class=\"totals\" id=\"totals\"><span>{} tests</span><span class=\"passed\">{} passed</span><span class=\"failed\">{} failed</span><span class=\"error\">{} error</span><span class=\"cached\">{} cached</span></p>",
        summary.entries.len(),
        summary.count(Status::Passed),
        summary.count(Status::Failed),
        summary.count(Status::Error),
        summary.count(Status::Cached),
    );
    let _ = writeln!(
        h,
        "<table class=\"facts\">\n<tr><th>result</th><td>{}</td></tr>\n<tr><th>started</th><td><time>{}</time></td></tr>\n<tr><th>duration</th><td>{}</td></tr>\n<tr><th>attempts per test</th><td>{}</td></tr>\n<tr><th>testbed version</th><td>{}</td></tr>\n</table>",
        if summary.passed() {
            badge(Status::Passed)
        } else {
            badge(Status::Failed)
        },
        iso8601_utc(summary.started_at),
        duration(summary.duration),
        summary.repeat,
        escape(&summary.testbed_version),
    );
    if summary.interrupted {
        h.push_str("<p class=\"interrupted\" id=\"interrupted\">This run was interrupted: the tests under way were stopped and their clusters taken down; what did not finish is marked as an error.</p>\n");
    }
    h.push_str("<h2>Tests</h2>\n");
    if summary.entries.is_empty() {
        h.push_str("<p class=\"missing\">No composition with a [test] was found.</p>\n");
    } else {
        h.push_str("<table id=\"entries\">\n<thead><tr><th>name</th><th>status</th><th>subtests</th><th>duration</th><th>reason</th></tr></thead>\n<tbody>\n");
        for entry in &summary.entries {
            let slug = slug(&entry.name);
            let _ = writeln!(
                h,
                "<tr id=\"entry-{}\" data-status=\"{}\"><td><a href=\"{}/index.html\">{}</a></td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                escape(&slug),
                entry.status.as_str(),
                escape(&href(Path::new(&slug))),
                escape(&entry.name),
                badge(entry.status),
                subtests(entry.attempts.last()),
                duration(entry.duration),
                entry.reason.as_deref().map(escape).unwrap_or_default(),
            );
        }
        h.push_str("</tbody>\n</table>\n");
    }
    h.push_str(FOOT);
    h
}

/// "2 passed, 1 failed" for an attempt's report; "–" without one.
fn subtests(attempt: Option<&Attempt>) -> String {
    match attempt.and_then(|a| a.report.as_ref()) {
        Some(report) => {
            let failed = report.failures();
            format!("{} passed, {failed} failed", report.cases.len() - failed)
        }
        None => "–".to_owned(),
    }
}

/// One entry's page.
fn entry_page(out: &Path, summary: &Summary, entry: &Entry) -> String {
    let mut h = head(&format!("{}: testbed ci", entry.name));
    let _ = writeln!(
        h,
        "<p><a href=\"../index.html\" id=\"back\">← all tests of {}</a></p>",
        escape(&summary.dir.display().to_string())
    );
    let _ = writeln!(
        h,
        "<h1>{} {}</h1>",
        escape(&entry.name),
        badge(entry.status)
    );
    h.push_str("<table class=\"facts\" id=\"facts\">\n");
    let mut fact = |name: &str, value: String| {
        let _ = writeln!(h, "<tr><th>{name}</th><td>{value}</td></tr>");
    };
    fact(
        "composition",
        format!(
            "<code>{}</code>",
            escape(&entry.composition.display().to_string())
        ),
    );
    fact("cluster", escape(&entry.cluster));
    fact(
        "result key",
        match &entry.key {
            Some(key) => format!("<code>{}</code>", escape(key)),
            None => "<span class=\"missing\">none (the composition could not be loaded)</span>"
                .to_owned(),
        },
    );
    fact("status", badge(entry.status));
    if let Some(reason) = &entry.reason {
        fact("reason", format!("<pre>{}</pre>", escape(reason)));
    }
    fact("duration", duration(entry.duration));
    h.push_str("</table>\n");

    h.push_str("<h2>Topology</h2>\n");
    h.push_str(&topology(out, entry));

    h.push_str("<h2>Nodes</h2>\n");
    if entry.nodes.is_empty() {
        h.push_str("<p class=\"missing\">No node list (no plan).</p>\n");
    } else {
        h.push_str("<ul id=\"nodes\">\n");
        for node in &entry.nodes {
            let _ = writeln!(h, "<li>{}</li>", escape(node));
        }
        h.push_str("</ul>\n");
    }

    h.push_str("<h2>Attempts</h2>\n");
    if entry.attempts.is_empty() {
        let why = match entry.status {
            Status::Cached => "Not run: the same inputs passed before.",
            Status::Error => "Not run: the test could not start.",
            _ => "No attempt was recorded.",
        };
        let _ = writeln!(h, "<p class=\"missing\" id=\"no-attempts\">{why}</p>");
    }
    for attempt in &entry.attempts {
        h.push_str(&attempt_section(&slug(&entry.name), attempt));
    }
    h.push_str(FOOT);
    h
}

/// The entry's topology picture, inlined in `<figure id="topology">`, or
/// a sentence saying why there is none.
fn topology(out: &Path, entry: &Entry) -> String {
    let missing = |why: String| format!("<p class=\"missing\" id=\"no-topology\">{why}</p>\n");
    let Some(rel) = &entry.topology else {
        return missing("No topology picture (no plan).".to_owned());
    };
    let name = escape(&rel.display().to_string());
    let svg = match std::fs::read_to_string(out.join(rel)) {
        Ok(text) => text,
        Err(e) => {
            let e = escape(&e.to_string());
            return missing(format!("The topology picture {name} is missing: {e}."));
        }
    };
    match inline_svg(&svg) {
        Some(svg) => format!(
            "<figure id=\"topology\">\n{svg}\n<figcaption><a href=\"{}\">topology.svg</a></figcaption>\n</figure>\n",
            escape(&href(&Path::new("..").join(rel)))
        ),
        None => missing(format!(
            "The topology picture {name} is not an SVG picture this page can show."
        )),
    }
}

/// The `<svg>…</svg>` element of an SVG file, to embed in HTML: without
/// an XML declaration or doctype before it, and without the SVG namespace
/// declaration (HTML puts `<svg>` in that namespace itself; the page then
/// names no URL at all). `None` when there is no such element, or when it
/// holds what a static page must not run or fetch (scripts, event
/// handlers, foreign content, external references).
fn inline_svg(text: &str) -> Option<String> {
    let start = text.find("<svg")?;
    let end = text.rfind("</svg>")? + "</svg>".len();
    if end <= start {
        return None;
    }
    let svg = &text[start..end];
    let lower = svg.to_ascii_lowercase();
    let forbidden = [
        "<script",
        "<foreignobject",
        "<iframe",
        "<image",
        "<use",
        "href",
        "javascript:",
        "url(",
        "@import",
    ];
    if forbidden.iter().any(|f| lower.contains(f)) || has_event_handler(&lower) {
        return None;
    }
    Some(svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1))
}

/// Whether lower-case markup has an attribute like `onclick=`: `on`
/// after white space, letters, then `=` (white space allowed before it).
fn has_event_handler(lower: &str) -> bool {
    let bytes = lower.as_bytes();
    lower.match_indices("on").any(|(i, _)| {
        let after_space = i > 0 && bytes[i - 1].is_ascii_whitespace();
        let rest = &lower[i + 2..];
        let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
        after_space && letters > 0 && rest[letters..].trim_start().starts_with('=')
    })
}

/// One attempt: its facts, links, subtests, output and artifacts.
/// Artifacts are named by their path in the attempt's folder
/// (`<slug>/<n>/`).
fn attempt_section(slug: &str, attempt: &Attempt) -> String {
    let n = attempt.number;
    let mut h = format!("<section class=\"attempt\" id=\"attempt-{n}\">\n");
    let _ = writeln!(h, "<h3>Attempt {n} {}</h3>", badge(attempt.status));
    h.push_str("<table class=\"facts\">\n");
    let _ = writeln!(
        h,
        "<tr><th>duration</th><td>{}</td></tr>",
        duration(attempt.duration)
    );
    let _ = writeln!(
        h,
        "<tr><th>exit code</th><td>{}</td></tr>",
        match attempt.exit_code {
            Some(code) => code.to_string(),
            None => "none (killed by a signal)".to_owned(),
        }
    );
    let _ = writeln!(
        h,
        "<tr><th>log</th><td>{}</td></tr>",
        link(&attempt.log, "log.txt")
    );
    let _ = writeln!(
        h,
        "<tr><th>JUnit</th><td>{}</td></tr>",
        match &attempt.junit {
            Some(junit) => link(junit, "junit.xml"),
            None => "<span class=\"missing\">none (the script did not run)</span>".to_owned(),
        }
    );
    if let Some(reason) = &attempt.reason {
        let _ = writeln!(
            h,
            "<tr><th>reason</th><td><pre>{}</pre></td></tr>",
            escape(reason)
        );
    }
    h.push_str("</table>\n");
    match &attempt.report {
        Some(report) => h.push_str(&report_html(report)),
        None => h.push_str("<p class=\"missing\">No report: the script did not run.</p>\n"),
    }
    if !attempt.artifacts.is_empty() {
        h.push_str("<h4>Artifacts</h4>\n<ul class=\"artifacts\">\n");
        let folder = Path::new(slug).join(n.to_string());
        for artifact in &attempt.artifacts {
            let name = artifact.strip_prefix(&folder).unwrap_or(artifact);
            let _ = writeln!(
                h,
                "<li>{}</li>",
                link(artifact, &name.display().to_string())
            );
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</section>\n");
    h
}

/// A driver report: the script's error, a table of subtests, and each
/// case's captured output (open for the failed ones).
fn report_html(report: &TestReport) -> String {
    let mut h = String::new();
    if let Some(failure) = &report.failure {
        let _ = writeln!(
            h,
            "<p>The script failed:</p>\n<pre class=\"failure\">{}</pre>",
            escape(&failure.to_string())
        );
    }
    if report.cases.is_empty() {
        h.push_str("<p class=\"missing\">No subtest.</p>\n");
    } else {
        h.push_str("<table class=\"subtests\">\n<thead><tr><th>subtest</th><th>result</th><th>duration</th></tr></thead>\n<tbody>\n");
        for case in &report.cases {
            let (class, word) = if case.passed {
                ("case-passed", "passed")
            } else {
                ("case-failed", "FAILED")
            };
            let _ = write!(h, "<tr class=\"{class}\"><td>{}", escape(&case.name));
            if let Some(failure) = &case.failure {
                let _ = write!(h, "<pre class=\"failure\">{}</pre>", escape(failure));
            }
            let _ = writeln!(
                h,
                "</td><td class=\"result\">{word}</td><td class=\"num\">{}</td></tr>",
                duration(case.duration.as_secs_f64())
            );
        }
        h.push_str("</tbody>\n</table>\n");
    }
    for case in &report.cases {
        if case.output.is_empty() {
            continue;
        }
        let _ = writeln!(
            h,
            "<details class=\"output\"{}><summary>output of {} ({})</summary><pre>{}</pre></details>",
            if case.passed { "" } else { " open" },
            escape(&case.name),
            entries(case.output.len()),
            escape(&render_output(&case.output))
        );
    }
    if !report.output.is_empty() {
        let _ = writeln!(
            h,
            "<details class=\"output\"><summary>output outside subtests ({})</summary><pre>{}</pre></details>",
            entries(report.output.len()),
            escape(&render_output(&report.output))
        );
    }
    h
}

/// `1 entry`, `2 entries`.
fn entries(n: usize) -> String {
    if n == 1 {
        "1 entry".to_owned()
    } else {
        format!("{n} entries")
    }
}

/// A link from an entry's page to a file given relative to the output
/// folder.
fn link(path: &Path, text: &str) -> String {
    let target = if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new("..").join(path)
    };
    format!(
        "<a href=\"{}\">{}</a>",
        escape(&href(&target)),
        escape(text)
    )
}

/// A relative path as a URL path: each byte outside the unreserved set
/// (and `/`) percent-encoded, so names with spaces, `#`, `?` or `%` link
/// to the file they name.
fn href(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Seconds, for people: `0.42 s`, `12.3 s`, `2 min 05 s`, `1 h 02 min`.
fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "–".to_owned();
    }
    if secs < 1.0 {
        format!("{secs:.2} s")
    } else if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        let s = secs.round() as u64;
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = (secs / 60.0).round() as u64;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// Seconds since the Unix epoch as ISO 8601 in UTC, to the second:
/// `2024-05-01T12:34:56Z`.
fn iso8601_utc(epoch: f64) -> String {
    let (y, m, d, h, min, s) = crate::summary::civil(epoch);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use testbed_driver::report::{Captured, TestCase};

    use super::*;

    fn report(cases: Vec<TestCase>) -> TestReport {
        TestReport {
            name: "c".into(),
            script: "test.rhai".into(),
            accel: "kvm".into(),
            timeout_factor: 1.0,
            started_at: 0.0,
            duration: Duration::from_secs(3),
            passed: cases.iter().all(|c| c.passed),
            failure: None,
            cases,
            output: vec![],
        }
    }

    fn entry(name: &str, status: Status) -> Entry {
        Entry {
            name: name.into(),
            composition: PathBuf::from(name).join("testbed.toml"),
            cluster: "c".into(),
            status,
            reason: None,
            key: Some("abc123".into()),
            duration: 1.5,
            topology: None,
            nodes: vec!["server (server)".into()],
            attempts: vec![],
        }
    }

    fn summary(entries: Vec<Entry>) -> Summary {
        Summary {
            dir: "examples".into(),
            testbed_version: "0.1.0".into(),
            started_at: 1_714_566_896.7,
            duration: 75.0,
            repeat: 1,
            interrupted: false,
            entries,
        }
    }

    /// Every `href="…"` of a page.
    fn hrefs(html: &str) -> Vec<&str> {
        html.split("href=\"")
            .skip(1)
            .map(|rest| &rest[..rest.find('"').expect("closing quote")])
            .collect()
    }

    #[test]
    fn hostile_names_and_texts_are_escaped() {
        let hostile = "<script>alert(1)</script>";
        let mut e = entry(hostile, Status::Failed);
        e.cluster = "\"><img src=x onerror=alert(1)>".into();
        e.reason = Some("a & b <b>".into());
        e.nodes = vec![format!("{hostile} (r)")];
        e.attempts = vec![Attempt {
            number: 1,
            status: Status::Failed,
            duration: 2.0,
            exit_code: Some(1),
            log: PathBuf::from(slug(hostile)).join("1/log.txt"),
            report: Some(report(vec![TestCase {
                name: hostile.into(),
                duration: Duration::from_millis(10),
                passed: false,
                failure: Some(format!("boom {hostile}")),
                output: vec![Captured::Log {
                    at: 0.5,
                    message: hostile.into(),
                }],
            }])),
            junit: None,
            artifacts: vec![],
            reason: None,
        }];
        let s = summary(vec![e.clone()]);
        let index = index_page(&s);
        let page = entry_page(Path::new("/nonexistent"), &s, &e);
        for html in [&index, &page] {
            assert!(!html.contains("<script"), "{html}");
            assert!(!html.contains("<img"), "{html}");
            assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        }
        assert!(page.contains("a &amp; b &lt;b&gt;"));
        assert!(index.contains("href=\"%3Cscript%3Ealert%281%29%3C--script%3E/index.html\""));
        assert!(page.contains("<pre class=\"failure\">boom &lt;script&gt;"));
    }

    #[test]
    fn links_are_relative_and_point_into_the_output_folder() {
        let mut e = entry("net/etcd cluster", Status::Failed);
        let dir = PathBuf::from(slug(&e.name)).join("1");
        e.attempts = vec![Attempt {
            number: 1,
            status: Status::Failed,
            duration: 2.0,
            exit_code: None,
            log: dir.join("log.txt"),
            report: Some(report(vec![])),
            junit: Some(dir.join("junit.xml")),
            artifacts: vec![dir.join("artifacts/node 1#console.log")],
            reason: Some("exit 1".into()),
        }];
        e.topology = Some(PathBuf::from(slug(&e.name)).join("topology.svg"));
        let s = summary(vec![e.clone()]);
        let index = index_page(&s);
        assert_eq!(hrefs(&index), ["net--etcd%20cluster/index.html"]);
        let out = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(out.path().join(slug(&e.name))).expect("mkdir");
        std::fs::write(
            out.path().join(e.topology.as_ref().expect("topology")),
            "<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"><rect width=\"10\" height=\"10\" fill=\"#dbeafe\"/></svg>\n",
        )
        .expect("write svg");
        let page = entry_page(out.path(), &s, &e);
        assert_eq!(
            hrefs(&page),
            [
                "../index.html",
                "../net--etcd%20cluster/topology.svg",
                "../net--etcd%20cluster/1/log.txt",
                "../net--etcd%20cluster/1/junit.xml",
                "../net--etcd%20cluster/1/artifacts/node%201%23console.log",
            ]
        );
        for html in [&index, &page] {
            assert!(!html.contains("://"), "no URL: {html}");
            assert!(!html.contains("<script"), "no script: {html}");
        }
        assert!(page.contains("<figure id=\"topology\">\n<svg width=\"10\""));
        assert!(page.contains("none (killed by a signal)"));
        assert!(page.contains(">artifacts/node 1#console.log</a>"));
    }

    #[test]
    fn cached_and_error_entries_without_attempts_get_a_page() {
        let mut cached = entry("cached", Status::Cached);
        cached.reason = Some("passed at 2024-05-01T12:00:00Z with the same inputs".into());
        cached.topology = Some("cached/topology.svg".into());
        let mut error = entry("broken", Status::Error);
        error.reason = Some("invalid composition".into());
        error.key = None;
        error.nodes = vec![];
        let out = tempfile::tempdir().expect("tempdir");
        let s = summary(vec![cached, error]);
        let written = write(out.path(), &s).expect("write");
        assert_eq!(
            written,
            [
                out.path().join("index.html"),
                out.path().join("cached/index.html"),
                out.path().join("broken/index.html"),
            ]
        );
        let index = std::fs::read_to_string(&written[0]).expect("index");
        assert!(index.contains(
            "<tr id=\"entry-cached\" data-status=\"cached\"><td><a href=\"cached/index.html\">cached</a></td><td><span class=\"status cached\">cached</span></td><td>–</td>"
        ));
        assert!(index.contains("data-status=\"error\""));
        assert!(index.contains("invalid composition"));
        assert!(index.contains("<time>2024-05-01T12:34:56Z</time>"));
        assert!(index.contains("1 min 15 s"));
        assert!(!index.contains("id=\"interrupted\""));
        let mut stopped = s.clone();
        stopped.interrupted = true;
        let again = tempfile::tempdir().expect("tempdir");
        write(again.path(), &stopped).expect("write");
        let index = std::fs::read_to_string(again.path().join("index.html")).expect("index");
        assert!(
            index.contains("<p class=\"interrupted\" id=\"interrupted\">This run was interrupted")
        );
        let page = std::fs::read_to_string(&written[1]).expect("cached page");
        assert!(page.contains("Not run: the same inputs passed before."));
        assert!(page.contains("The topology picture cached/topology.svg is missing"));
        assert!(page.contains("passed at 2024-05-01T12:00:00Z with the same inputs"));
        let page = std::fs::read_to_string(&written[2]).expect("error page");
        assert!(page.contains("Not run: the test could not start."));
        assert!(page.contains("No topology picture (no plan)."));
        assert!(page.contains("none (the composition could not be loaded)"));
    }

    #[test]
    fn svg_that_could_run_or_fetch_something_is_not_inlined() {
        assert_eq!(
            inline_svg(
                "<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"><g/></svg>\n"
            )
            .as_deref(),
            Some("<svg><g/></svg>")
        );
        for bad in [
            "<svg><script>alert(1)</script></svg>",
            "<svg><rect onclick=\"x()\"/></svg>",
            "<svg><rect\nONLOAD = \"x()\"/></svg>",
            "<svg><image href=\"http://example.invalid/x.png\"/></svg>",
            "<svg><rect style=\"fill:url(http://x)\"/></svg>",
            "not a picture",
        ] {
            assert_eq!(inline_svg(bad), None, "{bad}");
        }
        // Text that reads like a handler is refused too: a false alarm
        // only costs the inlining.
        assert!(inline_svg("<svg><text>role one onoff=1</text></svg>").is_none());
        for good in [
            "<svg><text>role one</text></svg>",
            "<svg><text>online</text></svg>",
        ] {
            assert!(inline_svg(good).is_some(), "{good}");
        }
    }

    #[test]
    fn times_and_durations_read_well() {
        assert_eq!(iso8601_utc(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601_utc(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601_utc(1_714_566_896.7), "2024-05-01T12:34:56Z");
        assert_eq!(iso8601_utc(-1.0), "1969-12-31T23:59:59Z");
        assert_eq!(iso8601_utc(f64::NAN), "1970-01-01T00:00:00Z");
        assert_eq!(duration(0.123), "0.12 s");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(125.0), "2 min 05 s");
        assert_eq!(duration(3725.0), "1 h 02 min");
        assert_eq!(duration(f64::NAN), "–");
    }
}
