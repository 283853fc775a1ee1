//! `testbed test` on the Dask example (examples/dask): a scheduler and three
//! workers from Debian's python3-distributed, and a script that checks every
//! worker registers, a computation spreads over all of them, a partitioned
//! worker is dropped while its tasks finish elsewhere, and it comes back
//! after `heal()`. The example is copied without its lock, so it is locked
//! against today's archive like the other tests of this crate. Builds two
//! images and boots four VMs (under TCG here), so this takes minutes.

mod support;

use support::Env;
use testbed_test_support::text;

#[test]
fn the_dask_example_passes_every_subtest() {
    let env = &Env::example("dask");
    for needed in ["testbed.toml", "test.rhai", "spread.py"] {
        let copied = &env.copied;
        assert!(copied.iter().any(|c| c == needed), "{needed} in {copied:?}");
    }
    let (out, junit, json) = env.test_with_reports(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!env.running(), "the cluster is taken down after the test");
    assert!(
        env.comp.join("testbed.lock").is_file(),
        "the copy was locked against today's archive"
    );

    let cases = support::check_passed_reports(
        &junit,
        &json,
        "dask",
        &[
            "every worker registers with the scheduler by name",
            "a computation spreads its tasks over every worker",
            "a partitioned worker is dropped and its tasks rerun elsewhere",
            "the worker reconnects after heal and runs tasks again",
        ],
    );
    // The partition subtest saw the cut-off worker given tasks that the
    // others then ran (what `spread.py run` prints, logged by the script).
    let partition = cases[2].to_string();
    assert!(
        partition.contains("assigned worker1 worker2 worker3"),
        "{partition}"
    );
}
