//! The Python package (`python/`, docs/python.md) as a user installs and
//! runs it: `pip install ./python` in a fresh virtual environment, then
//! pytest on
//!
//! - the package's own tests, against a fake supervisor (no VM):
//!   `python/run-tests.sh`;
//! - `examples/etcd/test_etcd.py`: the pytest plugin brings the etcd
//!   example up (`testbed up`, 3 VMs), the example's checks run, and the
//!   plugin takes the cluster down;
//! - `examples/slurm/test_services.py`, the testinfra check, with
//!   `--hosts=testbed://...` on the Slurm example brought up with `testbed
//!   up --scale compute=1` (3 VMs); then, on the same cluster, a test that
//!   fails on purpose: pytest's report names the node, the command and its
//!   output, and the artifacts folder holds every node's console log and
//!   journal.
//!
//! The environments see Debian's python3-pytest, python3-testinfra,
//! python3-setuptools and python3-wheel (`scripts/host-packages.txt`), so
//! the install needs no network. The VM tests boot one cluster at a time,
//! under TCG here, so they take minutes.

// pytest's output is echoed on stderr: what a failed test's log needs.
#![allow(clippy::print_stderr)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use support::{attr, start_tag, start_tags, Env};
use testbed_test_support::{agent_binary, output_within, repo_root, run_ok, text};

/// The tests of this file boot VMs one cluster at a time: two clusters
/// side by side on 2 emulated cores would only make both slow.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Debian's Python, whose packages the environments see.
const PYTHON: &str = "/usr/bin/python3";

/// The test cases of examples/etcd/test_etcd.py, in order.
const ETCD_CASES: [&str; 5] = [
    "test_all_members_are_healthy_and_agree_on_one_leader",
    "test_a_write_on_one_member_is_readable_on_every_member",
    "test_writes_survive_the_loss_of_a_member_which_catches_up_when_back",
    "test_a_partitioned_minority_cannot_write_the_majority_can",
    "test_healing_the_partition_brings_the_minority_up_to_date",
];

/// A fresh virtual environment with the package installed from a copy of
/// `python/` (pip builds in the folder it is given; a copy leaves the
/// checkout clean and never installs a stale build/ folder).
struct Venv {
    _dir: tempfile::TempDir,
    python: PathBuf,
}

