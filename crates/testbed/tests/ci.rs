//! `testbed ci` as a CI job runs it (docs/ci.md): a folder of two small
//! compositions on podman, one whose test passes and one whose test
//! fails. The first run tests both, writes JUnit, JSON and the HTML
//! report (checked in headless Chromium) and exits 1; the second, with
//! nothing changed, reruns only the failed one (twice: `--repeat 2`) and
//! says why the other is skipped; after a template of the passing one changed, the third reruns
//! it (two tests at once, `-j 2`), and appends GitHub's step summary.
//!
//! On podman (a container starts in seconds) and in the lane of the
//! other container tests (scripts/test.sh): the engine's names are
//! global.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::Env;
use testbed_test_support::{chromium, eventually, text, wait_within};

const COMPOSITION: &str = r#"
[cluster]
name = "NAME"
distro = "debian/bookworm"

[defaults]
memory = "256MiB"

[roles.node]
files."/etc/motd".template = "motd.j2"

[networks.lan]
subnet = "10.N.0.0/24"

[test]
script = "test.rhai"
"#;

const PASSES: &str = r#"
start_all();
subtest("the template is rendered", || { node.succeed("grep -q 'hello from node' /etc/motd"); });
subtest("systemd is up", || { node.wait_for_unit("multi-user.target"); });
"#;

const FAILS: &str = r#"
start_all();
subtest("this one passes", || { node.succeed("true"); });
subtest("this one fails", || { node.succeed("test -e /no/such/file"); });
"#;

fn write(dir: &Path, name: &str, n: u8, script: &str) {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("testbed.toml"),
        COMPOSITION
            .replace("NAME", &format!("ci{name}"))
            .replace("10.N.", &format!("10.{n}.")),
    )
    .unwrap();
    std::fs::write(folder.join("motd.j2"), "hello from {{ node.name }}\n").unwrap();
    std::fs::write(folder.join("test.rhai"), script).unwrap();
}

/// `testbed ci` with `extra` arguments; its exit code, its summary (the
/// `--json` on stdout) and its stderr.
fn ci(env: &Env, extra: &[&str]) -> (Option<i32>, Value, String) {
    let mut args = vec!["ci", ".", "--backend", "podman", "--json"];
    args.extend_from_slice(extra);
    let out = env.testbed(&args);
    let said = text(&out.stderr);
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{}\n{said}", text(&out.stdout)));
    (out.status.code(), summary, said)
}

fn entry<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["entries"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no entry {name}: {summary:#}"))
}

#[test]
fn ci_tests_each_composition_caches_the_passing_one_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = tmp.path().join("suite");
    write(&suite, "pass", 83, PASSES);
    write(&suite, "fail", 84, FAILS);
    let out = tmp.path().join("out");
    let results = tmp.path().join("results");
    let (out_s, results_s) = (out.display().to_string(), results.display().to_string());
    let env = Env::at(tmp, suite.clone());
    let dirs = ["--out", out_s.as_str(), "--results", results_s.as_str()];

    // 1: both run; the failure fails the run.
    let (code, summary, said) = ci(&env, &dirs);
    assert_eq!(code, Some(1), "{said}");
    let pass = entry(&summary, "pass");
    let fail = entry(&summary, "fail");
    assert_eq!(pass["status"], "passed", "{pass:#}");
    assert_eq!(fail["status"], "failed", "{fail:#}");
    let cases = &fail["attempts"][0]["report"]["cases"];
    assert_eq!(cases[1]["name"], "this one fails", "{cases:#}");
    assert_eq!(cases[1]["passed"], false, "{cases:#}");
    assert!(
        fail["attempts"][0]["artifacts"]
            .as_array()
            .is_some_and(|a| a
                .iter()
                .any(|f| f.as_str().is_some_and(|f| f.ends_with("console.log")))),
        "the failure's artifacts are in the report: {fail:#}"
    );
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(
        junit.contains(
            "<testsuites name=\"testbed ci\" tests=\"4\" failures=\"1\" errors=\"0\" skipped=\"0\""
        ),
        "{junit}"
    );
    assert!(
        junit.contains("<testcase name=\"this one fails\" classname=\"fail\""),
        "{junit}"
    );
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk, summary, "summary.json is what --json printed");
    chromium::check_report(
        &out.join("index.html"),
        &[("fail", "failed"), ("pass", "passed")],
    );

    // 2: nothing changed: only the failed one runs again, twice
    // (`--repeat`, for flaky tests).
    let mut args = dirs.to_vec();
    args.extend(["--repeat", "2"]);
    let (code, summary, said) = ci(&env, &args);
    assert_eq!(code, Some(1), "{said}");
    let pass = entry(&summary, "pass");
    assert_eq!(pass["status"], "cached", "{pass:#}");
    assert!(
        pass["attempts"].as_array().is_some_and(Vec::is_empty),
        "{pass:#}"
    );
    assert!(
        said.contains("pass: skipped: passed at ") && said.contains("with the same inputs"),
        "{said}"
    );
    let fail = entry(&summary, "fail");
    assert_eq!(fail["status"], "failed", "{fail:#}");
    let attempts = fail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{fail:#}");
    assert!(attempts.iter().all(|a| a["status"] == "failed"), "{fail:#}");
    assert_eq!(
        fail["reason"],
        Value::Null,
        "failing every time is not flaky: {fail:#}"
    );
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("skipped=\"1\""), "{junit}");
    assert!(
        junit.contains("<testsuite name=\"fail (attempt 2)\""),
        "{junit}"
    );
    chromium::check_report(
        &out.join("index.html"),
        &[("fail", "failed"), ("pass", "cached")],
    );

    // 3: a template of the passing one changed: it runs again (beside
    // the failing one, -j 2); GitHub's step summary is appended to.
    std::fs::write(
        suite.join("pass/motd.j2"),
        "hello from {{ node.name }}, again\n",
    )
    .unwrap();
    let step_summary = env.comp.parent().unwrap().join("step-summary.md");
    std::fs::write(&step_summary, "# earlier steps\n").unwrap();
    let env = env.with_var("GITHUB_STEP_SUMMARY", &step_summary.display().to_string());
    let mut args = dirs.to_vec();
    args.extend(["-j", "2"]);
    let (code, summary, said) = ci(&env, &args);
    assert_eq!(code, Some(1), "{said}");
    let pass = entry(&summary, "pass");
    assert_eq!(pass["status"], "passed", "{pass:#}");
    assert_eq!(
        pass["attempts"].as_array().map(Vec::len),
        Some(1),
        "{pass:#}"
    );
    assert_ne!(
        pass["key"],
        Value::Null,
        "a passing test has a result key: {pass:#}"
    );
    let md = std::fs::read_to_string(&step_summary).unwrap();
    assert!(
        md.starts_with("# earlier steps\n## ❌ testbed ci: ."),
        "{md}"
    );
    assert!(
        md.contains("| pass | passed | 2 passed, 0 failed |"),
        "{md}"
    );
    assert!(
        md.contains("| fail | failed | 1 passed, 1 failed |"),
        "{md}"
    );
    assert!(!env.running(), "no cluster left running");

    // 4: Ctrl-C while a test runs: its cluster is taken down, the
    // reports are still written, the exit status is 130.
    interrupted(&env, &dirs);
}

