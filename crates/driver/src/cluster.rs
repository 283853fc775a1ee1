//! The driver's view of a running cluster ([`Cluster`]) and its real
//! implementation over the supervisor's API ([`ApiCluster`]).
//!
//! The script engine only ever talks to a `dyn Cluster`, so it can be
//! tested against an in-memory fake; the CLI always hands it an
//! [`ApiCluster`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use testbed_api::state::StateDir;
use testbed_api::{
    ApiClient, ApiError, ClusterStatus, Fault, FaultEvent, LinkRule, PowerAction, Reply, Request,
    SnapshotInfo, WaitFor,
};
use testbed_proto::{ExecRequest, ExitStatus};
use thiserror::Error;

/// Why a request to the cluster failed.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The supervisor could not be reached or broke the protocol.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The supervisor answered with an error (an unknown node, a node that
    /// is not running, a failed unit, an agent error...).
    #[error("{message}")]
    Failed {
        message: String,
        node: Option<String>,
    },
    /// A reply that does not belong to the request.
    #[error("unexpected reply from the supervisor to {request}: {reply}")]
    Unexpected {
        request: &'static str,
        reply: String,
    },
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A running cluster, as the driver uses it. Every call blocks until the
/// cluster answered; implementations must be usable from several threads.
pub trait Cluster: Send + Sync {
    /// The cluster's name, accelerator and nodes with their states.
    fn status(&self) -> Result<ClusterStatus, ClusterError>;
    /// Runs a command to completion (the request carries its timeout).
    fn exec(&self, node: &str, request: ExecRequest) -> Result<CommandOutput, ClusterError>;
    /// Writes a file in the node (parent folders are created).
    fn put(&self, node: &str, path: &str, mode: u32, data: &[u8]) -> Result<(), ClusterError>;
    /// Reads a file from the node: its mode and contents.
    fn get(&self, node: &str, path: &str) -> Result<(u32, Vec<u8>), ClusterError>;
    /// Waits inside the node for a unit, a port or a file.
    fn wait(&self, node: &str, what: &WaitFor, timeout: Duration) -> Result<(), ClusterError>;
    /// Changes a node's power; `Start` and `Reboot` return while the node
    /// boots (watch [`Cluster::status`] for `ready`).
    fn power(&self, node: &str, action: PowerAction) -> Result<(), ClusterError>;
    /// Applies a fault in the switch; a link change returns the link's new
    /// rule.
    fn fault(&self, fault: &Fault) -> Result<Option<LinkRule>, ClusterError>;
    /// The switch's history of fault changes.
    fn history(&self) -> Result<Vec<FaultEvent>, ClusterError>;
    /// Saves the whole cluster as its snapshot `name` (`restore`: brings
    /// it back to that snapshot); returns once every node is ready.
    fn snapshot(&self, name: &str, restore: bool) -> Result<SnapshotInfo, ClusterError> {
        let _ = (name, restore);
        Err(ClusterError::Failed {
            message: "this cluster cannot save or restore snapshots".to_owned(),
            node: None,
        })
    }
    /// How long a node may take to boot and activate, as `up` set it for
    /// this cluster (it already depends on the accelerator).
    fn boot_timeout(&self) -> Duration;
    /// The services a node's activation starts, in order.
    fn services(&self, node: &str) -> Vec<String>;
    /// The node's serial console log on the host.
    fn console_log(&self, node: &str) -> Option<PathBuf> {
        let status = self.status().ok()?;
        status
            .nodes
            .into_iter()
            .find(|n| n.name == node)
            .map(|n| n.console_log)
    }
}

/// Extra time the supervisor may take beyond a request's own timeout
/// before the driver stops waiting for its reply.
const REPLY_MARGIN: Duration = Duration::from_secs(60);

/// A reply to a short request (status, faults, files).
const SHORT_REPLY: Duration = Duration::from_secs(120);

/// A cluster reached through its supervisor's API socket, one connection
/// per call.
#[derive(Debug)]
pub struct ApiCluster {
    socket: PathBuf,
    boot_timeout: Duration,
    services: BTreeMap<String, Vec<String>>,
}

/// Used when the caller does not say: the longest boot `up` ever allows
/// by default (TCG), plus activation.
const FALLBACK_BOOT_TIMEOUT: Duration = Duration::from_secs(1200);

impl ApiCluster {
    /// The cluster whose state directory is `dir`. Nothing is read here:
    /// a cluster that is not running says so at the first call.
    ///
    /// The boot timeout and the nodes' services are not in the API; the
    /// caller that brought the cluster up knows them (they are in the
    /// cluster's spec, which holds secrets and is none of the driver's
    /// business) and passes them with [`ApiCluster::with_boot_timeout`] and
    /// [`ApiCluster::with_services`]. Without them the boot timeout is the
    /// longest `up` allows by default and no node has services.
    pub fn open(dir: &StateDir) -> ApiCluster {
        ApiCluster {
            socket: dir.api_socket(),
            boot_timeout: FALLBACK_BOOT_TIMEOUT,
            services: BTreeMap::new(),
        }
    }

    /// How long a node may take to boot and activate, as `up` set it for
    /// this cluster (it already depends on the accelerator).
    pub fn with_boot_timeout(mut self, timeout: Duration) -> ApiCluster {
        self.boot_timeout = timeout;
        self
    }

    /// The services each node's activation starts, in order, by node name.
    pub fn with_services(mut self, services: BTreeMap<String, Vec<String>>) -> ApiCluster {
        self.services = services;
        self
    }

    fn client(&self, read_timeout: Duration) -> Result<ApiClient, ClusterError> {
        let client = ApiClient::connect(&self.socket)?;
        client.set_read_timeout(Some(read_timeout))?;
        Ok(client)
    }

