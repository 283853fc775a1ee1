//! `testbed test` before any VM boots: a missing or broken script is a
//! usage error (exit 2) that names the script's line and column.

mod support;

use std::path::Path;
use std::process::Output;

use support::testbed_command;

fn testbed(args: &[&str], cwd: &Path) -> Output {
    testbed_command(args, cwd)
        .env("TESTBED_STATE_DIR", cwd.join("state"))
        .output()
        .expect("run testbed")
}

fn composition(dir: &Path, test: &str) {
    std::fs::write(
        dir.join("testbed.toml"),
        format!(
            "[cluster]\nname = \"t\"\ndistro = \"debian/bookworm\"\n\n[roles.n]\ncount = 2\n\n[roles.edge]\n\n{test}"
        ),
    )
    .unwrap();
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_missing_script_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    composition(dir.path(), "");
    let out = testbed(&["test"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no test script: set `[test] script` in"),
        "{}",
        stderr(&out)
    );
    let out = testbed(&["test", "--script", "nope.rhai"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot read the test script nope.rhai"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("state").exists());
}

#[test]
fn script_errors_stop_before_the_cluster_boots() {
    let dir = tempfile::tempdir().unwrap();
    composition(dir.path(), "[test]\nscript = \"t.rhai\"\n");
    std::fs::write(
        dir.path().join("t.rhai"),
        "n1.succeed(\"true\");\nlet x = (1 + ;\n",
    )
    .unwrap();
    let out = testbed(&["test"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error: t.rhai:2:"),
        "{}",
        stderr(&out)
    );
    // A misspelt node; a role of one node is a variable named after it.
    std::fs::write(
        dir.path().join("t.rhai"),
        "edge.succeed(\"true\");\nn3.crash();\n",
    )
    .unwrap();
    let out = testbed(&["test"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("t.rhai:2:1: syntax error: undefined variable: n3"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("state").exists());
}

#[test]
fn a_script_given_as_the_path_runs_against_the_composition_of_its_folder() {
    // `testbed test DIR/check.rhai`, as people call test runners: the
    // script is the one that runs (its error is reported, before any VM),
    // not read as a composition.
    let dir = tempfile::tempdir().unwrap();
    let comp = dir.path().join("c");
    std::fs::create_dir(&comp).unwrap();
    composition(&comp, "[test]\nscript = \"t.rhai\"\n");
    std::fs::write(comp.join("t.rhai"), "n1.succeed(\"true\");\n").unwrap();
    std::fs::write(
        comp.join("bad.rhai"),
        "n1.succeed(\"true\");\nn9.crash();\n",
    )
    .unwrap();
    let out = testbed(&["test", "c/bad.rhai"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("bad.rhai:2:1: syntax error: undefined variable: n9"),
        "{}",
        stderr(&out)
    );
    // In the composition's own folder too.
    let out = testbed(&["test", "bad.rhai"], &comp);
    assert!(
        stderr(&out).contains("bad.rhai:2:1: syntax error: undefined variable: n9"),
        "{}",
        stderr(&out)
    );
    let out = testbed(&["test", "c/bad.rhai", "--script", "c/t.rhai"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("two scripts"), "{}", stderr(&out));
    let out = testbed(&["test", "c/test_x.py"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("test_x.py is a Python file"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("state").exists() && !comp.join("state").exists());
}
