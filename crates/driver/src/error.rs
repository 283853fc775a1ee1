//! The driver's errors (script errors are [`crate::ScriptError`]s, kept in
//! the report).

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::cluster::ClusterError;

#[derive(Debug, Error)]
pub enum DriverError {
    /// The cluster could not be asked for its status at start.
    #[error("cannot read the cluster's status: {0}")]
    Cluster(#[from] ClusterError),
    /// A setting (environment variable, option) is invalid.
    #[error("{0}")]
    Config(String),
    #[error("cannot {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}