    /// One request, one reply; an `error` reply becomes an error.
    fn call(&self, request: &Request, read_timeout: Duration) -> Result<Reply, ClusterError> {
        match self.client(read_timeout)?.call(request)? {
            Reply::Error { message, node, .. } => Err(ClusterError::Failed { message, node }),
            other => Ok(other),
        }
    }
}

fn unexpected(request: &'static str, reply: &Reply) -> ClusterError {
    ClusterError::Unexpected {
        request,
        reply: format!("{reply:?}"),
    }
}

impl Cluster for ApiCluster {
    fn status(&self) -> Result<ClusterStatus, ClusterError> {
        match self.call(&Request::Status, SHORT_REPLY)? {
            Reply::Status(status) => Ok(status),
            other => Err(unexpected("status", &other)),
        }
    }

    fn exec(&self, node: &str, request: ExecRequest) -> Result<CommandOutput, ClusterError> {
        let limit = request
            .timeout_ms
            .map_or(Duration::from_secs(24 * 3600), Duration::from_millis)
            + REPLY_MARGIN;
        let mut client = self.client(limit)?;
        client.send(&Request::Exec {
            node: node.to_owned(),
            exec: request,
        })?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match client.recv()? {
                Reply::Stdout { data } => stdout.extend_from_slice(&data),
                Reply::Stderr { data } => stderr.extend_from_slice(&data),
                Reply::Exited { status } => {
                    return Ok(CommandOutput {
                        status,
                        stdout,
                        stderr,
                    })
                }
                Reply::Error { message, node, .. } => {
                    return Err(ClusterError::Failed { message, node })
                }
                other => return Err(unexpected("exec", &other)),
            }
        }
    }

    fn put(&self, node: &str, path: &str, mode: u32, data: &[u8]) -> Result<(), ClusterError> {
        let request = Request::Put {
            node: node.to_owned(),
            path: path.to_owned(),
            mode,
            owner: None,
            data: data.to_vec(),
        };
        match self.call(&request, SHORT_REPLY)? {
            Reply::Ok => Ok(()),
            other => Err(unexpected("put", &other)),
        }
    }

    fn get(&self, node: &str, path: &str) -> Result<(u32, Vec<u8>), ClusterError> {
        let request = Request::Get {
            node: node.to_owned(),
            path: path.to_owned(),
        };
        match self.call(&request, SHORT_REPLY)? {
            Reply::File { mode, data } => Ok((mode, data)),
            other => Err(unexpected("get", &other)),
        }
    }

    fn wait(&self, node: &str, what: &WaitFor, timeout: Duration) -> Result<(), ClusterError> {
        let request = Request::Wait {
            node: node.to_owned(),
            what: what.clone(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        match self.call(&request, timeout + REPLY_MARGIN)? {
            Reply::Ok => Ok(()),
            other => Err(unexpected("wait", &other)),
        }
    }

    fn power(&self, node: &str, action: PowerAction) -> Result<(), ClusterError> {
        // A clean shutdown or reboot may wait for the guest up to the boot
        // timeout before the supervisor quits QEMU.
        let limit = self.boot_timeout + REPLY_MARGIN;
        let request = Request::Power {
            node: node.to_owned(),
            action,
        };
        match self.call(&request, limit)? {
            Reply::Ok => Ok(()),
            other => Err(unexpected("power", &other)),
        }
    }

    fn fault(&self, fault: &Fault) -> Result<Option<LinkRule>, ClusterError> {
        match self.call(&Request::Fault(fault.clone()), SHORT_REPLY)? {
            Reply::Ok => Ok(None),
            Reply::Link { rule } => Ok(Some(rule)),
            other => Err(unexpected("fault", &other)),
        }
    }

    fn history(&self) -> Result<Vec<FaultEvent>, ClusterError> {
        match self.call(&Request::History, SHORT_REPLY)? {
            Reply::History { events } => Ok(events),
            other => Err(unexpected("history", &other)),
        }
    }

    fn snapshot(&self, name: &str, restore: bool) -> Result<SnapshotInfo, ClusterError> {
        let name = name.to_owned();
        let request = if restore {
            Request::Restore { name }
        } else {
            Request::Snapshot { name }
        };
        // A restore resumes every node, each bounded by the boot timeout.
        match self.call(&request, self.boot_timeout + REPLY_MARGIN)? {
            Reply::Snapshot(info) => Ok(info),
            other => Err(unexpected("snapshot", &other)),
        }
    }

    fn boot_timeout(&self) -> Duration {
        self.boot_timeout
    }

    fn services(&self, node: &str) -> Vec<String> {
        self.services.get(node).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_that_is_not_running_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ApiCluster::open(&StateDir::at(dir.path()));
        assert_eq!(cluster.boot_timeout(), FALLBACK_BOOT_TIMEOUT);
        assert!(cluster.services("n1").is_empty());
        let err = cluster.status().unwrap_err();
        assert!(err.to_string().contains("not running"), "{err}");
        assert!(format!("{cluster:?}").contains("api.sock"));
    }

    #[test]
    fn the_caller_sets_the_boot_timeout_and_the_services() {
        let cluster = ApiCluster::open(&StateDir::at("/nonexistent"))
            .with_boot_timeout(Duration::from_secs(180))
            .with_services(BTreeMap::from([(
                "n1".to_owned(),
                vec!["munge".to_owned(), "slurmd".to_owned()],
            )]));
        assert_eq!(cluster.boot_timeout(), Duration::from_secs(180));
        assert_eq!(cluster.services("n1"), ["munge", "slurmd"]);
        assert!(cluster.services("n2").is_empty());
    }
}
