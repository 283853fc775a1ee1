//! Python in the tests (`python/`, docs/python.md): a fresh virtual
//! environment with the package installed as a user installs it, and
//! pytest run in it against a cluster of an [`Env`]. The environments see
//! Debian's python3-pytest, python3-testinfra, python3-setuptools and
//! python3-wheel (`scripts/host-packages.txt`), so the install needs no
//! network.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use testbed_test_support::{agent_binary, repo_root, run_ok};

use super::{attr, start_tag, start_tags, Env};

/// Debian's Python, whose packages the environments see.
pub const PYTHON: &str = "/usr/bin/python3";

/// A fresh virtual environment with the package installed from a copy of
/// `python/` (pip builds in the folder it is given; a copy leaves the
/// checkout clean and never installs a stale build/ folder).
pub struct Venv {
    _dir: tempfile::TempDir,
    python: PathBuf,
}

impl Venv {
    pub fn new() -> Venv {
        let dir = tempfile::tempdir().expect("tmp");
        let venv = dir.path().join("venv");
        run_ok(
            Command::new(PYTHON)
                .args(["-m", "venv", "--system-site-packages"])
                .arg(&venv),
        );
        let src = dir.path().join("src");
        copy_package(&repo_root().join("python"), &src);
        run_ok(
            Command::new(venv.join("bin/pip"))
                .args([
                    "install",
                    "--quiet",
                    "--no-index",
                    "--no-build-isolation",
                    "--disable-pip-version-check",
                ])
                .arg(&src),
        );
        Venv {
            python: venv.join("bin/python"),
            _dir: dir,
        }
    }

    /// `python -m pytest ARGS` in `cwd`, with the testbed under test as
    /// `$TESTBED` and the environment's store and state directory, for at
    /// most `limit`; echoed with its output on stderr, as `Env::testbed`
    /// does. A hang fails the test with the clusters' logs.
    pub fn pytest(&self, env: &Env, cwd: &Path, args: &[&str], limit: Duration) -> Output {
        agent_binary();
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "pytest", "-p", "no:cacheprovider"])
            .args(args)
            .current_dir(cwd)
            .env("TESTBED", env!("CARGO_BIN_EXE_testbed"))
            .env("TESTBED_STORE", super::store())
            .env("TESTBED_STATE_DIR", &env.state)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("NO_COLOR", "1")
            .env_remove("TESTBED_COMPOSITION");
        env.run_echoed("pytest", args, &mut cmd, limit)
    }
}

/// Copies the package's sources (not what a build or a test run left).
fn copy_package(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("python/").flatten() {
        let name = entry.file_name();
        let skip = ["build", "__pycache__", ".pytest_cache"]
            .iter()
            .any(|s| name == *s)
            || name.to_string_lossy().ends_with(".egg-info");
        if skip {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_package(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).expect("copy");
        }
    }
}

/// The names of the test cases of a pytest JUnit report, and its suite's
/// `tests`, `failures`, `errors` and `skipped`.
pub fn junit(path: &Path) -> (Vec<String>, [String; 4]) {
    let xml = std::fs::read_to_string(path).expect("junit report written");
    let suite = start_tag(&xml, "testsuite").expect("a testsuite element");
    let counts = ["tests", "failures", "errors", "skipped"]
        .map(|a| attr(suite, a).unwrap_or_default().to_owned());
    let names = start_tags(&xml, "testcase")
        .into_iter()
        .filter_map(|c| attr(c, "name").map(str::to_owned))
        .collect();
    (names, counts)
}
