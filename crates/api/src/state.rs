//! Where a running cluster's files are: its state directory.
//!
//! Everything a running cluster owns on the host lives under one directory:
//! the supervisor's API socket, pid and log, the cluster spec (with its
//! secrets, so the directory is private to the user), the switch's sockets
//! and one folder per node (QEMU's sockets, console log, pid). This module
//! is only the layout, which every client needs to find a cluster; what
//! `down` does with a directory whose supervisor is gone is
//! `testbed_runtime::state::teardown`.
//!
//! The directory's name is the cluster's name plus a hash of the
//! composition's absolute path, so two clusters with the same name in two
//! folders never collide, and every verb run on the same composition finds
//! the same directory. Unix socket paths are limited to 107 bytes, which is
//! why the names are short and the root is the user's runtime directory.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Socket paths must fit in `sockaddr_un` (108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "the state directory {} is too long for unix sockets ({len} bytes with the longest socket name, limit {MAX_SOCKET_PATH}); set TESTBED_STATE_DIR to a shorter folder",
        .path.display()
    )]
    TooLong { path: PathBuf, len: usize },
    #[error(
        "refusing the state directory {}: {reason}; remove it, or set TESTBED_STATE_DIR to a folder of your own that only you may write",
        .path.display()
    )]
    Unsafe { path: PathBuf, reason: String },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { what, path, source }
}

/// Where state directories are created: `$TESTBED_STATE_DIR`, else
/// `$XDG_RUNTIME_DIR/testbed`, else `/tmp/testbed-UID`.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("TESTBED_STATE_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("testbed");
    }
    PathBuf::from(format!(
        "/tmp/testbed-{}",
        rustix::process::getuid().as_raw()
    ))
}

/// Refuses a directory that someone else could control: a symbolic link,
/// not a directory, owned by another user, or writable by others. A
/// directory that does not exist passes (it is about to be created).
fn check_private(dir: &Path) -> Result<(), StateError> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspect", dir)(e)),
    };
    let refuse = |reason: String| StateError::Unsafe {
        path: dir.to_path_buf(),
        reason,
    };
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link".to_owned()));
    }
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".to_owned()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(format!(
            "it belongs to uid {}, not to you (uid {me})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "others may write in it (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// FNV-1a, 64 bits: a stable hash that needs no dependency. Only used to
/// tell folders apart, not for security.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The longest file name used inside a state directory (a switch socket of
/// a long node and network name is checked separately by the caller).
const LONGEST_NAME: &str = "nodes/xxxxxxxxxxxxxxxx/console.sock";

/// One cluster's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    path: PathBuf,
}

/// The name that tells the cluster `name` defined by `composition` (any
/// path to the file; it is made absolute) apart from every other: the name
/// plus a hash of the composition's absolute path. Its state directory has
/// this name, and so has its prompt history file.
pub fn cluster_key(name: &str, composition: &Path) -> String {
    let absolute = std::path::absolute(composition).unwrap_or_else(|_| composition.into());
    let hash = fnv1a(absolute.as_os_str().as_encoded_bytes());
    format!("{name}-{:08x}", hash as u32)
}

impl StateDir {
    /// The directory of the cluster `name` defined by `composition`, under
    /// [`root`], named [`cluster_key`].
    pub fn for_cluster(name: &str, composition: &Path) -> StateDir {
        StateDir {
            path: root().join(cluster_key(name, composition)),
        }
    }

    /// A state directory at an explicit path (the supervisor gets its
    /// directory this way).
    pub fn at(path: impl Into<PathBuf>) -> StateDir {
        StateDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Eight hex digits that tell this directory (its full path) apart from
    /// others: a short name for what the cluster owns outside it, such as
    /// its container engine image tags.
    pub fn short_id(&self) -> String {
        format!(
            "{:08x}",
            fnv1a(self.path.as_os_str().as_encoded_bytes()) as u32
        )
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Refuses this directory, or the folder it is in, if someone else
    /// could control it (see `create`); a directory that does not exist
    /// yet passes. Every verb checks before it uses what is inside (the
    /// API socket it would send commands and files to, the SSH config it
    /// would run, the spec it would read).
    pub fn check(&self) -> Result<(), StateError> {
        let root = self.path.parent().filter(|p| !p.as_os_str().is_empty());
        for dir in root.into_iter().chain([self.path.as_path()]) {
            check_private(dir)?;
        }
        Ok(())
    }

    /// Creates the directory (mode 0700, parents included) and its `nodes`
    /// and `net` folders.
    pub fn create(&self) -> Result<(), StateError> {
        let len = self.path.join(LONGEST_NAME).as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(StateError::TooLong {
                path: self.path.clone(),
                len,
            });
        }
        // The root (`/tmp/testbed-UID` has a name anyone can guess) and the
        // directory itself are used only if they are the user's own:
        // checked before and after creating, so a folder or a symbolic link
        // someone else put there first is refused, never reused.
        self.check()?;
        let root = self.path.parent().filter(|p| !p.as_os_str().is_empty());
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        builder
            .create(&self.path)
            .map_err(io_err("create", &self.path))?;
        for dir in root.into_iter().chain([self.path.as_path()]) {
            check_private(dir)?;
        }
        for dir in [self.path.clone(), self.nodes_dir(), self.net_dir()] {
            builder.create(&dir).map_err(io_err("create", &dir))?;
            // A pre-existing directory keeps its mode; the spec holds
            // secrets, so make sure.
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("set permissions on", &dir))?;
        }
        Ok(())
    }

