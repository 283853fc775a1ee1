//! The content-addressed store of built images.
//!
//! Layout under the store root:
//!
//! ```text
//! <key>/            one finished image: kernel, initramfs, rootfs.erofs,
//!                   rootfs.tar.gz, rootfs.files, manifest.json
//! .tmp/<name>-<pid>/ builds in progress; renamed to <key>/ when complete
//! .refs/<hash>.json  which lock file used which keys, for `ls` and `gc`
//! .packages/<sha256>.deb  the package cache: every .deb a build fetched,
//!                   by digest (docs/images.md, "Where packages come from")
//! ```
//!
//! Invariants: an entry directory exists only once it is complete (it is
//! renamed into place atomically from `.tmp`), so its presence alone is a
//! cache hit; a `.tmp` directory whose owning process is gone is garbage and
//! is removed by the next build; keys never contain role names; a file in
//! `.packages` has exactly the digest of its name (it is checked before it
//! is renamed in, and again whenever it is used).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ImageError, IoContext, Result};
use crate::manifest::{Manifest, MANIFEST};
use crate::progress::{Event, Progress};
use crate::rootfs::hex;

/// How the store's folders may be shared (docs/rootless.md, "A store
/// several users share").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    /// Written by its owner only (this user or root).
    Private,
    /// Group-writable with the set-group-id bit: the members of its group
    /// build into it, whoever owns it.
    Group,
}

/// Whether `meta` is a folder shared with its group on purpose: writable
/// by the group and set-group-id (what `install -d -m 2775 -g GROUP`
/// makes), so that what members create there belongs to the group too.
fn group_shared(meta: &fs::Metadata) -> bool {
    meta.mode() & 0o2020 == 0o2020
}

/// Refuses a folder of the store that someone else could control (see
/// [`Store::open`]); one that does not exist passes (it is about to be
/// created, and is checked again then). `sharing` says whether the store
/// is a group's: then its folders may belong to any member and be
/// group-writable, but must stay set-group-id.
fn check_folder(dir: &Path, sharing: Sharing) -> Result<()> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at("cannot inspect", dir),
    };
    let refuse = |reason: String| ImageError::UnsafeStore {
        path: dir.to_path_buf(),
        reason,
    };
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link".to_owned()));
    }
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".to_owned()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(refuse(format!("anyone may write in it (mode {mode:o})")));
    }
    let me = rustix::process::geteuid().as_raw();
    match sharing {
        Sharing::Private => {
            if meta.uid() != me && meta.uid() != 0 {
                return Err(refuse(format!(
                    "it belongs to uid {}, neither you (uid {me}) nor root",
                    meta.uid()
                )));
            }
            if mode & 0o020 != 0 {
                return Err(refuse(format!(
                    "its group may write in it (mode {mode:o}) but it is not set-group-id, as a store shared with a group is (docs/rootless.md)"
                )));
            }
        }
        Sharing::Group => {
            if mode & 0o020 != 0 && !group_shared(&meta) {
                return Err(refuse(format!(
                    "its group may write in it (mode {mode:o}) but it is not set-group-id, as the folders of a store shared with a group are"
                )));
            }
        }
    }
    Ok(())
}

/// Creates the store folder `dir` if missing (mode 0755, or 2775 in a
/// store shared with a group, whatever the umask) and checks it.
fn ensure_folder(dir: &Path, sharing: Sharing) -> Result<()> {
    check_folder(dir, sharing)?;
    let mode = match sharing {
        Sharing::Private => 0o755,
        Sharing::Group => 0o2775,
    };
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                .at("cannot set the mode of", dir)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).at("cannot create", dir),
    }
    check_folder(dir, sharing)
}

/// Whether this process may create and remove files in `dir`.
fn writable(dir: &Path) -> bool {
    rustix::fs::access(
        dir,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    )
    .is_ok()
}

/// The environment variable that overrides the store location.
pub const STORE_ENV: &str = "TESTBED_STORE";

const TMP: &str = ".tmp";
const REFS: &str = ".refs";
const PACKAGES: &str = ".packages";
/// Role snapshots (`testbed_runtime::snapshot`): `<key>/meta.json` names
/// the image entry each was booted from.
pub const SNAPSHOTS: &str = ".snapshots";