impl Venv {
    fn new() -> Venv {
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
    fn pytest(&self, env: &Env, cwd: &Path, args: &[&str], limit: Duration) -> Output {
        agent_binary();
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "pytest", "-p", "no:cacheprovider"])
            .args(args)
            .current_dir(cwd)
            .env("TESTBED", env!("CARGO_BIN_EXE_testbed"))
            .env("TESTBED_STORE", support::store())
            .env("TESTBED_STATE_DIR", &env.state)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("NO_COLOR", "1")
            .env_remove("TESTBED_COMPOSITION");
        let result = output_within(&mut cmd, limit);
        let (Ok(out) | Err(out)) = &result;
        eprintln!(
            "$ pytest {}\n-> {:?}\n{}{}",
            args.join(" "),
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        match result {
            Ok(out) => out,
            Err(_) => panic!(
                "pytest {} did not end within {limit:?}; the cluster's logs:\n{}",
                args.join(" "),
                env.log_tails()
            ),
        }
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
fn junit(path: &Path) -> (Vec<String>, [String; 4]) {
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

#[test]
fn the_etcd_example_passes_in_python_with_a_cluster_the_plugin_brings_up_and_down() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let env = &Env::example("etcd");
    assert!(
        env.copied.iter().any(|f| f == "test_etcd.py"),
        "{:?}",
        env.copied
    );
    let venv = Venv::new();
    let out = venv.pytest(
        env,
        &env.comp,
        &["test_etcd.py", "-v", "--junitxml=report.xml"],
        Duration::from_secs(45 * 60),
    );
    assert_eq!(out.status.code(), Some(0), "pytest failed");
    let (names, counts) = junit(&env.comp.join("report.xml"));
    assert_eq!(names, ETCD_CASES);
    assert_eq!(counts, ["5", "0", "0", "0"].map(String::from));
    assert!(
        !env.running(),
        "the plugin takes the cluster down after the session"
    );
    assert!(
        !env.comp.join("testbed-artifacts").exists(),
        "no test failed, so no artifacts"
    );
}

#[test]
fn the_slurm_services_pass_the_testinfra_check_and_a_failing_test_leaves_its_logs() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let env = &Env::example("slurm");
    let out = env.testbed(&["up", "--scale", "compute=1"]);
    assert!(out.status.success(), "up: {}", text(&out.stderr));
    let venv = Venv::new();

    // The testinfra check, on the nodes given as pytest-testinfra's hosts.
    let composition = format!("--testbed-composition={}", env.comp.display());
    let out = venv.pytest(
        env,
        &env.comp,
        &[
            "test_services.py",
            "--hosts=testbed://ctl,testbed://nfs,testbed://compute",
            &composition,
            "-v",
            "--junitxml=services.xml",
        ],
        Duration::from_secs(15 * 60),
    );
    assert_eq!(out.status.code(), Some(0), "the testinfra check failed");
    let (names, counts) = junit(&env.comp.join("services.xml"));
    assert_eq!(counts, ["12", "0", "0", "0"].map(String::from), "{names:?}");
    for host in ["ctl", "nfs", "compute"] {
        let case = format!("test_the_roles_services_run[testbed://{host}]");
        assert!(names.contains(&case), "{case} in {names:?}");
    }

    // A failing test on the same running cluster (which the plugin then
    // leaves running: it was up before).
    std::fs::write(
        env.comp.join("test_broken.py"),
        "import pytest\n\
         \n\
         pytestmark = pytest.mark.testbed(path=\".\")\n\
         \n\
         def test_fine(testbed_cluster):\n\
         \x20   assert testbed_cluster[\"ctl\"].succeed(\"hostname\").strip() == \"ctl\"\n\
         \n\
         def test_broken(testbed_cluster):\n\
         \x20   testbed_cluster[\"compute\"].succeed(\"echo out-text; echo err-text >&2; exit 3\")\n",
    )
    .unwrap();
    let out = venv.pytest(
        env,
        &env.comp,
        &["test_broken.py", "--junitxml=broken.xml"],
        Duration::from_secs(10 * 60),
    );
    assert_eq!(out.status.code(), Some(1), "one test fails");
    let report = text(&out.stdout);
    for expected in [
        "command `echo out-text; echo err-text >&2; exit 3` on node compute failed: exit status 3",
        "E       out-text",
        "E       err-text",
        "test_broken.py:9: CommandFailed",
        "testbed compute console log (last lines)",
        "testbed compute journal (last lines)",
        "1 failed, 1 passed",
    ] {
        assert!(report.contains(expected), "{expected:?} in the report");
    }
    let artifacts = env
        .comp
        .join("testbed-artifacts/test_broken.py_test_broken");
    for node in ["ctl", "nfs", "compute"] {
        let dir = artifacts.join(node);
        let console = std::fs::read(dir.join("console.log")).expect("console log kept");
        assert!(!console.is_empty(), "{node}: empty console log");
        let journal = text(&std::fs::read(dir.join("journal.txt")).expect("journal kept"));
        assert!(
            journal.contains("systemd"),
            "{node}: a boot journal: {journal}"
        );
        let state = std::fs::read_to_string(dir.join("state.txt")).expect("state");
        assert_eq!(state, "ready\n");
    }
    let compute = text(&std::fs::read(artifacts.join("compute/journal.txt")).unwrap());
    assert!(compute.contains("slurmd"), "compute's journal shows slurmd");
    assert_eq!(
        std::fs::read_to_string(artifacts.join("problems.txt")).unwrap(),
        "everything was collected\n"
    );
    let junit_xml = std::fs::read_to_string(env.comp.join("broken.xml")).unwrap();
    assert!(
        junit_xml.contains(&format!(
            "<property name=\"testbed_artifacts\" value=\"{}\" />",
            artifacts.display()
        )),
        "{junit_xml}"
    );

    assert!(env.running(), "a cluster that was up before stays up");
    let out = env.testbed(&["down"]);
    assert!(out.status.success(), "down: {}", text(&out.stderr));
    assert!(!env.running());
}