    /// The cluster spec the supervisor runs (contains secrets; mode 0600).
    pub fn spec(&self) -> PathBuf {
        self.path.join("spec.json")
    }
    /// The supervisor's JSON API.
    pub fn api_socket(&self) -> PathBuf {
        self.path.join("api.sock")
    }
    pub fn supervisor_pid(&self) -> PathBuf {
        self.path.join("supervisor.pid")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.path.join("supervisor.log")
    }
    /// The switch's and the NICs' datagram sockets.
    pub fn net_dir(&self) -> PathBuf {
        self.path.join("net")
    }
    pub fn nodes_dir(&self) -> PathBuf {
        self.path.join("nodes")
    }
    /// SSH material: the cluster's client key, `known_hosts`, `ssh_config`.
    pub fn ssh_dir(&self) -> PathBuf {
        self.path.join("ssh")
    }
    pub fn node(&self, name: &str) -> NodeDir {
        NodeDir {
            path: self.nodes_dir().join(name),
        }
    }
}

/// A node's folder inside the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDir {
    pub path: PathBuf,
}

impl NodeDir {
    pub fn agent_socket(&self) -> PathBuf {
        self.path.join("agent.sock")
    }
    pub fn console_socket(&self) -> PathBuf {
        self.path.join("console.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.path.join("qmp.sock")
    }
    /// QEMU's own stdout/stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.path.join("qemu.log")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.path.join("qemu.pid")
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, with
/// `mode`, so readers never see half a file.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), StateError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    file.write_all(contents).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename into", path))
}

/// Reads a pid file; `None` when it is missing or unreadable.
pub fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_composition_same_dir_and_folders_are_told_apart() {
        let a = StateDir::for_cluster("slurm", Path::new("/a/testbed.toml"));
        let b = StateDir::for_cluster("slurm", Path::new("/a/testbed.toml"));
        let c = StateDir::for_cluster("slurm", Path::new("/b/testbed.toml"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let name = a.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("slurm-") && name.len() == "slurm-".len() + 8,
            "{name}"
        );
        assert_eq!(name, cluster_key("slurm", Path::new("/a/testbed.toml")));
    }

    #[test]
    fn too_long_a_root_is_refused_with_advice() {
        let dir = StateDir::at(PathBuf::from("/").join("x".repeat(100)));
        let err = dir.create().unwrap_err().to_string();
        assert!(err.contains("TESTBED_STATE_DIR"), "{err}");
    }

    #[test]
    fn a_root_or_directory_someone_else_could_control_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let refused = |root: &Path| {
            let dir = StateDir::at(root.join("c-00000000"));
            let err = dir.create().unwrap_err();
            assert!(matches!(err, StateError::Unsafe { .. }), "{err}");
            assert!(!dir.path().join("nodes").exists());
            err.to_string()
        };
        // A symbolic link planted where the root would be.
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(refused(&link).contains("symbolic link"));
        // A root others may write in.
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(refused(&open).contains("others may write in it (mode 777)"));
        // A root that belongs to someone else: as root, one handed over to
        // nobody; as a user, one of root's.
        let theirs = tmp.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        fs::set_permissions(&theirs, fs::Permissions::from_mode(0o755)).unwrap();
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            assert!(refused(&theirs).contains("belongs to uid 65534"));
        } else {
            assert!(refused(Path::new("/")).contains("belongs to uid 0"));
        }
        // The cluster's own directory as a symbolic link in a good root.
        let good = tmp.path().join("good");
        fs::create_dir(&good).unwrap();
        std::os::unix::fs::symlink(&real, good.join("c-11111111")).unwrap();
        let err = StateDir::at(good.join("c-11111111")).create().unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // A root of one's own is used, and the directory is made private.
        let dir = StateDir::at(good.join("c-22222222"));
        fs::create_dir(dir.path()).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        dir.create().unwrap();
        let mode = fs::metadata(dir.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(dir.nodes_dir().is_dir() && dir.net_dir().is_dir());
    }

    #[test]
    fn pid_files_are_written_whole_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.pid");
        assert_eq!(read_pid(&path), None);
        write_atomic(&path, b"1234\n", 0o600).unwrap();
        assert_eq!(read_pid(&path), Some(1234));
        assert!(!path.with_extension("tmp").exists());
    }
}
