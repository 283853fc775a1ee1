//! Taking a cluster down: through its supervisor when it answers, by hand
//! (`testbed_runtime::state::teardown`) when it does not.

use std::fmt;
use std::fs;
use std::time::{Duration, Instant};

use testbed_runtime::api::{ApiClient, Reply, Request};
use testbed_runtime::state::{self, StateDir, StateError};

/// What [`down`] did. Its `Display` is one sentence naming the cluster.
#[derive(Debug)]
pub struct DownReport {
    pub cluster: String,
    pub outcome: DownOutcome,
}

/// How the cluster went down.
#[derive(Debug)]
pub enum DownOutcome {
    /// The supervisor stopped every node and removed the state directory.
    Stopped,
    /// The supervisor was gone or did not answer: leftover processes were
    /// killed (`(what, pid)`), what the container engine or libvirt held
    /// was removed (`engine`, one line each), and the state directory too.
    TornDown {
        killed: Vec<(String, i32)>,
        engine: Vec<String>,
    },
    /// There was no state directory.
    NotRunning,
    /// Tearing down by hand failed.
    Failed(StateError),
}

impl fmt::Display for DownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cluster = &self.cluster;
        match &self.outcome {
            DownOutcome::Stopped => write!(f, "cluster {cluster} is down"),
            DownOutcome::TornDown { killed, engine } => {
                // Containers outlive their supervisor; what the engine removed.
                let removed = if engine.is_empty() {
                    String::new()
                } else {
                    format!("; {}", engine.join(", "))
                };
                if killed.is_empty() {
                    write!(
                        f,
                        "cluster {cluster} is down (its supervisor was gone; state removed{removed})"
                    )
                } else {
                    let killed: Vec<String> = killed
                        .iter()
                        .map(|(what, pid)| format!("{what} (pid {pid})"))
                        .collect();
                    write!(
                        f,
                        "cluster {cluster} is down (its supervisor did not answer; killed {}{removed})",
                        killed.join(", ")
                    )
                }
            }
            DownOutcome::NotRunning => write!(f, "cluster {cluster} is not running"),
            DownOutcome::Failed(e) => write!(f, "cluster {cluster}: {e}"),
        }
    }
}

/// Asks the supervisor of `cluster` to stop; tears the state in `dir` down
/// by hand when it does not answer. Returns once the supervisor is gone,
/// so that nothing of the cluster outlives the call.
pub fn down(dir: &StateDir, cluster: &str) -> DownReport {
    let report = |outcome| DownReport {
        cluster: cluster.to_owned(),
        outcome,
    };
    if let Ok(mut client) = ApiClient::connect(&dir.api_socket()) {
        let supervisor = fs::read_to_string(dir.supervisor_pid())
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let _ = client.set_read_timeout(Some(Duration::from_secs(90)));
        if let Ok(Reply::Ok) = client.call(&Request::Down) {
            // The supervisor removed the directory before answering and
            // exits right after.
            if let Some(pid) = supervisor {
                wait_gone(pid, Duration::from_secs(10));
            }
            if !dir.exists() {
                return report(DownOutcome::Stopped);
            }
        }
    }
    report(match state::teardown(dir) {
        Ok(t) if t.removed => DownOutcome::TornDown {
            killed: t.killed,
            engine: t.engine,
        },
        Ok(_) => DownOutcome::NotRunning,
        Err(e) => DownOutcome::Failed(e),
    })
}

/// Waits until process `pid` has exited (a zombie counts as exited: only
/// its parent can reap it).
fn wait_gone(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            // "PID (comm) STATE ...": the state follows the last ')'.
            Ok(stat)
                if !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z') =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(outcome: DownOutcome) -> String {
        DownReport {
            cluster: "c".into(),
            outcome,
        }
        .to_string()
    }

    #[test]
    fn the_report_says_how_the_cluster_went_down() {
        assert_eq!(text(DownOutcome::Stopped), "cluster c is down");
        assert_eq!(text(DownOutcome::NotRunning), "cluster c is not running");
        assert_eq!(
            text(DownOutcome::TornDown {
                killed: vec![],
                engine: vec![]
            }),
            "cluster c is down (its supervisor was gone; state removed)"
        );
        assert_eq!(
            text(DownOutcome::TornDown {
                killed: vec![("supervisor".into(), 12), ("node a".into(), 34)],
                engine: vec!["removed 2 containers".into()]
            }),
            "cluster c is down (its supervisor did not answer; killed supervisor (pid 12), node a (pid 34); removed 2 containers)"
        );
    }

    #[test]
    fn a_cluster_without_state_is_not_running() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::at(dir.path().join("nothing-here"));
        let report = down(&state, "c");
        assert!(
            matches!(report.outcome, DownOutcome::NotRunning),
            "{report:?}"
        );
        assert_eq!(report.to_string(), "cluster c is not running");
    }
}
