//! `testbed test` on examples/gridengine: Debian's Grid Engine on a master
//! and two execution hosts; jobs submitted with `qsub` run on the execution
//! hosts, an array job spreads over all of them, and a crashed host is seen
//! as lost by `qhost` until it comes back. The example's script does the
//! checking; this test asserts it passed, every subtest of the JUnit report
//! passed, and nothing is left running. It boots three VMs (under TCG
//! here), so it takes minutes.

mod support;

use support::{attr, start_tag, start_tags, text, Env};

/// The subtests of examples/gridengine/test.rhai, in order.
const SUBTESTS: [&str; 4] = [
    "the qmaster knows every execution host and each reports its load",
    "a job submitted with qsub runs on an execution host",
    "an array job spreads over every execution host",
    "losing an execution host is seen by qhost; jobs run on the others",
];

#[test]
fn the_gridengine_example_passes_every_subtest() {
    let env = &Env::example("gridengine");
    let (out, junit, json) = env.test_with_reports();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!env.running(), "the cluster is taken down after the test");

    let xml = std::fs::read_to_string(&junit).expect("junit written");
    let suite = start_tag(&xml, "testsuite").expect("a testsuite element");
    assert_eq!(attr(suite, "name"), Some("gridengine"), "{suite}");
    assert_eq!(
        attr(suite, "tests"),
        Some(SUBTESTS.len().to_string().as_str()),
        "{suite}"
    );
    assert_eq!(attr(suite, "failures"), Some("0"), "{suite}");
    let cases = start_tags(&xml, "testcase");
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
