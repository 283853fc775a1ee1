//! Where a composition may read files from.
//!
//! A composition names host files: `source` files are baked into images
//! (built with root's powers in the guest's file system) and `template`
//! files are rendered into guests. A composition cloned from someone else's
//! repository must not be able to copy the builder's secrets that way
//! (`source = "../../etc/shadow"`, an absolute path, or a symbolic link in
//! its folder that points elsewhere). So every such file must lie, **after
//! symbolic links are resolved**, in the composition's folder or under one
//! of the paths its `[cluster] allow_paths_outside` lists.
//!
//! The check is made twice: by validation (which reports it at the
//! offending value) and again right before a file is read, on the path the
//! file system resolves then, so that a link swapped in between is still
//! refused. [`Confinement::open`] also checks, on Linux, which file the
//! opened descriptor really is.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

use crate::validate::io_reason;

/// The folders a composition's `source` and `template` files may come
/// from, all in canonical form (absolute, symbolic links resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    root: PathBuf,
    allowed: Vec<PathBuf>,
}

/// Why a file was not read.
#[derive(Debug, Error)]
pub enum ConfineError {
    /// The file resolves to a path outside the composition's folder and
    /// outside every path of `allow_paths_outside`.
    #[error(
        "{} resolves to {}, outside the composition's folder {} (refused: a composition may read files only from its folder and the paths listed in [cluster] allow_paths_outside)",
        .path.display(),
        .resolved.display(),
        .root.display()
    )]
    Outside {
        /// The path as given.
        path: PathBuf,
        /// What it resolves to.
        resolved: PathBuf,
        /// The composition's folder (canonical).
        root: PathBuf,
    },
    /// The path is not a regular file.
    #[error("{} is not a regular file", .path.display())]
    NotAFile {
        /// The path as given.
        path: PathBuf,
    },
    /// The file system said no.
    #[error("cannot read {}: {}", .path.display(), io_reason(.source))]
    Io {
        /// The path as given.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

impl ConfineError {
    /// Whether the path was refused by the rule (rather than not found or
    /// unreadable).
    pub fn is_refused(&self) -> bool {
        matches!(self, ConfineError::Outside { .. })
    }
}

impl Confinement {
    /// From paths already in canonical form. A path that is not canonical
    /// only ever allows less (canonical paths do not start with it).
    pub(crate) fn from_canonical(root: PathBuf, allowed: Vec<PathBuf>) -> Confinement {
        Confinement { root, allowed }
    }

    /// The composition's folder, canonical.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The canonical paths of `[cluster] allow_paths_outside`.
    pub fn allowed(&self) -> &[PathBuf] {
        &self.allowed
    }

    /// Whether a canonical path is in the composition's folder or under an
    /// allowed path.
    pub fn contains(&self, canonical: &Path) -> bool {
        canonical.starts_with(&self.root) || self.is_allowed_outside(canonical)
    }

    /// Whether a canonical path is under one of the allowed paths.
    pub fn is_allowed_outside(&self, canonical: &Path) -> bool {
        self.allowed.iter().any(|a| canonical.starts_with(a))
    }

    /// Resolves `path` (as the composition stores it: the composition's
    /// folder joined with what the file says) with the file system, and
    /// returns its canonical form if it is allowed.
    pub fn resolve(&self, path: &Path) -> Result<PathBuf, ConfineError> {
        let resolved = std::fs::canonicalize(path).map_err(|source| ConfineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if self.contains(&resolved) {
            Ok(resolved)
        } else {
            Err(ConfineError::Outside {
                path: path.to_path_buf(),
                resolved,
                root: self.root.clone(),
            })
        }
    }

    /// Opens `path` for reading if it is an allowed regular file: resolves
    /// it right now, opens the resolved path, and (on Linux) checks which
    /// file the descriptor really is, so that a symbolic link swapped at any
    /// moment before is refused.
    pub fn open(&self, path: &Path) -> Result<File, ConfineError> {
        let io = |source| ConfineError::Io {
            path: path.to_path_buf(),
            source,
        };
        let resolved = self.resolve(path)?;
        // Not a FIFO or a device: opening one could block or read forever.
        if !std::fs::metadata(&resolved).map_err(io)?.is_file() {
            return Err(ConfineError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let file = File::open(&resolved).map_err(io)?;
        if let Some(opened) = opened_path(&file) {
            if !self.contains(&opened) {
                return Err(ConfineError::Outside {
                    path: path.to_path_buf(),
                    resolved: opened,
                    root: self.root.clone(),
                });
            }
        }
        if !file.metadata().map_err(io)?.is_file() {
            return Err(ConfineError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        Ok(file)
    }

    /// Reads an allowed file whole (see [`Confinement::open`]).
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, ConfineError> {
        let mut bytes = Vec::new();
        self.open(path)?
            .read_to_end(&mut bytes)
            .map_err(|source| ConfineError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(bytes)
    }

    /// Reads an allowed text file whole (see [`Confinement::open`]).
    pub fn read_to_string(&self, path: &Path) -> Result<String, ConfineError> {
        String::from_utf8(self.read(path)?).map_err(|e| ConfineError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, e.utf8_error()),
        })
    }
}

/// The path of the file a descriptor is open on, as the kernel knows it.
#[cfg(target_os = "linux")]
fn opened_path(file: &File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    // Without /proc, the check made on the resolved path stands alone.
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

#[cfg(not(target_os = "linux"))]
fn opened_path(_file: &File) -> Option<PathBuf> {
    None
}

/// `path` with `.` and `..` applied without asking the file system (so
/// without following symbolic links); used to tell a `..` escape from one
/// through a link.
pub(crate) fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                let popped =
                    matches!(out.components().next_back(), Some(Component::Normal(_))) && out.pop();
                // `/..` is `/`; a relative path keeps its leading `..`.
                if !popped && !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_applies_dots_only() {
        assert_eq!(lexical(Path::new("/a/b/../c/./d")), Path::new("/a/c/d"));
        assert_eq!(lexical(Path::new("/a/../../etc")), Path::new("/etc"));
        assert_eq!(lexical(Path::new("a/../../b")), Path::new("../b"));
    }

    #[test]
    fn a_prefix_of_a_name_is_not_a_parent() {
        let c = Confinement::from_canonical("/srv/comp".into(), vec!["/opt/certs".into()]);
        assert!(c.contains(Path::new("/srv/comp/x")));
        assert!(!c.contains(Path::new("/srv/comp2/x")));
        assert!(c.contains(Path::new("/opt/certs/ca.pem")));
        assert!(!c.contains(Path::new("/opt/certs-old/ca.pem")));
        assert!(!c.is_allowed_outside(Path::new("/srv/comp/x")));
    }
}
