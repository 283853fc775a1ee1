//! The rootfs as a gzip-compressed tar archive, for container backends
//! (`podman import`, `docker import`) and for anyone who wants to look
//! inside an image.
//!
//! Reproducible by construction: entries in sorted order (depth first, names
//! compared as bytes), mtimes clamped to `SOURCE_DATE_EPOCH`, numeric owners
//! only (no user or group names, which would come from the host's databases),
//! no access or change times, GNU headers. Hard links are stored once, as a
//! file at the first path in that order and links at the others; symlinks,
//! FIFOs and device nodes are kept; sockets are skipped because tar cannot
//! represent them. Extended attributes are not stored. The gzip stream is
//! as reproducible as the tar: a fixed level, no file name, mtime 0, and
//! the compressor's version is locked with the builder's.
//!
//! Compressed because an entry is kept for every image and role snapshot
//! of a store: a base Debian tree of 481 MiB is a 185 MiB archive (gzip
//! level 1, a few seconds), and both engines import gzip directly.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

/// An error while writing the rootfs archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file of the rootfs could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// The archive could not be written.
    #[error("cannot write archive {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// A path is too long or otherwise not storable.
    #[error("cannot store {path} in the archive: {source}")]
    Entry { path: PathBuf, source: io::Error },
}

/// Counts of what went into an archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Entries written (directories, files, links, devices, FIFOs).
    pub entries: u64,
    /// Sockets skipped.
    pub skipped_sockets: u64,
}

/// The archive's file name in a store entry.
pub const ARCHIVE: &str = "rootfs.tar.gz";

/// The gzip level: the fastest, which already takes the tar to 40 %.
const GZIP_LEVEL: u32 = 1;

/// Writes the gzip-compressed tar archive of `rootfs` to `dest`.
pub fn write_rootfs_tar(
    rootfs: &Path,
    dest: &Path,
    epoch: u64,
) -> Result<ArchiveStats, ArchiveError> {
    let write_err = |source| ArchiveError::Write {
        path: dest.to_path_buf(),
        source,
    };
    let file = File::create(dest).map_err(write_err)?;
    let mut out = flate2::GzBuilder::new()
        .mtime(0)
        .write(BufWriter::new(file), flate2::Compression::new(GZIP_LEVEL));
    let stats = write_tar(rootfs, &mut out, epoch).map_err(|e| match e {
        ArchiveError::Write { source, .. } => write_err(source),
        other => other,
    })?;
    let mut out = out.finish().map_err(write_err)?;
    out.flush().map_err(write_err)?;
    out.into_inner()
        .map_err(|e| write_err(e.into_error()))?
        .sync_all()
        .map_err(write_err)?;
    Ok(stats)
}

/// Writes the tar archive of `rootfs` to `out`. Entry paths are relative
/// (`etc/hostname`), without a leading `./`; the root directory itself is
/// not an entry.
pub fn write_tar<W: Write>(
    rootfs: &Path,
    out: W,
    epoch: u64,
) -> Result<ArchiveStats, ArchiveError> {
    let mut walker = Walker {
        root: rootfs,
        builder: tar::Builder::new(out),
        epoch,
        links: HashMap::new(),
        stats: ArchiveStats::default(),
    };
    walker.dir(Path::new(""))?;
    walker
        .builder
        .into_inner()
        .map_err(|source| ArchiveError::Write {
            path: PathBuf::from("<archive>"),
            source,
        })?;
    Ok(walker.stats)
}

struct Walker<'a, W: Write> {
    root: &'a Path,
    builder: tar::Builder<W>,
    epoch: u64,
    /// (device, inode) of multiply-linked files to the path stored first.
    links: HashMap<(u64, u64), PathBuf>,
    stats: ArchiveStats,
}

