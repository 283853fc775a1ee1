//! `testbed test` on examples/etcd: three etcd members bootstrap one Raft
//! cluster, a crashed leader is replaced and catches up, a partitioned
//! minority refuses writes until healed. The example's script does the
//! checking; this test asserts it passed and every subtest of the JUnit
//! report passed; then the same checks written in Python
//! (`examples/etcd/test_etcd.py`, pytest with the package's plugin in a
//! fresh virtual environment) pass on the same cluster, and nothing is
//! left running. It boots three VMs (under TCG here), so it takes minutes.

mod support;

use std::time::Duration;

use support::{python, Env};
use testbed_test_support::text;

/// The subtests of examples/etcd/test.rhai, in order.
const SUBTESTS: [&str; 5] = [
    "all members are healthy and agree on one leader",
    "a write on one member is readable on every member",
    "writes survive the loss of a member, which catches up when back",
    "a partitioned minority cannot write, the majority can",
    "healing the partition brings the minority up to date",
];

/// The test cases of examples/etcd/test_etcd.py, in order.
const ETCD_CASES: [&str; 5] = [
    "test_all_members_are_healthy_and_agree_on_one_leader",
    "test_a_write_on_one_member_is_readable_on_every_member",
    "test_writes_survive_the_loss_of_a_member_which_catches_up_when_back",
    "test_a_partitioned_minority_cannot_write_the_majority_can",
    "test_healing_the_partition_brings_the_minority_up_to_date",
];

#[test]
fn the_etcd_example_passes_every_subtest_in_rhai_and_in_python() {
    let env = &Env::example("etcd");
    // One boot for both (CI time): `testbed test` and the pytest plugin
    // use a cluster that is up and leave it up.
    let out = env.testbed(&["up"]);
    assert!(out.status.success(), "up: {}", text(&out.stderr));
    let (out, junit, json) = env.test_with_reports(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    support::check_passed_reports(&junit, &json, "etcd", &SUBTESTS);

    // examples/etcd/test_etcd.py, the same checks with the Python package.
    assert!(
        env.copied.iter().any(|f| f == "test_etcd.py"),
        "{:?}",
        env.copied
    );
    let venv = python::Venv::new();
    let out = venv.pytest(
        env,
        &env.comp,
        &["test_etcd.py", "-v", "--junitxml=pytest.xml"],
        Duration::from_secs(45 * 60),
    );
    assert_eq!(out.status.code(), Some(0), "pytest failed");
    let (names, counts) = python::junit(&env.comp.join("pytest.xml"));
    assert_eq!(names, ETCD_CASES);
    assert_eq!(counts, ["5", "0", "0", "0"].map(String::from));
    assert!(
        !env.comp.join("testbed-artifacts").exists(),
        "no test failed, so no artifacts"
    );
    assert!(env.running(), "the plugin leaves a cluster that was up");

    let out = env.testbed(&["down"]);
    assert!(out.status.success(), "down: {}", text(&out.stderr));
    assert!(!env.running());
}
