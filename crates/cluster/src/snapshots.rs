//! `testbed snapshot`: snapshots of a whole cluster (`docs/snapshots.md`).
//! Saving and restoring ask the running cluster's supervisor; listing and
//! removing read the store, with or without a running cluster.

use std::time::Duration;

use testbed_runtime::api::{Reply, Request, SnapshotInfo};
use testbed_runtime::saved::{self, Saved};
use testbed_runtime::state::StateDir;

use crate::{connect, reply_error, Error};

/// The folder of `cluster`'s snapshots in the default store.
pub fn snapshot_root(cluster: &str) -> Result<std::path::PathBuf, Error> {
    let store = testbed_image::Store::open_default()?;
    Ok(saved::cluster_root(store.root(), cluster))
}

/// Saves the running cluster as its snapshot `name` (replacing one of that
/// name).
pub fn save(cluster: &str, dir: &StateDir, name: &str) -> Result<SnapshotInfo, Error> {
    saved::check_name(name)?;
    ask(
        cluster,
        dir,
        &Request::Snapshot {
            name: name.to_owned(),
        },
    )
}

/// Brings every node of the running cluster back to its snapshot `name`.
pub fn restore(cluster: &str, dir: &StateDir, name: &str) -> Result<SnapshotInfo, Error> {
    // A name that is not there is the user's mistake, said before asking.
    Saved::open(&snapshot_root(cluster)?, cluster, name)?;
    ask(
        cluster,
        dir,
        &Request::Restore {
            name: name.to_owned(),
        },
    )
}

fn ask(cluster: &str, dir: &StateDir, request: &Request) -> Result<SnapshotInfo, Error> {
    let mut client = connect(cluster, dir)?;
    // The supervisor bounds the work (its boot timeout); a reply that
    // never comes is still bounded here.
    client.set_read_timeout(Some(Duration::from_secs(3600)))?;
    match client.call(request)? {
        Reply::Snapshot(info) => Ok(info),
        other => Err(reply_error(other)),
    }
}

/// Every snapshot of `cluster`, by name.
pub fn list(cluster: &str) -> Result<Vec<SnapshotInfo>, Error> {
    let root = snapshot_root(cluster)?;
    Ok(Saved::list(&root, cluster)
        .into_iter()
        .map(|s| s.info)
        .collect())
}

/// Removes the snapshot `name` of `cluster`.
pub fn remove(cluster: &str, name: &str) -> Result<(), Error> {
    let root = snapshot_root(cluster)?;
    match Saved::open(&root, cluster, name) {
        Ok(snapshot) => Ok(snapshot.remove()?),
        // An unreadable one can still be removed.
        Err(saved::SavedError::Corrupt { .. }) => {
            let dir = root.join(name);
            std::fs::remove_dir_all(&dir)
                .map_err(Error::io(format!("cannot remove {}", dir.display())))
        }
        Err(e) => Err(e.into()),
    }
}
