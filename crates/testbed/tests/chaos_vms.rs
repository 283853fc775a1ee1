//! Chaos on real VMs (`support/chaos.rs`): at a random point of `up`,
//! `test` or `down` of a one-node QEMU cluster, one of the CLI, the
//! supervisor, the node's QEMU or the agent inside the guest is killed
//! with SIGKILL. Then `down`: no process that names the cluster's state
//! directory, no state, and the next `up` of the same composition works.
//!
//! The supervisor's state machine gets many more trials on the fake
//! backend (`crates/runtime/tests/chaos.rs`); these are few and slow (a
//! node from its role snapshot takes seconds under TCG).
//! `TESTBED_CHAOS_VM_TRIALS` sets their number (default 4); the counts are
//! recorded in `target/tmp/robustness.txt`.

mod support;

use support::chaos::{self, Backend};
use testbed_test_support::{count_from_env, record_robustness};

const QEMU: Backend = Backend {
    name: "qemu",
    machine: |env| chaos::pids(env, "qemu-system"),
    // QEMU makes nothing outside the state directory.
    made: |_| Vec::new(),
};

#[test]
fn killing_the_cli_the_supervisor_qemu_or_the_agent_leaks_nothing() {
    let trials: u64 = count_from_env("TESTBED_CHAOS_VM_TRIALS", 4);
    let env = chaos::composition();
    let (line, failures) = chaos::run(&env, &QEMU, trials, "QEMU VMs", || {});
    // The host's end of a virtio-serial port stays connected when the
    // guest's agent dies: the new agent's announcement is what ends the
    // request.
    chaos::agent_killed_in_flight(&env, "the agent on vm started again");
    chaos::down_leaves_nothing(&env, &QEMU).expect("the last down");
    record_robustness(env!("CARGO_TARGET_TMPDIR"), &line);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
