//! The report of a cluster that did not come up: one entry per node that
//! was not ready, with its reason and console log, and what became of the
//! cluster.

use std::fmt;
use std::path::PathBuf;

use testbed_runtime::api::{NodeState, NodeStatus};

/// Why `up` failed. Its `Display` is the report, one line per node (and
/// its console log), then what became of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    pub cluster: String,
    /// The nodes that were not ready, in plan order.
    pub nodes: Vec<NodeStatus>,
    /// The state directory when the cluster was left running
    /// (`keep_failed`); `None` when it was taken down.
    pub kept: Option<PathBuf>,
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for node in &self.nodes {
            if !matches!(node.state, NodeState::Failed | NodeState::Stopped) {
                writeln!(
                    f,
                    "node {} ({}) was still {} when up gave up",
                    node.name, node.role, node.state,
                )?;
                continue;
            }
            let detail = node.message.as_deref().unwrap_or("no details");
            // Agent errors already start with the node's name.
            let prefix = format!("node {}: ", node.name);
            let detail = detail.strip_prefix(&prefix).unwrap_or(detail);
            writeln!(
                f,
                "node {} ({}) {}: {detail}",
                node.name, node.role, node.state
            )?;
            writeln!(f, "  console log: {}", node.console_log.display())?;
        }
        match &self.kept {
            Some(dir) => write!(
                f,
                "the cluster is left running (--keep-failed); `testbed down` removes it; state in {}",
                dir.display()
            ),
            None => write!(
                f,
                "the cluster was taken down (use --keep-failed to inspect it)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, state: NodeState, message: Option<&str>) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            role: "compute".into(),
            state,
            addresses: vec![],
            pid: None,
            uptime_ms: None,
            message: message.map(str::to_owned),
            snapshot: None,
            warning: None,
            console_log: format!("/state/nodes/{name}/console.log").into(),
        }
    }

    #[test]
    fn every_node_that_was_not_ready_is_named_with_its_reason() {
        let report = NotReady {
            cluster: "slurm".into(),
            nodes: vec![
                node(
                    "compute1",
                    NodeState::Failed,
                    Some("node compute1: unit slurmd.service failed"),
                ),
                node("compute2", NodeState::Stopped, None),
                node("compute3", NodeState::Booting, None),
            ],
            kept: None,
        };
        assert_eq!(
            report.to_string(),
            "node compute1 (compute) failed: unit slurmd.service failed\n\
             \x20 console log: /state/nodes/compute1/console.log\n\
             node compute2 (compute) stopped: no details\n\
             \x20 console log: /state/nodes/compute2/console.log\n\
             node compute3 (compute) was still booting when up gave up\n\
             the cluster was taken down (use --keep-failed to inspect it)"
        );
        let err = crate::Error::NotReady(report);
        assert!(!err.is_usage());
        assert!(
            err.to_string()
                .starts_with("cluster slurm did not come up:\nnode compute1 (compute) failed:"),
            "{err}"
        );
    }

    #[test]
    fn a_kept_cluster_says_where_its_state_is() {
        let report = NotReady {
            cluster: "c".into(),
            nodes: vec![node("a", NodeState::Failed, Some("boot timed out"))],
            kept: Some("/run/testbed/c-1234".into()),
        };
        assert_eq!(
            report.to_string(),
            "node a (compute) failed: boot timed out\n\
             \x20 console log: /state/nodes/a/console.log\n\
             the cluster is left running (--keep-failed); `testbed down` removes it; state in /run/testbed/c-1234"
        );
    }
}
