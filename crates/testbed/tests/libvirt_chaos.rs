//! Chaos on libvirt (`support/chaos.rs`): at a random point of `up`,
//! `test` or `down` of a one-node cluster on the system daemon that
//! `scripts/setup-libvirt.sh` starts, one of the CLI, the supervisor, the
//! domain's QEMU (a process of libvirt's, not ours) or the agent in the
//! guest is killed with SIGKILL. Then `down`: no process that names the
//! cluster's state directory, no state, no domain of the cluster (running
//! or defined), and the next `up` of the same composition works.
//! `TESTBED_CHAOS_LIBVIRT_TRIALS` sets the number of trials (default 2);
//! the counts are recorded in `target/tmp/robustness.txt`.
//!
//! It shares the composition, its image and its role snapshot with the
//! backend contract (`conformance.rs`), which uploads the same image into
//! the same pool: the two run one after the other (`scripts/test.sh`).

mod support;

use std::process::Command;

use support::chaos::{self, Backend};
use testbed_test_support::{count_from_env, record_robustness, text};

/// The names of the system daemon's domains of cluster `chaos`, running
/// or only defined.
fn domains() -> Vec<String> {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "list", "--all", "--name"])
        .output()
        .expect("virsh");
    assert!(out.status.success(), "virsh list: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("testbed-chaos-"))
        .map(str::to_owned)
        .collect()
}

const LIBVIRT: Backend = Backend {
    name: "libvirt",
    // libvirt's QEMU does not name our state directory; it names its
    // domain.
    machine: |_| {
        let out = Command::new("pgrep")
            .args(["-f", "guest=testbed-chaos-"])
            .output()
            .expect("pgrep");
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    },
    made: |_| domains(),
};

#[test]
fn killing_the_cli_the_supervisor_the_domain_or_the_agent_leaks_nothing() {
    let trials: u64 = count_from_env("TESTBED_CHAOS_LIBVIRT_TRIALS", 2);
    let env = chaos::composition();
    let (line, failures) = chaos::run(&env, &LIBVIRT, trials, "libvirt domains", || {});
    // As with QEMU: the host's end of the virtio-serial port (here
    // libvirt's stream) stays open when the agent dies; the new agent's
    // announcement ends the request.
    chaos::agent_killed_in_flight(&env, "the agent on vm started again");
    chaos::down_leaves_nothing(&env, &LIBVIRT).expect("the last down");
    record_robustness(env!("CARGO_TARGET_TMPDIR"), &line);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
