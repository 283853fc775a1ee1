//! `testbed test` on examples/etcd: three etcd members bootstrap one Raft
//! cluster, a crashed leader is replaced and catches up, a partitioned
//! minority refuses writes until healed. The example's script does the
//! checking; this test asserts it passed, every subtest of the JUnit report
//! passed, and nothing is left running. It boots three VMs (under TCG here),
//! so it takes minutes.

mod support;

use support::Env;
use testbed_test_support::text;

/// The subtests of examples/etcd/test.rhai, in order.
const SUBTESTS: [&str; 5] = [
    "all members are healthy and agree on one leader",
    "a write on one member is readable on every member",
    "writes survive the loss of a member, which catches up when back",
    "a partitioned minority cannot write, the majority can",
    "healing the partition brings the minority up to date",
];

#[test]
fn the_etcd_example_passes_every_subtest() {
    let env = &Env::example("etcd");
    let (out, junit, json) = env.test_with_reports();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!env.running(), "the cluster is taken down after the test");

    support::check_passed_reports(&junit, &json, "etcd", &SUBTESTS);
}
