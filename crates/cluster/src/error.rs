//! What can go wrong while bringing a cluster up, typed so that the caller
//! can tell the user's mistakes (a bad composition, flags that do not go
//! together, a stale lock) from failures of the work itself.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use testbed_image::ImageError;
use testbed_model::{ConfineError, Diagnostics};
use testbed_runtime::api::ApiError;
use testbed_runtime::container::ContainerError;
use testbed_runtime::spec::SpecError;
use testbed_runtime::state::StateError;
use thiserror::Error;

use crate::summary::NotReady;

/// An error of this crate. [`Error::is_usage`] says whether it is the
/// user's input that is wrong (the CLI exits with 2) rather than the work
/// that failed (1).
#[derive(Debug, Error)]
pub enum Error {
    /// The composition is invalid (or cannot be read); every diagnostic
    /// has its location.
    #[error("{0}")]
    Composition(#[from] Diagnostics),
    /// Options that do not go together, or that do not fit the
    /// composition (a pinned role whose host is not among those given).
    #[error("{0}")]
    Usage(String),
    /// The image builder failed; [`crate::images::is_usage`] says which of
    /// its errors are the user's input.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A static file of a role cannot be read.
    #[error("role {role}: cannot read {}", .path.display())]
    ReadFile {
        role: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A static file of a role is outside the composition's folder (and
    /// every allowed path) when it is read, or is not a regular file.
    #[error("role {role}: a source file is refused")]
    Confined {
        role: String,
        #[source]
        source: ConfineError,
    },
    /// `$TESTBED_AGENT` is set but names no file.
    #[error(
        "TESTBED_AGENT is {}, which is not a file; point it at a testbed-agent binary (`cargo build --bins` in the workspace makes one)",
        .path.display()
    )]
    AgentNotAFile { path: PathBuf },
    /// No agent binary beside the executable.
    #[error(
        "the guest agent binary is missing: every image carries it, and it is looked for at {}; build it with `cargo build --bins` in the workspace (with the same profile as testbed, e.g. --release), or set TESTBED_AGENT to its path",
        .path.display()
    )]
    AgentMissing { path: PathBuf },
    /// The cluster runs with other nodes than the plan has.
    #[error(
        "cluster {cluster} is already running with nodes {}; run `testbed down` first to change it",
        .nodes.join(", ")
    )]
    AlreadyRunning { cluster: String, nodes: Vec<String> },
    /// No supervisor answers for the cluster.
    #[error("cluster {cluster} is not running (start it with `testbed up`)")]
    NotRunning { cluster: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The supervisor answered with an error.
    #[error("{0}")]
    Supervisor(String),
    /// The supervisor answered with something else than expected.
    #[error("unexpected reply from the supervisor: {0}")]
    UnexpectedReply(String),
    /// An operation on the host failed; `what` says which.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The supervisor process ended before opening its API socket.
    #[error("the supervisor exited at start ({status}):\n{log}")]
    SupervisorExited { status: ExitStatus, log: String },
    /// The supervisor ended after opening its API socket (its backend
    /// could not start): its own words, from its log.
    #[error("{reason}")]
    SupervisorFailed { reason: String },
    /// The supervisor process runs but never opened its API socket.
    #[error("the supervisor did not open its API socket within 30s; see {}", .log.display())]
    SupervisorSilent { log: PathBuf },
    /// A cluster snapshot cannot be used or listed.
    #[error(transparent)]
    Saved(#[from] testbed_runtime::saved::SavedError),
    /// Some nodes were not ready; every one is named with its reason.
    #[error("cluster {} did not come up:\n{}", .0.cluster, .0)]
    NotReady(NotReady),
}

impl Error {
    /// Whether the user's input is at fault (a bad composition, options
    /// that do not fit, an unknown package, a stale lock), not the work.
    pub fn is_usage(&self) -> bool {
        match self {
            Error::Composition(_) | Error::Usage(_) | Error::Confined { .. } => true,
            Error::Saved(e) => !matches!(e, testbed_runtime::saved::SavedError::Io { .. }),
            Error::Image(e) => crate::images::is_usage(e),
            _ => false,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
