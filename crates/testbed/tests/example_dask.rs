//! `testbed test` on the Dask example (examples/dask): a scheduler and three
//! workers from Debian's python3-distributed, and a script that checks every
//! worker registers, a computation spreads over all of them, a partitioned
//! worker is dropped while its tasks finish elsewhere, and it comes back
//! after `heal()`. The example is copied without its lock, so it is locked
//! against today's archive like the other tests of this crate. Builds two
//! images and boots four VMs (under TCG here), so this takes minutes.

mod support;

use support::{attr, start_tag, start_tags, text, Env};

#[test]
fn the_dask_example_passes_every_subtest() {
    let env = &Env::example("dask");
    for needed in ["testbed.toml", "test.rhai", "spread.py"] {
        let copied = &env.copied;
        assert!(copied.iter().any(|c| c == needed), "{needed} in {copied:?}");
    }
    let (out, junit, json) = env.test_with_reports();
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
    let suite = start_tag(xml, "testsuite").expect("a testsuite element");
    assert_eq!(attr(suite, "name"), Some("dask"), "{suite}");
    assert_eq!(attr(suite, "tests"), Some("4"), "{suite}");
    assert_eq!(attr(suite, "failures"), Some("0"), "{suite}");
    assert_eq!(attr(suite, "errors"), Some("0"), "{suite}");
    let cases: Vec<&str> = start_tags(xml, "testcase")
        .into_iter()
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
