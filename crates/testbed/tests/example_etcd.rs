//! `testbed test` on examples/etcd: three etcd members bootstrap one Raft
//! cluster, a crashed leader is replaced and catches up, a partitioned
//! minority refuses writes until healed. The example's script does the
//! checking; this test asserts it passed, every subtest of the JUnit report
//! passed, and nothing is left running. It boots three VMs (under TCG here),
//! so it takes minutes.

#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The subtests of examples/etcd/test.rhai, in order.
const SUBTESTS: [&str; 5] = [
    "all members are healthy and agree on one leader",
    "a write on one member is readable on every member",
    "writes survive the loss of a member, which catches up when back",
    "a partitioned minority cannot write, the majority can",
    "healing the partition brings the minority up to date",
];

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
    /// A copy of examples/etcd without its lock, so that it is locked
    /// against today's archive like the other tests of this crate.
    fn example() -> Env {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/etcd");
        let comp = tmp.path().join("etcd");
        std::fs::create_dir_all(&comp).expect("mkdir");
        for entry in std::fs::read_dir(&src).expect("examples/etcd").flatten() {
            let name = entry.file_name();
            let skip = name == "testbed.lock" || name == "testbed-artifacts";
            if !skip && entry.path().is_file() {
                std::fs::copy(entry.path(), comp.join(&name)).expect("copy");
            }
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

/// The attribute `name="..."` of an XML start tag (without its `<tag`).
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let start = if tag.starts_with(&key) {
        key.len()
    } else {
        tag.find(&format!(" {key}"))? + key.len() + 1
    };
    let end = tag[start..].find('"')? + start;
    Some(&tag[start..end])
}

#[test]
fn the_etcd_example_passes_every_subtest() {
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

    let xml = std::fs::read_to_string(&junit).expect("junit written");
    let suite = xml
        .split("<testsuite ")
        .nth(1)
        .and_then(|s| s.split('>').next())
        .expect("a testsuite element");
    assert_eq!(attr(suite, "name"), Some("etcd"), "{suite}");
    assert_eq!(
        attr(suite, "tests"),
        Some(SUBTESTS.len().to_string().as_str()),
        "{suite}"
    );
    assert_eq!(attr(suite, "failures"), Some("0"), "{suite}");
    let cases: Vec<&str> = xml
        .split("<testcase ")
        .skip(1)
        .map(|c| c.split('>').next().unwrap_or(""))
        .collect();
    let names: Vec<&str> = cases.iter().filter_map(|c| attr(c, "name")).collect();
    assert_eq!(names, SUBTESTS, "{xml}");
    assert!(!xml.contains("<failure"), "{xml}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    assert_eq!(report["passed"], true, "{report}");
    let cases = report["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), SUBTESTS.len(), "{report}");
    for case in cases {
        assert_eq!(case["passed"], true, "{case}");
    }
}
