//! A deterministic writer for the "newc" cpio format, the format the Linux
//! kernel unpacks an initramfs from.
//!
//! Written here rather than by calling `cpio(1)` so that the archive is a pure
//! function of its entries: entries are sorted by path, every entry is owned
//! by root, every mtime is one fixed value, inode numbers are assigned in
//! order, and device nodes (such as `/dev/console`) can be added without
//! privileges because they are only bytes in the archive.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// An error while assembling a cpio archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The path is empty, absolute, or has `.`/`..`/empty components.
    #[error("cpio entry {0:?}: the path must be relative and normalized")]
    BadPath(String),
    /// The same path was added twice.
    #[error("cpio entry {0:?} was added twice")]
    Duplicate(String),
    /// A path's parent exists but is not a directory.
    #[error("cpio entry {path:?}: its parent {parent:?} is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    /// The newc format stores mtimes in 32 bits.
    #[error("cpio mtime {0} does not fit the 32-bit field of the newc format")]
    MtimeOutOfRange(u64),
    /// The newc format stores sizes in 32 bits.
    #[error("cpio entry {0:?} is larger than the 4 GiB the newc format allows")]
    TooLarge(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDevice { mode: u32, major: u32, minor: u32 },
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// An in-memory cpio archive; see the module documentation.
#[derive(Debug, Clone)]
pub struct Cpio {
    mtime: u32,
    entries: BTreeMap<String, Entry>,
}

impl Cpio {
    /// An empty archive whose entries will all carry `mtime` (seconds since
    /// the epoch; use `SOURCE_DATE_EPOCH` or 0).
    pub fn new(mtime: u64) -> Result<Self, CpioError> {
        let mtime = u32::try_from(mtime).map_err(|_| CpioError::MtimeOutOfRange(mtime))?;
        Ok(Self {
            mtime,
            entries: BTreeMap::new(),
        })
    }

    /// Adds a directory. Adding a directory that already exists (for example
    /// one created implicitly as a parent) only updates its mode.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
        check_path(path)?;
        self.add_parents(path)?;
        match self.entries.get_mut(path) {
            Some(Entry::Dir { mode: m }) => {
                *m = mode & 0o7777;
                Ok(())
            }
            Some(_) => Err(CpioError::Duplicate(path.to_string())),
            None => {
                self.entries.insert(
                    path.to_string(),
                    Entry::Dir {
                        mode: mode & 0o7777,
                    },
                );
                Ok(())
            }
        }
    }

    /// Adds a regular file with permission bits `mode`.
    pub fn add_file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<(), CpioError> {
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooLarge(path.to_string()));
        }
        self.insert(
            path,
            Entry::File {
                mode: mode & 0o7777,
                data,
            },
        )
    }

    /// Adds a symbolic link pointing at `target`.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Adds a character device node.
    pub fn add_char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.insert(
            path,
            Entry::CharDevice {
                mode: mode & 0o7777,
                major,
                minor,
            },
        )
    }

    /// The paths in the archive, in archive order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<(), CpioError> {
        check_path(path)?;
        self.add_parents(path)?;
        if self.entries.contains_key(path) {
            return Err(CpioError::Duplicate(path.to_string()));
        }
        self.entries.insert(path.to_string(), entry);
        Ok(())
    }

    /// Creates missing parent directories (mode 0755): the kernel's unpacker
    /// does not create them, it fails on an entry whose parent is missing.
    fn add_parents(&mut self, path: &str) -> Result<(), CpioError> {
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            let parent = &path[..end + pos];
            match self.entries.get(parent) {
                Some(Entry::Dir { .. }) => {}
                Some(_) => {
                    return Err(CpioError::ParentNotDirectory {
                        path: path.to_string(),
                        parent: parent.to_string(),
                    })
                }
                None => {
                    self.entries
                        .insert(parent.to_string(), Entry::Dir { mode: 0o755 });
                }
            }
            end += pos + 1;
        }
        Ok(())
    }

    /// Writes the archive. Entries come in byte order of their paths, which
    /// puts every directory before its contents because a path sorts before
    /// any longer path it is a prefix of.
    pub fn write_to<W: Write>(&self, mut out: W) -> io::Result<()> {
        for (index, (path, entry)) in self.entries.iter().enumerate() {
            // Inode numbers only need to be unique (the kernel treats equal
            // numbers with nlink > 1 as hard links); number entries in order.
            let ino = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir { mode } => (S_IFDIR | mode, 2, &[], (0, 0)),
                Entry::File { mode, data } => (S_IFREG | mode, 1, data, (0, 0)),
                Entry::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0)),
                Entry::CharDevice { mode, major, minor } => {
                    (S_IFCHR | mode, 1, &[], (*major, *minor))
                }
            };
            write_header(
                &mut out,
                ino,
                mode,
                nlink,
                self.mtime,
                data.len(),
                rdev,
                path,
            )?;
            out.write_all(data)?;
            pad(&mut out, data.len())?;
        }
        write_header(&mut out, 0, 0, 1, 0, 0, (0, 0), "TRAILER!!!")
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_to(&mut buf);
        buf
    }
}

fn check_path(path: &str) -> Result<(), CpioError> {
    let ok = !path.is_empty()
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(CpioError::BadPath(path.to_string()))
    }
}

