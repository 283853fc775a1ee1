//! The read-only root filesystem image: `mkfs.erofs` over the rootfs
//! directory, with the flags that make it bit-for-bit reproducible.
//!
//! With erofs-utils 1.5, two things vary between runs of the same tree: the
//! filesystem UUID (random unless `-U` is given) and the timestamps (the
//! superblock's build time is "now", and inodes whose mtime differs from it
//! are stored in the larger extended format). `-T EPOCH` fixes the build time
//! and gives every inode that mtime, so neither the clock nor the rootfs's
//! mtimes reach the image. mkfs.erofs sorts directory entries itself (erofs
//! looks names up by binary search) and finds hard links by inode, so neither
//! the order in which the directory was written nor the host's inode numbers
//! show either; the tests check both.
//!
//! Owners and modes are kept as they are in the rootfs (no `--all-root`):
//! Debian packages own files as other users (e.g. `/var/mail` as group
//! `mail`). Extended attributes such as `security.capability` are kept too.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The UUID every image gets unless told otherwise. A constant keeps images
/// comparable; nothing identifies a node by its root filesystem's UUID (the
/// stage-1 finds the root by device, see `docs/boot.md`).
pub const DEFAULT_UUID: &str = "7e57bed0-0000-4000-8000-000000000001";

/// An error while building the erofs image.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    /// `mkfs.erofs` is not installed.
    #[error("mkfs.erofs not found: install the Debian package erofs-utils")]
    ToolMissing,
    /// `mkfs.erofs` could not be started.
    #[error("cannot run mkfs.erofs: {0}")]
    Spawn(io::Error),
    /// `mkfs.erofs` failed.
    #[error("mkfs.erofs failed on {rootfs} ({status}): {stderr}")]
    Failed {
        rootfs: PathBuf,
        status: String,
        stderr: String,
    },
    /// The UUID is not in the 8-4-4-4-12 hex form mkfs.erofs expects.
    #[error("erofs uuid {0:?} is not of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")]
    BadUuid(String),
    /// The previous output could not be removed.
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// Compression of file data in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErofsCompression {
    /// No compression: nothing to decompress in the guest; the image is as
    /// large as the tree.
    None,
    /// LZ4 in physical clusters of up to 64 KiB (`-zlz4 -C65536`), the
    /// default: a base Debian system of 472 MiB becomes 256 MiB in about
    /// 2 s, faster than the uncompressed image is written; LZ4 decompresses
    /// at memory speed, so a node boots as fast (`docs/boot.md`). The disk
    /// a test suite or a developer's store needs is what this saves.
    #[default]
    Lz4,
    /// LZ4HC at its default level: roughly half the size, about 20× the
    /// build time (seconds for a base Debian system). The Debian cloud
    /// kernel's erofs reads it (`CONFIG_EROFS_FS_ZIP`).
    Lz4hc,
}

impl fmt::Display for ErofsCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Lz4 => "lz4",
            Self::Lz4hc => "lz4hc",
        })
    }
}

/// How to build the erofs image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErofsOptions {
    /// The timestamp of the image and of every inode: `SOURCE_DATE_EPOCH`.
    pub epoch: u64,
    /// The filesystem UUID.
    pub uuid: String,
    /// Compression of file data.
    pub compression: ErofsCompression,
}

impl Default for ErofsOptions {
    fn default() -> Self {
        Self {
            epoch: 0,
            uuid: DEFAULT_UUID.to_string(),
            compression: ErofsCompression::default(),
        }
    }
}

/// The `mkfs.erofs` arguments for `options`, before the output and source.
pub fn mkfs_args(options: &ErofsOptions) -> Result<Vec<String>, ErofsError> {
    if !is_uuid(&options.uuid) {
        return Err(ErofsError::BadUuid(options.uuid.clone()));
    }
    let mut args = vec![
        "--quiet".to_string(),
        format!("-T{}", options.epoch),
        format!("-U{}", options.uuid),
    ];
    match options.compression {
        ErofsCompression::None => {}
        ErofsCompression::Lz4 => args.extend(["-zlz4".to_string(), "-C65536".to_string()]),
        ErofsCompression::Lz4hc => args.push("-zlz4hc".to_string()),
    }
    Ok(args)
}