/// `gc` keeps cached packages touched more recently than this.
const RECENT_SECS: i64 = 3600;

/// A store on disk.
#[derive(Debug, Clone)]
pub struct Store {
    /// Where this process writes: builds, role snapshots, `.refs`, the
    /// package cache.
    root: PathBuf,
    /// How the root's folders are shared.
    sharing: Sharing,
    /// A store this user may not write, whose entries are used as if they
    /// were in `root` (docs/rootless.md, "A store several users share").
    shared: Option<PathBuf>,
}

/// One entry, as `store ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The key (directory name).
    pub key: String,
    /// Its directory.
    pub path: PathBuf,
    /// Total size of its files, in bytes.
    pub size: u64,
    /// The lock files that used it at their last build, with the roles.
    pub users: Vec<(PathBuf, Vec<String>)>,
}

/// What `gc` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Keys removed.
    pub removed: Vec<String>,
    /// Bytes freed.
    pub freed: u64,
    /// Keys kept because a lock file still uses them.
    pub kept: Vec<String>,
    /// Role snapshots removed: their image entry is gone, or they are
    /// unreadable.
    pub snapshots_removed: Vec<String>,
    /// Cached packages removed (no known lock names them).
    pub packages_removed: usize,
    /// Cached packages kept.
    pub packages_kept: usize,
    /// Why cached packages were all kept, when gc could not tell which
    /// are needed (a registered lock file it cannot read).
    pub packages_note: Option<String>,
}

/// The package cache, as `store ls` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackageCacheInfo {
    /// Its directory.
    pub path: PathBuf,
    /// How many `.deb` files.
    pub count: usize,
    /// Their total size in bytes.
    pub size: u64,
}

/// One registered lock file and the keys its roles were built into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Ref {
    lock: PathBuf,
    /// role → key
    keys: BTreeMap<String, String>,
}

impl Store {
    /// The default location: `$TESTBED_STORE`, else
    /// `$XDG_CACHE_HOME/testbed/store`, else `~/.cache/testbed/store`.
    pub fn default_root() -> Result<PathBuf> {
        if let Some(p) = std::env::var_os(STORE_ENV).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        Store::own_root()
    }

