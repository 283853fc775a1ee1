//! The Python package (`python/`, docs/python.md) as a user installs it:
//! `python/run-tests.sh` makes a fresh virtual environment, `pip install
//! ./python`, and runs the package's own tests against a fake supervisor
//! (no VM). The package against real clusters runs where a cluster is up
//! already: the etcd example's Python test in `example_etcd.rs`, the
//! Slurm example's testinfra check and a failing pytest test in
//! `driver.rs`.

// run-tests.sh's output is echoed on stderr: what a failed test's log needs.
#![allow(clippy::print_stderr)]

mod support;

use std::process::Command;
use std::time::Duration;

use support::python::PYTHON;
use testbed_test_support::{output_within, repo_root, text};

#[test]
fn the_package_installs_in_a_fresh_venv_and_passes_its_tests_against_a_fake_supervisor() {
    let script = repo_root().join("python/run-tests.sh");
    let out = output_within(
        Command::new(&script)
            .arg("-q")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHON", PYTHON),
        Duration::from_secs(10 * 60),
    )
    .unwrap_or_else(|out| panic!("run-tests.sh hung:\n{}", text(&out.stdout)));
    let stdout = text(&out.stdout);
    eprintln!("{stdout}{}", text(&out.stderr));
    assert!(out.status.success(), "run-tests.sh failed");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.contains(" passed") && !summary.contains("skipped") && !summary.contains("failed"),
        "{summary}"
    );
}