impl<W: Write> Walker<'_, W> {
    /// Archives the contents of directory `rel` (relative to the root).
    fn dir(&mut self, rel: &Path) -> Result<(), ArchiveError> {
        let host = self.root.join(rel);
        let read_err = |source| ArchiveError::Read {
            path: host.clone(),
            source,
        };
        let mut names: Vec<_> = fs::read_dir(&host)
            .map_err(read_err)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        // Byte order, not locale order: the archive must not depend on the
        // machine that wrote it.
        names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        for name in names {
            let rel = rel.join(&name);
            let host = self.root.join(&rel);
            let meta = fs::symlink_metadata(&host).map_err(|source| ArchiveError::Read {
                path: host.clone(),
                source,
            })?;
            if self.entry(&rel, &host, &meta)? && meta.is_dir() {
                self.dir(&rel)?;
            }
        }
        Ok(())
    }

    /// Archives one entry; returns false if it was skipped.
    fn entry(
        &mut self,
        rel: &Path,
        host: &Path,
        meta: &fs::Metadata,
    ) -> Result<bool, ArchiveError> {
        let ft = meta.file_type();
        let mut header = Header::new_gnu();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(u64::from(meta.uid()));
        header.set_gid(u64::from(meta.gid()));
        header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0).min(self.epoch));
        header.set_size(0);
        let entry_err = |source| ArchiveError::Entry {
            path: host.to_path_buf(),
            source,
        };
        if ft.is_socket() {
            self.stats.skipped_sockets += 1;
            return Ok(false);
        }
        if ft.is_dir() {
            header.set_entry_type(EntryType::Directory);
            self.builder
                .append_data(&mut header, rel, io::empty())
                .map_err(entry_err)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(host).map_err(|source| ArchiveError::Read {
                path: host.to_path_buf(),
                source,
            })?;
            header.set_entry_type(EntryType::Symlink);
            self.builder
                .append_link(&mut header, rel, &target)
                .map_err(entry_err)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                    header.set_entry_type(EntryType::Link);
                    let first = first.clone();
                    self.builder
                        .append_link(&mut header, rel, &first)
                        .map_err(entry_err)?;
                    self.stats.entries += 1;
                    return Ok(true);
                }
                self.links
                    .insert((meta.dev(), meta.ino()), rel.to_path_buf());
            }
            let file = File::open(host).map_err(|source| ArchiveError::Read {
                path: host.to_path_buf(),
                source,
            })?;
            header.set_entry_type(EntryType::Regular);
            header.set_size(meta.len());
            // A file that changes size while it is read makes the tar crate
            // fail rather than write a corrupt entry.
            self.builder
                .append_data(&mut header, rel, file)
                .map_err(entry_err)?;
        } else {
            let kind = if ft.is_char_device() {
                EntryType::Char
            } else if ft.is_block_device() {
                EntryType::Block
            } else {
                EntryType::Fifo
            };
            header.set_entry_type(kind);
            if kind != EntryType::Fifo {
                let (major, minor) = dev_major_minor(meta.rdev());
                header.set_device_major(major).map_err(entry_err)?;
                header.set_device_minor(minor).map_err(entry_err)?;
            }
            self.builder
                .append_data(&mut header, rel, io::empty())
                .map_err(entry_err)?;
        }
        self.stats.entries += 1;
        Ok(true)
    }
}