    /// The user's own store: `$XDG_CACHE_HOME/testbed/store`, else
    /// `~/.cache/testbed/store` (where a user who may not write
    /// `$TESTBED_STORE` builds what it lacks).
    pub fn own_root() -> Result<PathBuf> {
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p).join("testbed/store"));
        }
        match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
            Some(home) => Ok(PathBuf::from(home).join(".cache/testbed/store")),
            None => Err(ImageError::Io {
                action: "cannot find the store: neither TESTBED_STORE, XDG_CACHE_HOME nor HOME is set for",
                path: PathBuf::from("~"),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
        }
    }

    /// Opens (creating) the store at the default location.
    pub fn open_default() -> Result<Store> {
        Store::open(&Store::default_root()?)
    }

    /// Opens (creating) the store at `root`.
    ///
    /// The store's own folders (the root as it resolves, `.tmp`, `.refs`,
    /// `.packages`, `.snapshots` and its `.tmp`) must be directories, not
    /// symbolic links, owned by this user or by root, and writable by no
    /// one else: whoever may write there decides what the next build
    /// commits and what clusters boot ([`ImageError::UnsafeStore`]). A
    /// store shared with a group is the exception: group-writable and
    /// set-group-id (`install -d -m 2775 -g GROUP`), its folders may
    /// belong to any member.
    ///
    /// A store this user may not write is used read-only: its entries are
    /// found as if they were here, and everything written (builds of what
    /// it lacks, role snapshots, `.refs`) goes to the user's own store
    /// ([`Store::own_root`]).
    pub fn open(root: &Path) -> Result<Store> {
        if !root.exists() {
            fs::create_dir_all(root).at("cannot create", root)?;
        }
        let root = fs::canonicalize(root).at("cannot resolve", root)?;
        let meta = fs::symlink_metadata(&root).at("cannot inspect", &root)?;
        let sharing = if group_shared(&meta) {
            Sharing::Group
        } else {
            Sharing::Private
        };
        if !writable(&root) {
            check_folder(&root, Sharing::Group)?;
            let own = Store::own_root()?;
            if fs::canonicalize(&own).is_ok_and(|o| o == root) {
                return Err(ImageError::Io {
                    action: "cannot write the store",
                    path: root,
                    source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                });
            }
            let mut store = Store::open_writable(&own)?;
            store.shared = Some(root);
            return Ok(store);
        }
        check_folder(&root, sharing)?;
        Store::open_checked(root, sharing)
    }

    /// [`Store::open`] of a store this user must be able to write.
    fn open_writable(root: &Path) -> Result<Store> {
        fs::create_dir_all(root).at("cannot create", root)?;
        let root = fs::canonicalize(root).at("cannot resolve", root)?;
        let meta = fs::symlink_metadata(&root).at("cannot inspect", &root)?;
        let sharing = if group_shared(&meta) {
            Sharing::Group
        } else {
            Sharing::Private
        };
        check_folder(&root, sharing)?;
        if !writable(&root) {
            return Err(ImageError::Io {
                action: "cannot write the store",
                path: root,
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            });
        }
        Store::open_checked(root, sharing)
    }

    fn open_checked(root: PathBuf, sharing: Sharing) -> Result<Store> {
        for d in [root.join(TMP), root.join(REFS), root.join(PACKAGES)] {
            ensure_folder(&d, sharing)?;
        }
        for d in [root.join(SNAPSHOTS), root.join(SNAPSHOTS).join(TMP)] {
            check_folder(&d, sharing)?;
        }
        Ok(Store {
            root,
            sharing,
            shared: None,
        })
    }

    /// The read-only store whose entries are used besides this one's, if
    /// any ([`Store::open`]).
    pub fn shared(&self) -> Option<&Path> {
        self.shared.as_deref()
    }

    /// Whether this store is shared with a group (its folders are made
    /// group-writable and set-group-id).
    pub fn group_shared(&self) -> bool {
        self.sharing == Sharing::Group
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of role snapshots (whether or not it exists).
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join(SNAPSHOTS)
    }

    /// Where the entry of `key` lives: in the read-only shared store if
    /// it has it and this one does not, else here (whether or not it
    /// exists).
    pub fn entry_dir(&self, key: &str) -> PathBuf {
        let own = self.root.join(key);
        if let Some(shared) = &self.shared {
            if !own.exists() && complete(&shared.join(key), key) {
                return shared.join(key);
            }
        }
        own
    }

    /// Where the cached `.deb` with this SHA-256 is (whether or not it is
    /// there).
    pub fn package_path(&self, sha256: &str) -> PathBuf {
        self.package_dir().join(format!("{sha256}.deb"))
    }

    /// The package cache's directory.
    pub fn package_dir(&self) -> PathBuf {
        self.root.join(PACKAGES)
    }

    /// Moves a checked `.deb` into the package cache. `file` must be on the
    /// store's filesystem (in `.tmp`) and have the digest `sha256`.
    pub(crate) fn add_package(&self, file: &Path, sha256: &str) -> Result<PathBuf> {
        let dest = self.package_path(sha256);
        fs::rename(file, &dest).at("cannot move a package into", &dest)?;
        Ok(dest)
    }

    /// The package cache's size.
    pub fn package_cache(&self) -> Result<PackageCacheInfo> {
        let dir = self.package_dir();
        let mut info = PackageCacheInfo {
            path: dir.clone(),
            ..PackageCacheInfo::default()
        };
        for entry in fs::read_dir(&dir).at("cannot list", &dir)? {
            let entry = entry.at("cannot list", &dir)?;
            if entry.path().extension().is_some_and(|e| e == "deb") {
                info.count += 1;
                info.size += entry.metadata().at("cannot stat", entry.path())?.len();
            }
        }
        Ok(info)
    }

    /// The manifest of `key` if the store (or the shared store it reads)
    /// has a complete entry for it.
    pub fn lookup(&self, key: &str) -> Option<Manifest> {
        read_entry(&self.entry_dir(key), key)
    }

    /// A fresh build directory in `.tmp`, tagged with our pid so a later
    /// build can tell whether its owner is still alive.
    pub fn temp_dir(&self, label: &str) -> Result<PathBuf> {
        let base = self.root.join(TMP);
        let pid = std::process::id();
        for n in 0u32.. {
            let dir = base.join(format!("{label}-{n}-{pid}"));
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).at("cannot create", &dir),
            }
        }
        Err(ImageError::Io {
            action: "cannot create a build directory in",
            path: base,
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        })
    }

    /// Moves a finished build into place as `key`. If another process
    /// finished the same key first, its entry wins (it is identical by
    /// construction) and ours is discarded.
    pub fn commit(&self, tmp: &Path, key: &str) -> Result<PathBuf> {
        let dest = self.root.join(key);
        // Entries are read by whoever boots them (other users of a shared
        // store, libvirt's QEMU user), whatever the builder's umask.
        for entry in fs::read_dir(tmp).at("cannot list", tmp)? {
            let path = entry.at("cannot list", tmp)?.path();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
                .at("cannot set the mode of", &path)?;
        }
        if self.sharing == Sharing::Group {
            // Any member may remove it (`gc`); nobody else may change it.
            fs::set_permissions(tmp, fs::Permissions::from_mode(0o2775))
                .at("cannot set the mode of", tmp)?;
        }
        match fs::rename(tmp, &dest) {
            Ok(()) => Ok(dest),
            Err(_) if self.lookup(key).is_some() => {
                remove_tree(tmp)?;
                Ok(dest)
            }
            Err(e) => Err(e).at("cannot move the build into", &dest),
        }
    }

    /// Removes `.tmp` directories whose owning process is gone (interrupted
    /// builds); returns how many.
    pub fn clean_stale(&self, progress: &dyn Progress) -> Result<usize> {
        let base = self.root.join(TMP);
        let mut n = 0;
        for entry in fs::read_dir(&base).at("cannot list", &base)? {
            let entry = entry.at("cannot list", &base)?;
            let name = entry.file_name().to_string_lossy().to_string();
            // In a store shared with a group, another member's build is
            // theirs to clean (its folder is private to them).
            let me = rustix::process::geteuid();
            let theirs = entry
                .metadata()
                .is_ok_and(|m| m.uid() != me.as_raw() && !me.is_root());
            if theirs {
                continue;
            }
            let pid = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                unmount_under(&entry.path())?;
                remove_tree(&entry.path())?;
                progress.event(Event::CleanedStale { name });
                n += 1;
            }
        }
        Ok(n)
    }

    /// Records that the lock file at `lock` uses `keys` (role → key), so
    /// that `ls` can show it and `gc` keeps them while the file exists.
    pub fn register(&self, lock: &Path, keys: &BTreeMap<String, String>) -> Result<()> {
        let lock = fs::canonicalize(lock).unwrap_or_else(|_| lock.to_path_buf());
        let name = hex(&Sha256::digest(lock.to_string_lossy().as_bytes()));
        let path = self.root.join(REFS).join(format!("{name}.json"));
        let mut merged = read_ref(&path).map(|r| r.keys).unwrap_or_default();
        merged.extend(keys.iter().map(|(k, v)| (k.clone(), v.clone())));
        let r = Ref { lock, keys: merged };
        let text = serde_json::to_string_pretty(&r).unwrap_or_default();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, text).at("cannot write", &tmp)?;
        fs::rename(&tmp, &path).at("cannot write", &path)
    }

    fn refs(&self) -> Result<Vec<(PathBuf, Ref)>> {
        let dir = self.root.join(REFS);
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).at("cannot list", &dir)? {
            let path = entry.at("cannot list", &dir)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            if let Some(r) = read_ref(&path) {
                out.push((path, r));
            }
        }
        out.sort_by(|a, b| a.1.lock.cmp(&b.1.lock));
        Ok(out)
    }

    /// The complete entries, sorted by key, with sizes and users.
    pub fn list(&self) -> Result<Vec<EntryInfo>> {
        let refs = self.refs()?;
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).at("cannot list", &self.root)? {
            let entry = entry.at("cannot list", &self.root)?;
            let key = entry.file_name().to_string_lossy().to_string();
            if key.starts_with('.') || self.lookup(&key).is_none() {
                continue;
            }
            let users = refs
                .iter()
                .filter_map(|(_, r)| {
                    let roles: Vec<String> = r
                        .keys
                        .iter()
                        .filter(|(_, k)| **k == key)
                        .map(|(role, _)| role.clone())
                        .collect();
                    (!roles.is_empty()).then(|| (r.lock.clone(), roles))
                })
                .collect();
            out.push(EntryInfo {
                size: tree_size(&entry.path())?,
                path: entry.path(),
                key,
                users,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Removes every entry no registered, still existing lock file uses,
    /// forgets lock files that no longer exist, and cleans stale builds.
    pub fn gc(&self, progress: &dyn Progress) -> Result<GcReport> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.gc_at(progress, now)
    }

    /// [`Store::gc`] as if it were `now` (Unix seconds).
    fn gc_at(&self, progress: &dyn Progress, now: i64) -> Result<GcReport> {
        self.clean_stale(progress)?;
        let mut live: BTreeSet<String> = BTreeSet::new();
        let mut needed: BTreeSet<String> = BTreeSet::new();
        let mut report = GcReport::default();
        for (path, r) in self.refs()? {
            if r.lock.exists() {
                live.extend(r.keys.values().cloned());
                match crate::lock::Lockfile::read(&r.lock) {
                    Ok(lock) => needed.extend(
                        lock.roles
                            .values()
                            .flat_map(|role| role.packages.iter().map(|p| p.sha256.clone())),
                    ),
                    Err(e) => {
                        report.packages_note.get_or_insert(format!(
                            "every cached package is kept: cannot read {}: {e}",
                            r.lock.display()
                        ));
                    }
                }
            } else {
                fs::remove_file(&path).at("cannot remove", &path)?;
            }
        }
        let packages = self.root.join(PACKAGES);
        for entry in fs::read_dir(&packages).at("cannot list", &packages)? {
            let path = entry.at("cannot list", &packages)?.path();
            let sha = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            // A build registers its lock only once it is done, and links
            // every package it uses into its repository (which updates the
            // file's ctime, as its renaming into the cache did): a package
            // touched in the last hour may belong to a build under way.
            let recent = fs::symlink_metadata(&path)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    now - m.ctime() < RECENT_SECS
                })
                .unwrap_or(true);
            if report.packages_note.is_some() || needed.contains(&sha) || recent {
                report.packages_kept += 1;
            } else {
                report.freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&path).at("cannot remove", &path)?;
                report.packages_removed += 1;
            }
        }
        for entry in fs::read_dir(&self.root).at("cannot list", &self.root)? {
            let entry = entry.at("cannot list", &self.root)?;
            let key = entry.file_name().to_string_lossy().to_string();
            if key.starts_with('.') {
                continue;
            }
            if live.contains(&key) {
                report.kept.push(key);
                continue;
            }
            report.freed += tree_size(&entry.path())?;
            remove_tree(&entry.path())?;
            report.removed.push(key);
        }
        self.gc_snapshots(&mut report, now)?;
        report.removed.sort();
        report.kept.sort();
        Ok(report)
    }

    /// Removes the role snapshots whose image entry is gone (or whose
    /// description cannot be read), and snapshots left half made by a
    /// process that died (in `.snapshots/.tmp`, over an hour old).
    fn gc_snapshots(&self, report: &mut GcReport, now: i64) -> Result<()> {
        let dir = self.snapshots_dir();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries {
            let path = entry.at("cannot list", &dir)?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name == TMP {
                for stale in fs::read_dir(&path).at("cannot list", &path)? {
                    let stale = stale.at("cannot list", &path)?.path();
                    let old = fs::symlink_metadata(&stale).is_ok_and(|m| {
                        use std::os::unix::fs::MetadataExt;
                        now - m.mtime() >= RECENT_SECS
                    });
                    if old {
                        report.freed += tree_size(&stale)?;
                        remove_tree(&stale)?;
                    }
                }
                continue;
            }
            let image = fs::read(path.join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("image").and_then(|i| i.as_str()).map(str::to_owned));
            let live = image.is_some_and(|key| !key.is_empty() && self.root.join(key).is_dir());
            if !live {
                report.freed += tree_size(&path)?;
                remove_tree(&path)?;
                report.snapshots_removed.push(name);
            }
        }
        report.snapshots_removed.sort();
        Ok(())
    }

    /// Fails clearly when the store's filesystem has less than `needed_mib`
    /// free.
    pub fn check_space(&self, needed_mib: u64) -> Result<()> {
        let st = rustix::fs::statvfs(&self.root)
            .map_err(std::io::Error::from)
            .at("cannot query free space of", &self.root)?;
        let available_mib = st.f_bavail.saturating_mul(st.f_frsize) / (1024 * 1024);
        if available_mib < needed_mib {
            return Err(ImageError::NoSpace {
                path: self.root.clone(),
                available_mib,
                needed_mib,
            });
        }
        Ok(())
    }
}