/// Builds the erofs image of `rootfs` at `dest` (replacing any file there).
pub fn build_erofs(rootfs: &Path, dest: &Path, options: &ErofsOptions) -> Result<(), ErofsError> {
    let args = mkfs_args(options)?;
    match std::fs::remove_file(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ErofsError::Remove {
                path: dest.to_path_buf(),
                source,
            })
        }
    }
    let output = Command::new("mkfs.erofs")
        .args(&args)
        .arg(dest)
        .arg(rootfs)
        // -T wins over SOURCE_DATE_EPOCH; remove it anyway so the host's
        // environment cannot change the image.
        .env_remove("SOURCE_DATE_EPOCH")
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ErofsError::ToolMissing
            } else {
                ErofsError::Spawn(e)
            }
        })?;
    if !output.status.success() {
        // Do not leave a partial image behind for a caller to trust.
        let _ = std::fs::remove_file(dest);
        return Err(ErofsError::Failed {
            rootfs: rootfs.to_path_buf(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn arguments() {
        assert_eq!(
            mkfs_args(&ErofsOptions {
                epoch: 1_700_000_000,
                ..ErofsOptions::default()
            })
            .unwrap(),
            [
                "--quiet",
                "-T1700000000",
                "-U7e57bed0-0000-4000-8000-000000000001",
                "-zlz4",
                "-C65536"
            ]
        );
        let plain = ErofsOptions {
            compression: ErofsCompression::None,
            ..ErofsOptions::default()
        };
        assert_eq!(mkfs_args(&plain).unwrap().len(), 3);
        let lz = ErofsOptions {
            compression: ErofsCompression::Lz4hc,
            ..ErofsOptions::default()
        };
        assert_eq!(
            mkfs_args(&lz).unwrap().last().map(String::as_str),
            Some("-zlz4hc")
        );
        let bad = ErofsOptions {
            uuid: "not-a-uuid".into(),
            ..ErofsOptions::default()
        };
        assert_eq!(
            mkfs_args(&bad).unwrap_err().to_string(),
            "erofs uuid \"not-a-uuid\" is not of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
        );
    }

    /// Writes the same small tree in the given order of file names, with
    /// mtimes that depend on the order: the image must not.
    fn tree(dir: &Path, names: &[&str]) {
        fs::create_dir_all(dir.join("etc/sub")).unwrap();
        for (i, name) in names.iter().enumerate() {
            let path = dir.join("etc").join(name);
            fs::write(&path, format!("content of {name}\n").repeat(300)).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(1_000_000 + i as u64);
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        fs::hard_link(dir.join("etc").join(names[0]), dir.join("etc/sub/link")).unwrap();
        std::os::unix::fs::symlink("../etc/a", dir.join("etc/sub/sym")).unwrap();
    }

    #[test]
    fn same_tree_written_in_different_orders_gives_identical_images() {
        let tmp = tempfile::tempdir().unwrap();
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        let mut reversed = names;
        reversed.reverse();
        tree(&tmp.path().join("one"), &names);
        tree(&tmp.path().join("two"), &reversed);
        // The hard link points at the first name written; make both trees
        // have the same link.
        fs::remove_file(tmp.path().join("two/etc/sub/link")).unwrap();
        fs::hard_link(
            tmp.path().join("two/etc/a"),
            tmp.path().join("two/etc/sub/link"),
        )
        .unwrap();
        let opts = ErofsOptions {
            epoch: 1_700_000_000,
            ..ErofsOptions::default()
        };
        for compression in [
            ErofsCompression::None,
            ErofsCompression::Lz4,
            ErofsCompression::Lz4hc,
        ] {
            let opts = ErofsOptions {
                compression,
                ..opts.clone()
            };
            let (a, b) = (tmp.path().join("one.erofs"), tmp.path().join("two.erofs"));
            build_erofs(&tmp.path().join("one"), &a, &opts).unwrap();
            build_erofs(&tmp.path().join("two"), &b, &opts).unwrap();
            let bytes = fs::read(&a).unwrap();
            assert_eq!(
                bytes,
                fs::read(&b).unwrap(),
                "images differ ({compression})"
            );
            // The erofs superblock sits at 1024; its magic and our UUID.
            assert_eq!(bytes[1024..1028], 0xE0F5_E1E2u32.to_le_bytes());
            let uuid = DEFAULT_UUID.replace('-', "");
            let uuid: Vec<u8> = (0..16)
                .map(|i| u8::from_str_radix(&uuid[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            assert!(
                bytes[1024..1024 + 128].windows(16).any(|w| w == uuid),
                "uuid not in the superblock"
            );
            build_erofs(&tmp.path().join("one"), &a, &opts).unwrap();
            assert_eq!(
                fs::read(&a).unwrap(),
                bytes,
                "rebuilding in place differs ({compression})"
            );
        }
    }

    #[test]
    fn failure_names_the_rootfs_and_leaves_no_image() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out.erofs");
        let missing = tmp.path().join("no-such-dir");
        let err = build_erofs(&missing, &dest, &ErofsOptions::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("mkfs.erofs failed on {}", missing.display())),
            "{err}"
        );
        assert!(!dest.exists());
    }
}
