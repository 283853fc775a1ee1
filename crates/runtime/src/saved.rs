//! Snapshots of whole clusters (`docs/snapshots.md`): every node's machine
//! (RAM, devices and so its writable layer, which is RAM), the cluster's
//! spec (its secrets and keys: the guests hold them) and the switch's
//! faults, kept in the store under `.clusters/<cluster>/<name>/`.
//!
//! A folder is written under `.clusters/<cluster>/.tmp/` and renamed into
//! place, so a snapshot is complete or absent; one saved again under the
//! same name replaces the old one only once the new one is complete.
//! Folders are mode 0700 and files 0600: they hold the cluster's secrets.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use testbed_api::SnapshotInfo;
use thiserror::Error;

use crate::spec::ClusterSpec;

/// Bumped whenever what a cluster snapshot holds changes.
pub const FORMAT: u32 = 1;

pub const META_FILE: &str = "meta.json";
pub const SPEC_FILE: &str = "spec.json";
/// The cluster's SSH client key (its public half is in every node).
pub const CLIENT_KEY_FILE: &str = "id_ed25519";
/// Saved machines: `machines/<node>`.
pub const MACHINES_DIR: &str = "machines";

#[derive(Debug, Error)]
pub enum SavedError {
    #[error("{0:?} is not a snapshot name: use letters, digits, '-', '_' and '.', at most 64, not starting with '.'")]
    Name(String),
    #[error("cluster {cluster} has no snapshot {name} (see `testbed snapshot ls`)")]
    Missing { cluster: String, name: String },
    #[error("snapshot {name} of cluster {cluster} is unreadable: {message}")]
    Corrupt {
        cluster: String,
        name: String,
        message: String,
    },
    #[error("cannot {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SavedError {
    let path = path.to_path_buf();
    move |source| SavedError::Io { what, path, source }
}

/// The folder of `cluster`'s snapshots in the store at `store`.
pub fn cluster_root(store: &Path, cluster: &str) -> PathBuf {
    store.join(".clusters").join(cluster)
}

/// Refuses names that are not plain file names.
pub fn check_name(name: &str) -> Result<(), SavedError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SavedError::Name(name.to_owned()))
    }
}

/// A complete cluster snapshot on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub dir: PathBuf,
    pub info: SnapshotInfo,
}

impl Saved {
    /// The snapshot `name` of `cluster` under `root` ([`cluster_root`]).
    pub fn open(root: &Path, cluster: &str, name: &str) -> Result<Saved, SavedError> {
        check_name(name)?;
        let dir = root.join(name);
        let meta = dir.join(META_FILE);
        let bytes = match fs::read(&meta) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SavedError::Missing {
                    cluster: cluster.to_owned(),
                    name: name.to_owned(),
                })
            }
            Err(e) => return Err(io("read", &meta)(e)),
        };
        let corrupt = |message: String| SavedError::Corrupt {
            cluster: cluster.to_owned(),
            name: name.to_owned(),
            message,
        };
        let stored: Stored = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(format!("{}: {e}", meta.display())))?;
        if stored.format != FORMAT {
            return Err(corrupt(format!(
                "it has format {}, this testbed reads format {FORMAT}",
                stored.format
            )));
        }
        let mut info = stored.info;
        info.path = dir.clone();
        // Node names become file names under machines/: nothing else.
        if let Some(bad) = info
            .nodes
            .iter()
            .find(|n| n.name.is_empty() || n.name.starts_with('.') || n.name.contains('/'))
        {
            return Err(corrupt(format!(
                "{}: {:?} is not a node name",
                meta.display(),
                bad.name
            )));
        }
        let saved = Saved { dir, info };
        for node in saved.info.nodes.iter().filter(|n| n.running) {
            let file = saved.machine(&node.name);
            match fs::metadata(&file) {
                Ok(m) if m.len() == node.bytes => {}
                Ok(m) => {
                    return Err(corrupt(format!(
                        "{} has {} bytes, {} were saved",
                        file.display(),
                        m.len(),
                        node.bytes
                    )))
                }
                Err(e) => return Err(corrupt(format!("{}: {e}", file.display()))),
            }
        }
        Ok(saved)
    }

    /// Every complete snapshot under `root`, by name; unreadable ones are
    /// left out.
    pub fn list(root: &Path, cluster: &str) -> Vec<Saved> {
        let Ok(entries) = fs::read_dir(root) else {
            return Vec::new();
        };
        let mut all: Vec<Saved> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .filter_map(|name| Saved::open(root, cluster, &name).ok())
            .collect();
        all.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        all
    }

    pub fn machine(&self, node: &str) -> PathBuf {
        self.dir.join(MACHINES_DIR).join(node)
    }

    pub fn spec(&self) -> Result<ClusterSpec, SavedError> {
        ClusterSpec::read(&self.dir.join(SPEC_FILE)).map_err(|e| SavedError::Corrupt {
            cluster: self.info.cluster.clone(),
            name: self.info.name.clone(),
            message: e.to_string(),
        })
    }

    pub fn client_key(&self) -> Result<String, SavedError> {
        let path = self.dir.join(CLIENT_KEY_FILE);
        fs::read_to_string(&path).map_err(io("read", &path))
    }

    /// Removes the snapshot: moved aside first, so no one finds it half
    /// removed.
    pub fn remove(self) -> Result<(), SavedError> {
        let root = self.dir.parent().unwrap_or(Path::new("/")).to_path_buf();
        let aside = tmp_dir(&root)?.join(format!("{}.removed", self.info.name));
        fs::rename(&self.dir, &aside).map_err(io("move aside", &self.dir))?;
        fs::remove_dir_all(&aside).map_err(io("remove", &aside))
    }
}