/// Unmounts whatever an interrupted mmdebstrap left mounted under `dir`
/// (`/proc`, `/sys`, `/dev/pts` of its chroot), deepest first, so that
/// removing the directory never descends into a mounted filesystem.
pub(crate) fn unmount_under(dir: &Path) -> Result<()> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(());
    };
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces and other bytes as octal.
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for m in mounts {
        let status = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(&m)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            return Err(ImageError::BadEntry {
                path: dir.to_path_buf(),
                message: format!(
                    "an interrupted build left {} mounted; unmount it (as root) and retry",
                    m.display()
                ),
            });
        }
    }
    Ok(())
}

/// The manifest of the entry at `dir` if it is complete and is `key`'s.
fn read_entry(dir: &Path, key: &str) -> Option<Manifest> {
    let manifest = Manifest::read(&dir.join(MANIFEST)).ok()?;
    (manifest.key == key).then_some(manifest)
}

fn complete(dir: &Path, key: &str) -> bool {
    read_entry(dir, key).is_some()
}

fn read_ref(path: &Path) -> Option<Ref> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

/// Removes a directory tree, including read-only directories a failed
/// build may leave behind.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at("cannot remove", path),
    }
}

/// Total size of the regular files under `path`.
pub(crate) fn tree_size(path: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).at("cannot list", &dir)? {
            let entry = entry.at("cannot list", &dir)?;
            let meta = entry
                .path()
                .symlink_metadata()
                .at("cannot stat", entry.path())?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    fn fake_entry(store: &Store, key: &str) {
        let tmp = store.temp_dir("t").expect("tmp");
        let m = Manifest::for_test(key);
        m.write(&tmp.join(MANIFEST)).expect("manifest");
        fs::write(tmp.join("kernel"), b"k").expect("w");
        store.commit(&tmp, key).expect("commit");
    }

    /// A store folder that someone else could change is refused, with
    /// the folder and the reason; the store's build folders are private.
    #[test]
    fn store_folders_that_others_could_change_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("store");
        let store = Store::open(&root).expect("a new store");
        let build = store.temp_dir("t").expect("tmp");
        assert_eq!(fs::metadata(&build).expect("stat").mode() & 0o777, 0o700);

        let unsafe_because = |reason: &str| match Store::open(&root) {
            Err(ImageError::UnsafeStore { reason: r, path }) => {
                assert!(r.contains(reason), "{r}");
                path
            }
            other => panic!("expected a refusal ({reason}), got {other:?}"),
        };
        // `.tmp` replaced by a link to a folder anyone may write.
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).expect("mkdir");
        fs::remove_dir_all(root.join(TMP)).expect("rm");
        std::os::unix::fs::symlink(&elsewhere, root.join(TMP)).expect("ln");
        assert_eq!(unsafe_because("symbolic link"), root.join(TMP));
        fs::remove_file(root.join(TMP)).expect("rm");

        // The root writable by everyone.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).expect("chmod");
        let refused = unsafe_because("anyone may write in it (mode 777)");
        assert_eq!(refused, fs::canonicalize(&root).expect("resolve"));
        let message = Store::open(&root).unwrap_err().to_string();
        assert!(message.contains("TESTBED_STORE"), "{message}");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");

        // `.refs` of another user (needs root to give it away; as anyone
        // else, a folder of one's own is all there is).
        if rustix::process::geteuid().is_root() {
            let nobody = Some(65534);
            std::os::unix::fs::chown(root.join(REFS), nobody, nobody).expect("chown");
            unsafe_because("belongs to uid 65534");
            std::os::unix::fs::chown(root.join(REFS), Some(0), Some(0)).expect("chown");
        }
        Store::open(&root).expect("safe again");

        // Group-writable without the set-group-id bit: a mistake, not a
        // store shared with a group.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o775)).expect("chmod");
        unsafe_because("not set-group-id");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[test]
    fn a_store_shared_with_a_group_keeps_its_folders_and_entries_group_writable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("store");
        fs::create_dir(&root).expect("mkdir");
        // What `install -d -m 2775 -g GROUP` makes (the group is ours here).
        fs::set_permissions(&root, fs::Permissions::from_mode(0o2775)).expect("chmod");
        let store = Store::open(&root).expect("a store shared with a group");
        assert!(store.group_shared());
        for d in [TMP, REFS, PACKAGES] {
            let mode = fs::metadata(root.join(d)).expect("stat").mode() & 0o7777;
            assert_eq!(mode, 0o2775, "{d}");
        }
        let build = store.temp_dir("t").expect("tmp");
        assert_eq!(fs::metadata(&build).expect("stat").mode() & 0o777, 0o700);
        fs::write(build.join("kernel"), "k").expect("write");
        fs::set_permissions(build.join("kernel"), fs::Permissions::from_mode(0o600))
            .expect("chmod");
        let entry = store.commit(&build, "abcd").expect("commit");
        assert_eq!(fs::metadata(&entry).expect("stat").mode() & 0o7777, 0o2775);
        assert_eq!(
            fs::metadata(entry.join("kernel")).expect("stat").mode() & 0o777,
            0o644,
            "whatever the builder's umask, members read the outputs"
        );
        // A subfolder that lost its set-group-id bit would keep what a
        // member makes from the others.
        fs::set_permissions(root.join(REFS), fs::Permissions::from_mode(0o775)).expect("chmod");
        match Store::open(&root) {
            Err(ImageError::UnsafeStore { path, reason }) => {
                assert_eq!(path, root.join(REFS));
                assert!(reason.contains("not set-group-id"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn gc_keeps_only_keys_of_existing_locks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("open");
        fake_entry(&store, "aaaa");
        fake_entry(&store, "bbbb");
        fake_entry(&store, "cccc");
        let lock1 = dir.path().join("one.lock");
        let lock2 = dir.path().join("two.lock");
        fs::write(&lock1, "").expect("w");
        fs::write(&lock2, "").expect("w");
        let keys = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        store
            .register(&lock1, &keys(&[("ctl", "aaaa"), ("compute", "aaaa")]))
            .expect("reg");
        store
            .register(&lock2, &keys(&[("db", "bbbb")]))
            .expect("reg");
        let ls = store.list().expect("ls");
        assert_eq!(ls.len(), 3);
        assert_eq!(ls[0].users.len(), 1);
        assert_eq!(ls[0].users[0].1, ["compute", "ctl"]);
        assert!(ls[2].users.is_empty());
        fs::remove_file(&lock2).expect("rm");
        let report = store.gc(&NoProgress).expect("gc");
        assert_eq!(report.removed, ["bbbb", "cccc"]);
        assert_eq!(report.kept, ["aaaa"]);
        assert!(store.lookup("aaaa").is_some());
        assert!(store.lookup("bbbb").is_none());
    }

    #[test]
    fn gc_keeps_the_packages_an_existing_lock_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("open");
        let add = |sha: &str| {
            let tmp = store.root().join(TMP).join("p");
            fs::write(&tmp, sha).expect("w");
            store.add_package(&tmp, sha).expect("add");
        };
        add(&"aa".repeat(32));
        add(&"bb".repeat(32));
        add(&"cc".repeat(32));
        assert_eq!(store.package_cache().expect("info").count, 3);
        let lock = dir.path().join("testbed.lock");
        fs::write(
            &lock,
            format!(
                "version = 2\n[roles.ctl]\nvendor = \"debian\"\nsuite = \"bookworm\"\narchitecture = \"amd64\"\nkernel = \"k\"\nrequested = []\nsource-date-epoch = 0\nsnapshot = \"19700101T000000Z\"\npackages = [\n  {{ name = \"aa\", version = \"1\", arch = \"all\", sha256 = \"{}\" }},\n]\n",
                "aa".repeat(32)
            ),
        )
        .expect("w");
        store.register(&lock, &BTreeMap::new()).expect("reg");
        let gone = dir.path().join("gone.lock");
        fs::write(&gone, "").expect("w");
        store.register(&gone, &BTreeMap::new()).expect("reg");
        fs::remove_file(&gone).expect("rm");
        // Just added: a build under way may need them.
        let report = store.gc(&NoProgress).expect("gc");
        assert_eq!((report.packages_kept, report.packages_removed), (3, 0));
        let later = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
            + 2 * RECENT_SECS;
        let report = store.gc_at(&NoProgress, later).expect("gc");
        assert_eq!((report.packages_kept, report.packages_removed), (1, 2));
        assert!(report.packages_note.is_none());
        assert!(store.package_path(&"aa".repeat(32)).is_file());
        assert!(!store.package_path(&"bb".repeat(32)).exists());
        // A lock gc cannot read keeps every package, and says so.
        add(&"dd".repeat(32));
        fs::write(&lock, "not a lock").expect("w");
        let report = store.gc_at(&NoProgress, later).expect("gc");
        assert_eq!((report.packages_kept, report.packages_removed), (2, 0));
        assert!(report.packages_note.expect("note").contains("cannot read"));
    }

    #[test]
    fn stale_temp_dirs_are_cleaned_and_never_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        // A build of a process that no longer exists (pid 0 never does).
        let stale = store.root().join(TMP).join("abcd-0-0");
        fs::create_dir_all(&stale).expect("mkdir");
        let mine = store.temp_dir("efgh").expect("tmp");
        assert!(store.lookup("abcd").is_none());
        assert_eq!(store.clean_stale(&NoProgress).expect("clean"), 1);
        assert!(!stale.exists());
        assert!(mine.exists());
        // A directory without a manifest is not an entry.
        fs::create_dir_all(store.entry_dir("dead")).expect("mkdir");
        assert!(store.lookup("dead").is_none());
        assert!(store.list().expect("ls").is_empty());
    }

    #[test]
    fn gc_removes_the_snapshots_whose_image_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("open");
        fake_entry(&store, "aaaa");
        let lock = dir.path().join("testbed.lock");
        fs::write(&lock, "").expect("w");
        let keys = BTreeMap::from([("ctl".to_owned(), "aaaa".to_owned())]);
        store.register(&lock, &keys).expect("reg");
        let snapshot = |name: &str, meta: &str| {
            let d = store.snapshots_dir().join(name);
            fs::create_dir_all(&d).expect("mkdir");
            fs::write(d.join("meta.json"), meta).expect("w");
            fs::write(d.join("ram"), b"ram").expect("w");
        };
        snapshot("live", r#"{"image": "aaaa"}"#);
        snapshot("orphan", r#"{"image": "bbbb"}"#);
        snapshot("unreadable", "{");
        let half_made = store.snapshots_dir().join(TMP).join("k.1");
        fs::create_dir_all(&half_made).expect("mkdir");
        // A snapshot being made right now is left alone...
        let report = store.gc(&NoProgress).expect("gc");
        assert_eq!(report.snapshots_removed, ["orphan", "unreadable"]);
        assert!(store.snapshots_dir().join("live").join("ram").is_file());
        assert!(half_made.exists());
        // ...and removed once an hour old.
        let later = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
            + 2 * RECENT_SECS;
        store.gc_at(&NoProgress, later).expect("gc");
        assert!(!half_made.exists());
        // Once its image goes, so does the snapshot.
        fs::remove_file(&lock).expect("rm");
        let report = store.gc(&NoProgress).expect("gc");
        assert_eq!(report.removed, ["aaaa"]);
        assert_eq!(report.snapshots_removed, ["live"]);
    }

    #[test]
    fn store_location_honours_the_environment() {
        // Only reads; the other tests do not depend on these variables.
        let root = Store::default_root().expect("some default");
        assert!(root.is_absolute() || std::env::var_os(STORE_ENV).is_some());
    }
}
