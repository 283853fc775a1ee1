//! File helpers shared by `put` and activation: guest paths under a root
//! prefix, owner lookup, and atomic writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum FsError {
    #[error("{path}: not an absolute path without `..`")]
    BadPath { path: String },
    #[error("{path}: {message}")]
    Owner { path: String, message: String },
    #[error("{path}: {}", describe(.source))]
    Io { path: String, source: io::Error },
}

impl FsError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        FsError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// An `io::Error` as a lowercase message without the `(os error N)` suffix,
/// to fit the project's message style.
pub fn describe(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Maps an absolute guest path to the host path under `root`. Rejects
/// relative paths and `..`, so that a request cannot escape the prefix
/// (the prefix is how tests run activation against a temporary directory).
pub fn under_root(root: &Path, guest: &str) -> Result<PathBuf, FsError> {
    let path = Path::new(guest);
    let bad = || FsError::BadPath {
        path: guest.to_owned(),
    };
    if !path.is_absolute() {
        return Err(bad());
    }
    let mut out = root.to_path_buf();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    Ok(out)
}

/// Resolves `user`, `user:group`, `:group` or numeric ids against the
/// `etc/passwd` and `etc/group` files under `root`. Names are looked up in
/// the files rather than through NSS because the images use plain files and
/// the root prefix must be honoured.
pub fn resolve_owner(root: &Path, owner: &str) -> Result<(u32, u32), String> {
    let (user, group) = match owner.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (owner, None),
    };
    let passwd = || {
        fs::read_to_string(root.join("etc/passwd"))
            .map_err(|e| format!("cannot read /etc/passwd: {}", describe(&e)))
    };
    let (uid, primary_gid) = if user.is_empty() {
        (0, 0)
    } else if let Ok(uid) = user.parse::<u32>() {
        (uid, uid)
    } else {
        lookup(&passwd()?, user)
            .and_then(|fields| Some((fields.first()?.parse().ok()?, fields.get(1)?.parse().ok()?)))
            .ok_or_else(|| format!("unknown user {user} in /etc/passwd"))?
    };
    let gid = match group {
        None | Some("") => primary_gid,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = fs::read_to_string(root.join("etc/group"))
                    .map_err(|e| format!("cannot read /etc/group: {}", describe(&e)))?;
                lookup(&groups, group)
                    .and_then(|fields| fields.first()?.parse().ok())
                    .ok_or_else(|| format!("unknown group {group} in /etc/group"))?
            }
        },
    };
    Ok((uid, gid))
}

/// The fields after the password field of the line for `name`: for
/// passwd `uid, gid, ...`; for group `gid, members`.
fn lookup<'a>(db: &'a str, name: &str) -> Option<Vec<&'a str>> {
    db.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then(|| fields.skip(1).collect())
    })
}

/// A file written under a temporary name beside its target and renamed
/// into place, so readers see the old contents or the new, never a part.
/// Dropping it without [`AtomicFile::commit`] removes the temporary file.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    pub fn create(target: &Path, create_dirs: bool) -> Result<AtomicFile, FsError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = target.parent().ok_or_else(|| FsError::BadPath {
            path: target.display().to_string(),
        })?;
        let name = target.file_name().ok_or_else(|| FsError::BadPath {
            path: target.display().to_string(),
        })?;
        if create_dirs {
            fs::create_dir_all(dir).map_err(|e| FsError::io(dir, e))?;
        }
        let temp = dir.join(format!(
            ".{}.testbed-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // Created private: the final mode (and owner) are applied before the
        // rename, so a secret is never readable by others, even briefly.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| FsError::io(target, e))?;
        Ok(AtomicFile {
            target: target.to_path_buf(),
            temp,
            file: Some(file),
        })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), FsError> {
        match &mut self.file {
            Some(file) => file
                .write_all(bytes)
                .map_err(|e| FsError::io(&self.target, e)),
            None => Ok(()),
        }
    }

    /// Applies mode and owner, syncs, and renames into place.
    pub fn commit(mut self, mode: u32, owner: Option<(u32, u32)>) -> Result<(), FsError> {
        let target = self.target.clone();
        let io = |e| FsError::io(&target, e);
        if let Some(file) = self.file.take() {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io)?;
            }
            // After chown, which clears set-id bits.
            file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
                .map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        match fs::rename(&self.temp, &self.target) {
            // The target is a mount point: a container engine bind-mounts
            // its own /etc/hostname, /etc/hosts and /etc/resolv.conf, which
            // can be rewritten but not replaced. Written in place then.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                let result = fs::copy(&self.temp, &self.target).and_then(|_| {
                    fs::set_permissions(&self.target, fs::Permissions::from_mode(mode & 0o7777))
                });
                let _ = fs::remove_file(&self.temp);
                result.map_err(io)
            }
            other => other.map_err(io),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Writes a whole file atomically; the owner is resolved under `root`.
pub fn write_file(
    root: &Path,
    guest_path: &str,
    contents: &[u8],
    owner: Option<&str>,
    mode: u32,
) -> Result<PathBuf, FsError> {
    let path = under_root(root, guest_path)?;
    let ids = owner
        .map(|spec| {
            resolve_owner(root, spec).map_err(|message| FsError::Owner {
                path: guest_path.to_owned(),
                message,
            })
        })
        .transpose()?;
    let mut file = AtomicFile::create(&path, true)?;
    file.write_all(contents)?;
    file.commit(mode, ids)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let root = Path::new("/tmp/r");
        assert_eq!(
            under_root(root, "/etc/hosts").unwrap(),
            Path::new("/tmp/r/etc/hosts")
        );
        assert!(under_root(root, "etc/hosts").is_err());
        assert!(under_root(root, "/etc/../../x").is_err());
    }

    #[test]
    fn owners_resolve_from_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nmunge:x:105:110::/nonexistent:/usr/sbin/nologin\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nmunge:x:110:\nadm:x:4:munge\n",
        )
        .unwrap();
        let root = dir.path();
        assert_eq!(resolve_owner(root, "munge:munge"), Ok((105, 110)));
        assert_eq!(resolve_owner(root, "munge"), Ok((105, 110)));
        assert_eq!(resolve_owner(root, "munge:adm"), Ok((105, 4)));
        assert_eq!(resolve_owner(root, "7:8"), Ok((7, 8)));
        assert_eq!(
            resolve_owner(root, "slurm:root"),
            Err("unknown user slurm in /etc/passwd".to_owned())
        );
        assert_eq!(
            resolve_owner(root, "root:wheel"),
            Err("unknown group wheel in /etc/group".to_owned())
        );
    }
}