#[allow(clippy::too_many_arguments)]
fn write_header<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<()> {
    // Sizes were checked when the entry was added; saturate rather than wrap
    // so a bug could never produce a silently corrupt archive.
    let size = u32::try_from(size).unwrap_or(u32::MAX);
    let namesize = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
    // Fields: ino mode uid gid nlink mtime filesize devmajor devminor
    // rdevmajor rdevminor namesize check.
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{mtime:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, header.len() + name.len() + 1)
}

/// The newc format aligns every header and every file body to 4 bytes.
fn pad<W: Write>(out: &mut W, len: usize) -> io::Result<()> {
    let n = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..n])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One parsed newc entry: (name, mode, uid, gid, mtime, ino, rdev, data).
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Parsed {
        pub name: String,
        pub mode: u32,
        pub uid: u32,
        pub gid: u32,
        pub mtime: u32,
        pub ino: u32,
        pub rdev: (u32, u32),
        pub data: Vec<u8>,
    }

    /// A strict newc reader, independent of the writer, for tests.
    pub(crate) fn parse(mut buf: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut offset = 0usize;
        loop {
            assert_eq!(offset % 4, 0, "header not aligned");
            assert_eq!(&buf[..6], b"070701", "bad magic at {offset}");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&buf[6 + i * 8..14 + i * 8]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (ino, mode, uid, gid, mtime, size) =
                (field(0), field(1), field(2), field(3), field(5), field(6));
            let rdev = (field(9), field(10));
            let namesize = field(11) as usize;
            let name = std::str::from_utf8(&buf[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(buf[110 + namesize - 1], 0);
            let data_start = (110 + namesize).div_ceil(4) * 4;
            let data = buf[data_start..data_start + size as usize].to_vec();
            let next = (data_start + size as usize).div_ceil(4) * 4;
            offset += next;
            buf = &buf[next..];
            if name == "TRAILER!!!" {
                assert!(buf.is_empty(), "bytes after the trailer");
                return out;
            }
            out.push(Parsed {
                name,
                mode,
                uid,
                gid,
                mtime,
                ino,
                rdev,
                data,
            });
        }
    }

    fn sample() -> Cpio {
        let mut c = Cpio::new(1_700_000_000).unwrap();
        c.add_file("init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
        c.add_file(
            "lib/modules/6.1.0/kernel/fs/erofs/erofs.ko",
            0o644,
            vec![1, 2, 3],
        )
        .unwrap();
        c.add_symlink("bin/sh", "busybox").unwrap();
        c.add_file("bin/busybox", 0o755, vec![0x7f, b'E', b'L', b'F', 9])
            .unwrap();
        c.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        c.add_dir("proc", 0o555).unwrap();
        c
    }

    #[test]
    fn entries_are_sorted_parents_first_and_owned_by_root() {
        let entries = parse(&sample().to_bytes());
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1.0",
                "lib/modules/6.1.0/kernel",
                "lib/modules/6.1.0/kernel/fs",
                "lib/modules/6.1.0/kernel/fs/erofs",
                "lib/modules/6.1.0/kernel/fs/erofs/erofs.ko",
                "proc",
            ]
        );
        for (i, e) in entries.iter().enumerate() {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 1_700_000_000), "{}", e.name);
            assert_eq!(e.ino as usize, i + 1);
        }
        let by_name = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(by_name("init").mode, 0o100_755);
        assert_eq!(by_name("init").data, b"#!/bin/sh\n");
        assert_eq!(by_name("bin/sh").mode, 0o120_777);
        assert_eq!(by_name("bin/sh").data, b"busybox");
        assert_eq!(by_name("dev/console").mode, 0o020_600);
        assert_eq!(by_name("dev/console").rdev, (5, 1));
        assert_eq!(by_name("proc").mode, 0o040_555);
        assert_eq!(by_name("lib").mode, 0o040_755);
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let mut c = Cpio::new(1_700_000_000).unwrap();
        c.add_dir("proc", 0o555).unwrap();
        c.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        c.add_file("bin/busybox", 0o755, vec![0x7f, b'E', b'L', b'F', 9])
            .unwrap();
        c.add_symlink("bin/sh", "busybox").unwrap();
        c.add_file(
            "lib/modules/6.1.0/kernel/fs/erofs/erofs.ko",
            0o644,
            vec![1, 2, 3],
        )
        .unwrap();
        c.add_file("init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
        assert_eq!(c.to_bytes(), sample().to_bytes());
    }

    #[test]
    fn rejects_bad_paths_duplicates_and_files_as_parents() {
        let mut c = Cpio::new(0).unwrap();
        for bad in ["", "/init", "a//b", "a/./b", "../x", "a/"] {
            assert!(
                matches!(c.add_file(bad, 0o644, vec![]), Err(CpioError::BadPath(_))),
                "{bad:?}"
            );
        }
        c.add_file("a", 0o644, vec![]).unwrap();
        assert!(matches!(
            c.add_file("a", 0o644, vec![]),
            Err(CpioError::Duplicate(_))
        ));
        assert!(matches!(
            c.add_file("a/b", 0o644, vec![]),
            Err(CpioError::ParentNotDirectory { .. })
        ));
        assert!(matches!(
            Cpio::new(1 << 33),
            Err(CpioError::MtimeOutOfRange(_))
        ));
    }
}