/// Splits a Linux `dev_t` the way glibc's `major()`/`minor()` do.
fn dev_major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, SystemTime};

    const EPOCH: u64 = 1_700_000_000;
    const LONG: &str = "a-directory-name-that-is-long-enough/to-push-the-path-past-the-hundred-bytes/of-an-old-tar-header";

    fn set_mtime(path: &Path, secs: u64) {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        File::options()
            .read(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    /// Writes a small tree; `reverse` writes it in the opposite order, with
    /// different (but clamped) mtimes.
    fn tree(dir: &Path, reverse: bool) {
        let mut steps: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| {
                fs::create_dir_all(dir.join("etc")).unwrap();
                fs::write(dir.join("etc/hostname"), "node\n").unwrap();
                fs::set_permissions(dir.join("etc/hostname"), fs::Permissions::from_mode(0o600))
                    .unwrap();
            }),
            Box::new(|| {
                fs::create_dir_all(dir.join("usr/bin")).unwrap();
                fs::write(dir.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
                fs::set_permissions(dir.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755))
                    .unwrap();
            }),
            Box::new(|| {
                fs::create_dir_all(dir.join(LONG)).unwrap();
                fs::write(dir.join(LONG).join("file"), "deep\n").unwrap();
            }),
            Box::new(|| {
                fs::create_dir_all(dir.join("links")).unwrap();
                std::os::unix::fs::symlink(format!("../{LONG}/file"), dir.join("links/long"))
                    .unwrap();
                std::os::unix::fs::symlink("../usr/bin", dir.join("bin")).unwrap();
            }),
            Box::new(|| {
                fs::create_dir_all(dir.join("run")).unwrap();
                let ok = std::process::Command::new("mkfifo")
                    .arg(dir.join("run/fifo"))
                    .status()
                    .unwrap()
                    .success();
                assert!(ok);
                let _socket =
                    std::os::unix::net::UnixListener::bind(dir.join("run/socket")).unwrap();
            }),
        ];
        if reverse {
            steps.reverse();
        }
        for step in steps {
            step();
        }
        // Hard links: `usr/bin/tool` and `usr/bin/tool2` are one file.
        fs::hard_link(dir.join("usr/bin/tool"), dir.join("usr/bin/tool2")).unwrap();
        set_mtime(
            &dir.join("etc/hostname"),
            if reverse { EPOCH + 99 } else { EPOCH + 5 },
        );
        set_mtime(&dir.join("usr/bin/tool"), 1_000);
    }

    fn archive(dir: &Path) -> Vec<u8> {
        let mut buf = Vec::new();
        write_tar(dir, &mut buf, EPOCH).unwrap();
        buf
    }

    #[test]
    fn archives_of_the_same_tree_are_identical() {
        let tmp = tempfile::tempdir().unwrap();
        tree(&tmp.path().join("one"), false);
        tree(&tmp.path().join("two"), true);
        let one = archive(&tmp.path().join("one"));
        assert_eq!(one, archive(&tmp.path().join("one")), "two runs differ");
        // Directory mtimes differ between the trees but are all clamped.
        assert_eq!(
            one,
            archive(&tmp.path().join("two")),
            "trees written in another order differ"
        );
    }

    #[test]
    fn the_compressed_archive_is_reproducible_and_holds_exactly_the_tar() {
        use std::io::Read;
        let tmp = tempfile::tempdir().unwrap();
        tree(&tmp.path().join("one"), false);
        tree(&tmp.path().join("two"), true);
        let (a, b) = (tmp.path().join("a.tar.gz"), tmp.path().join("b.tar.gz"));
        write_rootfs_tar(&tmp.path().join("one"), &a, EPOCH).unwrap();
        write_rootfs_tar(&tmp.path().join("two"), &b, EPOCH).unwrap();
        let gz = fs::read(&a).unwrap();
        assert_eq!(gz, fs::read(&b).unwrap(), "the gzip streams differ");
        // gzip magic, deflate, no flags (no file name), mtime 0.
        assert_eq!(gz[..8], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(tar, archive(&tmp.path().join("one")));
    }

    #[test]
    fn entries_keep_types_modes_owners_and_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        tree(&root, false);
        // Only root can give files away; CI runs as root.
        let as_root = fs::metadata(&root).unwrap().uid() == 0;
        if as_root {
            std::os::unix::fs::chown(root.join("etc/hostname"), Some(101), Some(4242)).unwrap();
        }
        let bytes = archive(&root);
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for entry in ar.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let link = entry
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            assert!(h.mtime().unwrap() <= EPOCH, "{path}");
            assert_eq!(
                h.username().unwrap(),
                Some(""),
                "{path}: names come from the host"
            );
            seen.push((
                path,
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                link,
                h.mtime().unwrap(),
            ));
        }
        let find = |p: &str| {
            seen.iter()
                .find(|e| e.0 == p)
                .unwrap_or_else(|| panic!("{p} not in {seen:#?}"))
                .clone()
        };
        let paths: Vec<&str> = seen.iter().map(|e| e.0.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted, "entries must be in sorted order");
        assert!(!paths.contains(&"run/socket"));

        let hostname = find("etc/hostname");
        assert_eq!(
            (hostname.1, hostname.2, hostname.6),
            (EntryType::Regular, 0o600, EPOCH)
        );
        if as_root {
            assert_eq!((hostname.3, hostname.4), (101, 4242));
        }
        let tool = find("usr/bin/tool");
        assert_eq!(
            (tool.1, tool.2, tool.6),
            (EntryType::Regular, 0o4755, 1_000)
        );
        let tool2 = find("usr/bin/tool2");
        assert_eq!(
            (tool2.1, tool2.5.as_deref()),
            (EntryType::Link, Some("usr/bin/tool"))
        );
        assert_eq!(find("bin").5.as_deref(), Some("../usr/bin"));
        assert_eq!(find("links/long").5, Some(format!("../{LONG}/file")));
        assert_eq!(find(&format!("{LONG}/file")).1, EntryType::Regular);
        assert_eq!(find("run/fifo").1, EntryType::Fifo);
        assert_eq!(find("etc").1, EntryType::Directory);
    }

    #[test]
    fn device_nodes_keep_their_numbers() {
        assert_eq!(dev_major_minor(0x0501), (5, 1));
        assert_eq!(dev_major_minor(0x0103), (1, 3));
        // Large numbers use the high bits (e.g. major 259, minor 300).
        let dev = ((259u64 & 0xfff) << 8) | (300 & 0xff) | ((300 & !0xff) << 12);
        assert_eq!(dev_major_minor(dev), (259, 300));
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        fs::create_dir(&dir).unwrap();
        let made = std::process::Command::new("mknod")
            .arg(dir.join("null"))
            .args(["c", "1", "3"])
            .status();
        if !made.map(|s| s.success()).unwrap_or(false) {
            // Without CAP_MKNOD (not root) the numbers are covered above.
            return;
        }
        let bytes = archive(tmp.path());
        let mut ar = tar::Archive::new(&bytes[..]);
        let null = ar
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path().unwrap() == Path::new("dev/null"))
            .unwrap();
        assert_eq!(null.header().entry_type(), EntryType::Char);
        assert_eq!(null.header().device_major().unwrap(), Some(1));
        assert_eq!(null.header().device_minor().unwrap(), Some(3));
    }
}
