//! Chaos on containers (`support/chaos.rs`): at a random point of `up`,
//! `test` or `down` of a one-node podman cluster, one of the CLI, the
//! supervisor, the container's first process (its systemd, seen from the
//! host) or the agent inside is killed with SIGKILL. Then `down`: no
//! process that names the cluster's state directory, no state, no
//! container, network or image tag of the cluster, and the next `up`
//! works. `TESTBED_CHAOS_CONTAINER_TRIALS` sets the number of trials
//! (default 2); the counts are recorded in `target/tmp/robustness.txt`.

mod support;

use std::process::Command;
use std::sync::OnceLock;

use support::chaos::{self, Backend};
use testbed_test_support::{count_from_env, record_robustness, text};

fn podman(args: &[&str]) -> Vec<String> {
    let out = Command::new("podman").args(args).output().expect("podman");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The engine's image tags after one clean `up` and `down` (the
/// calibration): whatever is there beyond them after a trial was left.
static TAGS_BEFORE: OnceLock<Vec<String>> = OnceLock::new();

fn tags() -> Vec<String> {
    podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
}

const PODMAN: Backend = Backend {
    name: "podman",
    machine: |_| {
        podman(&["ps", "--format", "{{.Names}} {{.Pid}}"])
            .iter()
            .filter_map(|l| l.strip_prefix("testbed-chaos-vm "))
            .filter_map(|pid| pid.parse().ok())
            .filter(|pid| *pid > 0)
            .collect()
    },
    made: |_| {
        let mut made: Vec<String> = podman(&["ps", "--all", "--format", "{{.Names}}"])
            .into_iter()
            .chain(podman(&["network", "ls", "--format", "{{.Name}}"]))
            .filter(|n| n.starts_with("testbed-chaos-"))
            .collect();
        if let Some(before) = TAGS_BEFORE.get() {
            made.extend(tags().into_iter().filter(|t| !before.contains(t)));
        }
        made
    },
};

#[test]
fn killing_the_cli_the_supervisor_the_container_or_the_agent_leaks_nothing() {
    let trials: u64 = count_from_env("TESTBED_CHAOS_CONTAINER_TRIALS", 2);
    let env = chaos::composition();
    let (line, failures) = chaos::run(&env, &PODMAN, trials, "podman containers", || {
        let _ = TAGS_BEFORE.set(tags());
    });
    // A container's agent is one `podman exec` per session: its death
    // ends the stream, and a new session is opened.
    chaos::agent_killed_in_flight(&env, "the agent closed the connection");
    chaos::down_leaves_nothing(&env, &PODMAN).expect("the last down");
    record_robustness(env!("CARGO_TARGET_TMPDIR"), &line);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