/// What `meta.json` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    format: u32,
    #[serde(flatten)]
    info: SnapshotInfo,
}

/// `<root>/.tmp`, made private.
fn tmp_dir(root: &Path) -> Result<PathBuf, SavedError> {
    let tmp = root.join(".tmp");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&tmp)
        .map_err(io("create", &tmp))?;
    Ok(tmp)
}

/// A snapshot being written: a private folder under `<root>/.tmp`,
/// removed if it is dropped before [`Writing::commit`].
#[derive(Debug)]
pub struct Writing {
    pub dir: PathBuf,
    root: PathBuf,
    done: bool,
}

impl Writing {
    pub fn begin(root: &Path, name: &str) -> Result<Writing, SavedError> {
        check_name(name)?;
        let tmp = tmp_dir(root)?;
        // Only this user may enter: the spec and the machines hold secrets.
        let _ = fs::set_permissions(root, fs::Permissions::from_mode(0o700));
        let dir = tmp.join(format!("{name}.{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let machines = dir.join(MACHINES_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&machines)
            .map_err(io("create", &machines))?;
        Ok(Writing {
            dir,
            root: root.to_path_buf(),
            done: false,
        })
    }

    pub fn machines(&self) -> PathBuf {
        self.dir.join(MACHINES_DIR)
    }

    /// Writes the spec, the client key and the description, and puts the
    /// snapshot in place of any of the same name.
    pub fn commit(
        mut self,
        spec: &ClusterSpec,
        client_key: &str,
        info: &SnapshotInfo,
    ) -> Result<Saved, SavedError> {
        spec.write(&self.dir.join(SPEC_FILE))
            .map_err(|e| SavedError::Corrupt {
                cluster: info.cluster.clone(),
                name: info.name.clone(),
                message: e.to_string(),
            })?;
        let key = self.dir.join(CLIENT_KEY_FILE);
        crate::state::write_atomic(&key, client_key.as_bytes(), 0o600).map_err(|e| {
            SavedError::Corrupt {
                cluster: info.cluster.clone(),
                name: info.name.clone(),
                message: e.to_string(),
            }
        })?;
        let stored = Stored {
            format: FORMAT,
            info: info.clone(),
        };
        let meta = self.dir.join(META_FILE);
        let text = serde_json::to_vec_pretty(&stored).unwrap_or_default();
        crate::state::write_atomic(&meta, &text, 0o600).map_err(|e| SavedError::Corrupt {
            cluster: info.cluster.clone(),
            name: info.name.clone(),
            message: e.to_string(),
        })?;
        let target = self.root.join(&info.name);
        if target.exists() {
            let aside = self.root.join(".tmp").join(format!(
                "{}.replaced.{}",
                info.name,
                std::process::id()
            ));
            fs::rename(&target, &aside).map_err(io("move aside", &target))?;
            let _ = fs::remove_dir_all(&aside);
        }
        fs::rename(&self.dir, &target).map_err(io("rename into place", &self.dir))?;
        self.done = true;
        let mut info = info.clone();
        info.path = target.clone();
        Ok(Saved { dir: target, info })
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_name_that_is_a_path_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s1");
        std::fs::create_dir_all(dir.join(MACHINES_DIR)).unwrap();
        let meta = serde_json::json!({
            "format": FORMAT, "name": "s1", "cluster": "c", "composition": "/x",
            "backend": "qemu", "created_unix": 0, "took_ms": 0,
            "nodes": [{"name": "../../etc/passwd", "role": "r", "running": true, "bytes": 1}],
            "faults": {}
        });
        std::fs::write(dir.join(META_FILE), meta.to_string()).unwrap();
        let e = Saved::open(tmp.path(), "c", "s1").unwrap_err().to_string();
        assert!(e.contains("is not a node name"), "{e}");
    }

    #[test]
    fn names_are_plain_file_names() {
        for good in ["base", "after-crash.2", "A_1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "..", "x y", &"n".repeat(65)] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("is not a snapshot name"), "{bad}: {e}");
        }
    }
}
