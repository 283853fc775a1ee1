//! What is kept of a failed test: for each node its serial console log,
//! the agent's journal and the journals of its role's services, plus the
//! cluster's status and the switch's fault history.
//!
//! Collection never stops at the first problem: a node that is down has no
//! journal to read, but its console log still tells how it ended. Every
//! problem is recorded in `problems.txt` and returned.

use std::fs;
use std::path::{Path, PathBuf};

use testbed_api::NodeState;
use testbed_proto::ExecRequest;

use crate::cluster::Cluster;
use crate::error::DriverError;
use crate::timeouts::Timeouts;

/// The agent's systemd unit in every image (installed by the image
/// builder as `/etc/systemd/system/testbed-agent.service`).
pub const AGENT_UNIT: &str = "testbed-agent.service";

/// What [`collect`] wrote and what it could not get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Artifacts {
    pub dir: PathBuf,
    /// Files written, relative to `dir`.
    pub files: Vec<PathBuf>,
    /// What could not be collected, one sentence each.
    pub problems: Vec<String>,
}

impl Artifacts {
    fn write(&mut self, rel: impl AsRef<Path>, data: &[u8]) {
        let rel = rel.as_ref();
        let path = self.dir.join(rel);
        let result = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&path, data));
        match result {
            Ok(()) => self.files.push(rel.to_path_buf()),
            Err(e) => self
                .problems
                .push(format!("cannot write {}: {e}", path.display())),
        }
    }
}

/// A unit name made safe as a file name.
fn file_name(unit: &str) -> String {
    unit.chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect()
}

/// Collects the artifacts of `cluster` into `dir` (created if needed).
/// Fails only if `dir` cannot be created.
pub fn collect(
    cluster: &dyn Cluster,
    dir: &Path,
    timeouts: &Timeouts,
) -> Result<Artifacts, DriverError> {
    fs::create_dir_all(dir).map_err(|source| DriverError::Io {
        what: "create the artifacts folder",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Artifacts {
        dir: dir.to_path_buf(),
        ..Artifacts::default()
    };
    match cluster.status() {
        Err(e) => out
            .problems
            .push(format!("cannot read the cluster's status: {e}")),
        Ok(status) => {
            out.write(
                "status.json",
                serde_json::to_string_pretty(&status)
                    .unwrap_or_default()
                    .as_bytes(),
            );
            for node in &status.nodes {
                collect_node(cluster, &mut out, node, timeouts);
            }
        }
    }
    match cluster.history() {
        Err(e) => out
            .problems
            .push(format!("cannot read the fault history: {e}")),
        Ok(events) => {
            let mut text = String::new();
            for e in &events {
                text.push_str(&format!("{:.3} {}\n", e.at, e.change));
            }
            if events.is_empty() {
                text.push_str("no faults were applied\n");
            }
            out.write("faults.txt", text.as_bytes());
            out.write(
                "faults.json",
                serde_json::to_string_pretty(&events)
                    .unwrap_or_default()
                    .as_bytes(),
            );
        }
    }
    let mut problems = out.problems.join("\n");
    if problems.is_empty() {
        problems.push_str("everything was collected");
    }
    problems.push('\n');
    out.write("problems.txt", problems.as_bytes());
    Ok(out)
}

fn collect_node(
    cluster: &dyn Cluster,
    out: &mut Artifacts,
    node: &testbed_api::NodeStatus,
    timeouts: &Timeouts,
) {
    let name = &node.name;
    let base = PathBuf::from(name);
    match fs::read(&node.console_log) {
        Ok(data) => out.write(base.join("console.log"), &data),
        Err(e) => out.problems.push(format!(
            "node {name}: cannot read the console log {}: {e}",
            node.console_log.display()
        )),
    }
    let mut state = format!("{}\n", node.state);
    if let Some(message) = &node.message {
        state.push_str(message);
        state.push('\n');
    }
    out.write(base.join("state.txt"), state.as_bytes());
    // Only a node with a running agent can be asked for its journal.
    if !matches!(
        node.state,
        NodeState::Ready | NodeState::Activating | NodeState::Failed
    ) {
        out.problems.push(format!(
            "node {name} is {}: no journal (its console log is all there is)",
            node.state
        ));
        return;
    }
    let mut units = vec![AGENT_UNIT.to_owned()];
    units.extend(cluster.services(name));
    let timeout = timeouts.scale(timeouts.artifact_command);
    for unit in units {
        let request = ExecRequest::argv([
            "journalctl",
            "--no-pager",
            "-o",
            "short-precise",
            "-u",
            unit.as_str(),
        ])
        .timeout(timeout);
        match cluster.exec(name, request) {
            Ok(output) if output.status.success() => {
                out.write(
                    base.join(format!("{}.journal", file_name(&unit))),
                    &output.stdout,
                );
            }
            Ok(output) => out.problems.push(format!(
                "node {name}: journalctl -u {unit} ended with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            Err(e) => {
                out.problems.push(format!(
                    "node {name}: cannot read the journal of {unit}: {e}"
                ));
                // The agent is gone; the other units would fail the same way.
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_become_file_names() {
        assert_eq!(file_name("a/b\n.service"), "a_b_.service");
        assert_eq!(file_name("slurmd.service"), "slurmd.service");
    }
}
