//! `testbed test` on the Dask example (examples/dask): a scheduler and three
//! workers from Debian's python3-distributed, and a script that checks every
//! worker registers, a computation spreads over all of them, a partitioned
//! worker is dropped while its tasks finish elsewhere, and it comes back
//! after `heal()`. The example is copied without its lock, so it is locked
//! against today's archive like the other tests of this crate. Builds two
//! images and boots four VMs (under TCG here), so this takes minutes.

#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The store shared by this crate's tests, so images are built once.
fn store() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("store")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Env {
    _tmp: tempfile::TempDir,
    comp: PathBuf,
    state: PathBuf,
}

impl Env {
    /// A copy of every file of examples/dask except its lock.
    fn example() -> Env {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/dask");
        let comp = tmp.path().join("dask");
        std::fs::create_dir_all(&comp).expect("mkdir");
        let mut copied = Vec::new();
        for entry in std::fs::read_dir(&src).expect("examples/dask").flatten() {
            let name = entry.file_name();
            if name == "testbed.lock" || !entry.path().is_file() {
                continue;
            }
            std::fs::copy(entry.path(), comp.join(&name)).expect("copy");
            copied.push(name.to_string_lossy().into_owned());
        }
        for needed in ["testbed.toml", "test.rhai", "spread.py"] {
            assert!(copied.iter().any(|c| c == needed), "{needed} in {copied:?}");
        }
        let state = tmp.path().join("run");
        Env {
            _tmp: tmp,
            comp,
            state,
        }
    }

    fn testbed(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_testbed"))
            .args(args)
            .current_dir(&self.comp)
            .env("NO_COLOR", "1")
            .env("TESTBED_STORE", store())
            .env("TESTBED_STATE_DIR", &self.state)
            .output()
            .expect("run testbed");
        eprintln!(
            "$ testbed {}\n-> {:?}\n{}{}",
            args.join(" "),
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    fn running(&self) -> bool {
        self.state
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.testbed(&["down"]);
        }
    }
}

/// The value of `name="..."` among the attributes of an XML start tag.
fn attr(attrs: &str, name: &str) -> Option<String> {
    let attrs = format!(" {attrs}");
    let start = attrs.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = attrs[start..].find('"')? + start;
    Some(attrs[start..end].to_owned())
}

#[test]
fn the_dask_example_passes_every_subtest() {
    let env = &Env::example();
    let junit = env.comp.join("report.xml");
    let json = env.comp.join("report.json");
    let out = env.testbed(&[
        "test",
        "--junit",
        junit.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!env.running(), "the cluster is taken down after the test");
    assert!(
        env.comp.join("testbed.lock").is_file(),
        "the copy was locked against today's archive"
    );

    check_reports(
        &std::fs::read_to_string(&junit).expect("junit written"),
        &std::fs::read(&json).expect("json written"),
    );
}

/// The JUnit and JSON reports of a passed run: four subtests, by name, all
/// passed.
fn check_reports(xml: &str, json: &[u8]) {
    let suite = xml
        .split("<testsuite ")
        .nth(1)
        .and_then(|s| s.split('>').next())
        .expect("a testsuite element");
    assert_eq!(attr(suite, "name").as_deref(), Some("dask"), "{suite}");
    assert_eq!(attr(suite, "tests").as_deref(), Some("4"), "{suite}");
    assert_eq!(attr(suite, "failures").as_deref(), Some("0"), "{suite}");
    assert_eq!(attr(suite, "errors").as_deref(), Some("0"), "{suite}");
    let cases: Vec<String> = xml
        .split("<testcase ")
        .skip(1)
        .filter_map(|c| c.split('>').next())
        .filter_map(|attrs| attr(attrs, "name"))
        .collect();
    assert_eq!(
        cases,
        [
            "every worker registers with the scheduler by name",
            "a computation spreads its tasks over every worker",
            "a partitioned worker is dropped and its tasks rerun elsewhere",
            "the worker reconnects after heal and runs tasks again",
        ],
        "{xml}"
    );
    assert!(!xml.contains("<failure"), "{xml}");

    let report: serde_json::Value = serde_json::from_slice(json).expect("json");
    assert_eq!(report["passed"], true, "{report}");
    let cases = report["cases"].as_array().expect("cases");
    assert!(
        cases.iter().all(|c| c["passed"] == true),
        "every subtest passed: {report}"
    );
    // The partition subtest saw the cut-off worker given tasks that the
    // others then ran (what `spread.py run` prints, logged by the script).
    let partition = cases[2].to_string();
    assert!(
        partition.contains("assigned worker1 worker2 worker3"),
        "{partition}"
    );
}
