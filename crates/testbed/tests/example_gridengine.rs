//! `testbed test` on examples/gridengine: Debian's Grid Engine on a master
//! and two execution hosts; jobs submitted with `qsub` run on the execution
//! hosts, an array job spreads over all of them, and a crashed host is seen
//! as lost by `qhost` until it comes back. The example's script does the
//! checking; this test asserts it passed, every subtest of the JUnit report
//! passed, and nothing is left running. It boots three VMs (under TCG
//! here), so it takes minutes.

mod support;

use support::Env;
use testbed_test_support::text;

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
    let (out, junit, json) = env.test_with_reports(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!env.running(), "the cluster is taken down after the test");

    support::check_passed_reports(&junit, &json, "gridengine", &SUBTESTS);
}