/// `testbed ci` interrupted (SIGINT to it alone, as a cancelled CI job's
/// SIGTERM would be) once its test's cluster is coming up.
fn interrupted(env: &Env, dirs: &[&str]) {
    let mut args = vec!["ci", ".", "--backend", "podman", "--rerun"];
    args.extend_from_slice(dirs);
    let child = support::testbed_command(&args, &env.comp)
        .env("TESTBED_STORE", support::store())
        .env("TESTBED_STATE_DIR", &env.state)
        .env("XDG_CONFIG_HOME", env.comp.join(".config"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The supervisor's API socket: a cluster is coming up.
    let up = eventually(Duration::from_secs(300), || {
        std::fs::read_dir(&env.state)
            .is_ok_and(|d| d.flatten().any(|d| d.path().join("api.sock").exists()))
    });
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = wait_within(child, Duration::from_secs(300))
        .unwrap_or_else(|out| panic!("ci did not stop:\n{}", text(&out.stderr)));
    let said = text(&out.stderr);
    assert!(up, "no cluster came up within 300 s:\n{said}");
    assert_eq!(out.status.code(), Some(130), "{said}");
    assert!(
        said.contains(
            "interrupted: the tests under way were stopped and their clusters taken down"
        ),
        "{said}"
    );
    let written = env.comp.parent().unwrap().join("out/summary.json");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(written).unwrap()).unwrap();
    assert_eq!(summary["interrupted"], true, "{summary:#}");
    let entries = summary["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["status"] == "error"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("interrupted"))),
        "{summary:#}"
    );
    assert!(
        !env.running(),
        "the interrupted test's cluster was taken down"
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

/// What `testbed ci` says without running a cluster: a folder with no
/// test is a usage error; a composition that does not load is an error
/// entry pointing at its line (the run goes on and writes its reports);
/// one without `[test]` is not a test; a `--out` that holds something
/// else is refused and left as it was.
#[test]
fn ci_reports_broken_compositions_and_refuses_what_it_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = tmp.path().join("suite");
    std::fs::create_dir_all(suite.join("notest")).unwrap();
    std::fs::write(
        suite.join("notest/testbed.toml"),
        "[cluster]\nname = \"quiet\"\n[roles.node]\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let out_s = out.display().to_string();
    let results = tmp.path().join("results").display().to_string();
    let env = Env::at(tmp, suite.clone());
    let args = ["ci", ".", "--out", &out_s, "--results", &results];

    let run = env.testbed(&args);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).contains("no composition with a [test] under ."),
        "{}",
        text(&run.stderr)
    );
    assert!(
        !out.exists(),
        "nothing written when there is nothing to test"
    );

    std::fs::create_dir_all(suite.join("broken")).unwrap();
    std::fs::write(
        suite.join("broken/testbed.toml"),
        "[cluster]\nname = \"broken\"\n[roles.node]\ncount = \"two\"\n[test]\nscript = \"t.rhai\"\n",
    )
    .unwrap();
    let run = env.testbed(&args);
    let said = text(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{said}");
    assert!(
        said.contains("1 test to consider (2 compositions found)"),
        "{said}"
    );
    assert!(
        said.contains("broken: ERROR: invalid composition") && said.contains("testbed.toml:4:"),
        "{said}"
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["entries"].as_array().map(Vec::len),
        Some(1),
        "{summary:#}"
    );
    assert_eq!(entry(&summary, "broken")["status"], "error");
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("errors=\"1\""), "{junit}");
    assert!(out.join("broken/index.html").is_file());

    let foreign = env.comp.parent().unwrap().join("precious");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let foreign_s = foreign.display().to_string();
    let run = env.testbed(&["ci", ".", "--out", &foreign_s, "--results", &results]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("holds no earlier `testbed ci` output"));
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes.txt")).unwrap(),
        "mine"
    );
}
