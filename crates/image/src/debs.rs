//! Where the locked `.deb`s come from, and the local repository a build
//! installs them from.
//!
//! Every package a lock names is identified by its SHA-256, so its source
//! does not matter: a `.deb` is taken from the first source that has it,
//! in this order, and is checked against the lock's digest whatever the
//! source (a file with other bytes is refused, named, and never kept):
//!
//! 1. the store's package cache (`<store>/.packages/<sha256>.deb`), which
//!    keeps every `.deb` a build fetched, so a later build of any lock that
//!    names it needs no network;
//! 2. other stores' caches (read only: `verify` rebuilds in a fresh store
//!    and reads the real one's);
//! 3. vendor folders (`testbed vendor` writes them: `name_version_arch.deb`
//!    as apt names files, plus `SHA256SUMS`);
//! 4. the mirror (the host's apt sources or the composition's `mirror`),
//!    when the version is still in its index with the locked digest;
//! 5. a snapshot archive at the role's snapshot point ([`crate::snapshot`]).
//!
//! With `offline`, sources 4 and 5 are not asked and nothing touches the
//! network. What no source has is reported package by package with what
//! each source said, and nothing is built.
//!
//! Builds then install from a local flat repository of exactly the locked
//! files ([`local_repo`]), so mmdebstrap never reads the network either and
//! the image cannot depend on where a package came from.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt::{self, AptRoot, SourceLine};
use crate::error::{ImageError, IoContext, Result};
use crate::lock::{LockedPackage, RoleLock};
use crate::manifest::sha256_file;
use crate::progress::{Event, Progress};
use crate::snapshot;
use crate::store::{remove_tree, Store};
use crate::tools;

/// Where packages may come from besides the store's own cache and the
/// network.
#[derive(Debug, Clone, Default)]
pub struct PackageSources {
    /// Vendor folders, asked in order.
    pub vendor: Vec<PathBuf>,
    /// Never use the network (no mirror, no snapshot archive).
    pub offline: bool,
    /// The composition's `snapshot` setting: a base URL or `off`; the
    /// environment and the default apply as [`snapshot::base_url`] says.
    pub snapshot: Option<String>,
    /// Package caches of other stores, read only.
    pub caches: Vec<PathBuf>,
}

/// Where a package was found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// The store's package cache.
    Cache,
    /// Another store's package cache.
    OtherCache(PathBuf),
    /// A vendor folder.
    Vendor(PathBuf),
    /// The mirror.
    Mirror,
    /// A snapshot archive.
    Snapshot {
        /// Its base URL.
        base: String,
        /// The point asked.
        point: String,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Cache => f.write_str("the store's package cache"),
            Origin::OtherCache(dir) => write!(f, "the package cache {}", dir.display()),
            Origin::Vendor(dir) => write!(f, "the vendor folder {}", dir.display()),
            Origin::Mirror => f.write_str("the mirror"),
            Origin::Snapshot { base, point } => {
                write!(f, "the snapshot archive {base} at {point}")
            }
        }
    }
}

/// A locked package no source has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The roles whose lock names it.
    pub roles: Vec<String>,
    /// The package.
    pub name: String,
    /// The locked version.
    pub version: String,
    /// Its architecture.
    pub arch: String,
    /// What each source asked said, in order.
    pub tried: Vec<String>,
}

/// What [`acquire`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acquired {
    /// Per source, the packages (`name version`) taken from it.
    pub from: BTreeMap<Origin, Vec<String>>,
    /// What no source has.
    pub missing: Vec<Missing>,
    /// Files refused because their digest was not the lock's.
    pub refused: Vec<String>,
}

/// One `.deb` some role needs.
struct Need<'a> {
    pkg: &'a LockedPackage,
    roles: Vec<String>,
    groups: BTreeSet<usize>,
    tried: Vec<String>,
    found: bool,
}

/// The roles that resolve against the same sources and snapshot point.
struct Group<'a> {
    lock: &'a RoleLock,
    point: String,
    archives: Vec<String>,
}

/// The file name apt gives a package (`name_version_arch.deb`, the epoch's
/// colon written `%3a`): how vendor folders name them.
pub fn deb_file_name(name: &str, version: &str, arch: &str) -> String {
    format!("{name}_{}_{arch}.deb", version.replace(':', "%3a"))
}

/// Finds every package of `roles` (role name, its lock) and, with
/// `download`, puts it in the store's package cache; without, only says
/// where each would come from (indices are read, no package is
/// downloaded). Packages no source has are in [`Acquired::missing`].
pub fn acquire(
    store: &Store,
    roles: &[(&str, &RoleLock)],
    sources: &PackageSources,
    download: bool,
    progress: &dyn Progress,
) -> Result<Acquired> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut needs: BTreeMap<&str, Need<'_>> = BTreeMap::new();
    for (role, lock) in roles {
        let point = lock
            .snapshot
            .clone()
            .unwrap_or_else(|| snapshot::format_timestamp(lock.source_date_epoch));
        let g = match groups.iter().position(|g| {
            g.lock.vendor == lock.vendor
                && g.lock.suite == lock.suite
                && g.lock.mirror == lock.mirror
                && g.point == point
                && g.lock.archives == lock.archives
        }) {
            Some(g) => g,
            None => {
                groups.push(Group {
                    lock,
                    point,
                    archives: lock.archives.clone(),
                });
                groups.len() - 1
            }
        };
        for p in &lock.packages {
            let need = needs.entry(p.sha256.as_str()).or_insert_with(|| Need {
                pkg: p,
                roles: Vec::new(),
                groups: BTreeSet::new(),
                tried: Vec::new(),
                found: false,
            });
            if !need.roles.iter().any(|r| r == role) {
                need.roles.push(role.to_string());
            }
            need.groups.insert(g);
        }
    }
    let mut out = Acquired::default();
    let take = |need: &mut Need<'_>, origin: Origin, out: &mut Acquired| {
        need.found = true;
        out.from
            .entry(origin)
            .or_default()
            .push(format!("{} {}", need.pkg.name, need.pkg.version));
    };

    // 1. The store's own cache.
    for need in needs.values_mut() {
        let path = store.package_path(&need.pkg.sha256);
        let found = match sha256_file(&path) {
            Ok(found) => found,
            // Not cached (or removed by a `gc` meanwhile).
            Err(ImageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                continue
            }
            Err(e) => return Err(e),
        };
        if found == need.pkg.sha256 {
            take(need, Origin::Cache, &mut out);
            continue;
        }
        // A damaged cache file is worthless: drop it (unless only
        // checking, which changes nothing) and look further.
        let msg = if download {
            fs::remove_file(&path).at("cannot remove a damaged cached package", &path)?;
            format!(
                "{} had SHA-256 {found}, not the lock's: removed",
                path.display()
            )
        } else {
            format!(
                "{} has SHA-256 {found}, not the lock's: damaged",
                path.display()
            )
        };
        out.refused.push(msg.clone());
        need.tried.push(msg);
    }
    if needs.values().any(|n| !n.found) {
        need_tried(&mut needs, "not in the store's package cache");
    }

    // 2. and 3. Other caches and vendor folders: files on this machine.
    let fetch_dir = store.temp_dir("fetch")?;
    let result = (|| {
        // Other caches name files by digest, vendor folders as apt does.
        let local = sources
            .caches
            .iter()
            .map(|d| (Origin::OtherCache(d.clone()), d, true))
            .chain(
                sources
                    .vendor
                    .iter()
                    .map(|d| (Origin::Vendor(d.clone()), d, false)),
            );
        for (origin, dir, by_digest) in local {
            for need in needs.values_mut().filter(|n| !n.found) {
                let p = need.pkg;
                let path = if by_digest {
                    dir.join(format!("{}.deb", p.sha256))
                } else {
                    dir.join(deb_file_name(&p.name, &p.version, &p.arch))
                };
                if !path.is_file() {
                    need.tried.push(format!("not in {origin}"));
                    continue;
                }
                match admit(store, &fetch_dir, &path, &need.pkg.sha256, download)? {
                    Ok(()) => take(need, origin.clone(), &mut out),
                    Err(found) => {
                        let msg = format!(
                            "{} has SHA-256 {found}, the lock says {}: refused",
                            path.display(),
                            need.pkg.sha256
                        );
                        out.refused.push(msg.clone());
                        need.tried.push(msg);
                    }
                }
            }
        }
        if sources.offline {
            need_tried(&mut needs, "no network used (offline)");
        } else {
            from_network(
                store, &groups, &mut needs, sources, download, &fetch_dir, &mut out, progress,
            )?;
        }
        Ok(())
    })();
    let _ = remove_tree(&fetch_dir);
    result?;
    for (origin, packages) in &out.from {
        progress.event(Event::PackagesFrom {
            origin: origin.clone(),
            packages: packages.clone(),
        });
    }
    out.missing = needs
        .into_values()
        .filter(|n| !n.found)
        .map(|n| Missing {
            roles: n.roles,
            name: n.pkg.name.clone(),
            version: n.pkg.version.clone(),
            arch: n.pkg.arch.clone(),
            tried: n.tried,
        })
        .collect();
    Ok(out)
}

/// [`acquire`] with downloads: afterwards every package of `roles` is in
/// the store's cache, or this fails naming those no source has.
pub fn fetch(
    store: &Store,
    roles: &[(&str, &RoleLock)],
    sources: &PackageSources,
    progress: &dyn Progress,
) -> Result<Acquired> {
    let acquired = acquire(store, roles, sources, true, progress)?;
    if acquired.missing.is_empty() {
        Ok(acquired)
    } else {
        Err(ImageError::Unavailable {
            missing: acquired.missing,
        })
    }
}

/// Adds `why` to what every package not found yet was tried with.
fn need_tried(needs: &mut BTreeMap<&str, Need<'_>>, why: &str) {
    for need in needs.values_mut().filter(|n| !n.found) {
        need.tried.push(why.to_string());
    }
}

/// Checks the file at `path` against `sha256` and, with `keep`, copies it
/// into the store's cache (through `tmp`, so the cache never holds a
/// partial or unchecked file). `Ok(Err(found))` when the digest differs.
fn admit(
    store: &Store,
    tmp: &Path,
    path: &Path,
    sha256: &str,
    keep: bool,
) -> Result<std::result::Result<(), String>> {
    if !keep {
        let found = sha256_file(path)?;
        return Ok(if found == sha256 { Ok(()) } else { Err(found) });
    }
    let copy = tmp.join(format!("{sha256}.part"));
    fs::copy(path, &copy).at("cannot copy", path)?;
    let found = sha256_file(&copy)?;
    if found != sha256 {
        fs::remove_file(&copy).at("cannot remove", &copy)?;
        return Ok(Err(found));
    }
    store.add_package(&copy, sha256)?;
    Ok(Ok(()))
}

/// The mirror, then the snapshot archive, for what is still missing.
#[allow(clippy::too_many_arguments)]
fn from_network(
    store: &Store,
    groups: &[Group<'_>],
    needs: &mut BTreeMap<&str, Need<'_>>,
    sources: &PackageSources,
    download: bool,
    fetch_dir: &Path,
    out: &mut Acquired,
    progress: &dyn Progress,
) -> Result<()> {
    if needs.values().all(|n| n.found) {
        return Ok(());
    }
    let arch = apt::host_arch()?;
    let network = apt::host_network_config()?;
    for (g, group) in groups.iter().enumerate() {
        let in_group = |n: &Need<'_>| !n.found && n.groups.contains(&g);
        if !needs.values().any(in_group) {
            continue;
        }
        let mirror_sources = apt::sources_for(
            &group.lock.vendor,
            &group.lock.suite,
            group.lock.mirror.as_deref(),
        )?;
        let distro = format!("{}/{}", group.lock.vendor, group.lock.suite);
        progress.event(Event::UpdatingIndex {
            distro: distro.clone(),
        });
        let dir = fetch_dir.join(format!("mirror-{g}"));
        let _ = from_index(
            store,
            &dir,
            &mirror_sources,
            &arch,
            &network,
            needs,
            g,
            Origin::Mirror,
            download,
            out,
            progress,
        )?;

        let Some(base) = snapshot::base_url(&group.lock.vendor, sources.snapshot.as_deref()) else {
            for need in needs.values_mut().filter(|n| in_group(n)) {
                need.tried.push("no snapshot archive (it is off)".into());
            }
            continue;
        };
        let archives = if group.archives.is_empty() {
            snapshot::archives(&mirror_sources)
        } else {
            group.archives.clone()
        };
        let mut snapshot_network = network.clone();
        // A snapshot's Release files expired long ago by design.
        snapshot_network.push("Acquire::Check-Valid-Until \"false\";".into());
        // Signed by the distribution's keys, as the mirror is: otherwise a
        // lock and a `snapshot` URL edited together could install anything.
        let unsigned = std::env::var(snapshot::SNAPSHOT_UNSIGNED_ENV).is_ok_and(|v| v == "1");
        let keyrings = match (unsigned, group.lock.vendor.as_str()) {
            (true, _) => None,
            (false, "debian") => match apt::debian_keyrings() {
                Some(k) => Some(k),
                None => {
                    for need in needs.values_mut().filter(|n| in_group(n)) {
                        need.tried.push(format!(
                            "the snapshot archive {base}: cannot check its signature: Debian's keyring is not installed (debian-archive-keyring)"
                        ));
                    }
                    continue;
                }
            },
            (false, vendor) => {
                for need in needs.values_mut().filter(|n| in_group(n)) {
                    need.tried.push(format!(
                        "the snapshot archive {base}: no keyring known for {vendor} to check it with (set {}=1 to accept it unsigned)",
                        snapshot::SNAPSHOT_UNSIGNED_ENV
                    ));
                }
                continue;
            }
        };
        for (i, point) in snapshot::points(&group.point).into_iter().enumerate() {
            if !needs.values().any(in_group) {
                break;
            }
            progress.event(Event::UpdatingIndex {
                distro: format!("{distro} in the snapshot archive at {point}"),
            });
            let at = snapshot::sources_at(&base, &archives, &point, keyrings.as_deref());
            let dir = fetch_dir.join(format!("snapshot-{g}-{i}"));
            let origin = Origin::Snapshot {
                base: base.clone(),
                point: point.clone(),
            };
            let read = from_index(
                store,
                &dir,
                &at,
                &arch,
                &snapshot_network,
                needs,
                g,
                origin,
                download,
                out,
                progress,
            )?;
            // A later point of an archive that cannot be reached at all
            // would only take as long to fail again.
            if read == IndexRead::Unreachable {
                break;
            }
        }
    }
    Ok(())
}

/// Whether a source set's index could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IndexRead {
    Read,
    /// It answered, but not with an index (e.g. no such snapshot).
    Failed,
    /// It could not be reached at all (name, connection).
    Unreachable,
}

/// One source set: update its index, take what it has with the locked
/// digest (downloading it with `download`), note why for the rest.
#[allow(clippy::too_many_arguments)]
fn from_index(
    store: &Store,
    dir: &Path,
    sources: &[SourceLine],
    arch: &str,
    network: &[String],
    needs: &mut BTreeMap<&str, Need<'_>>,
    g: usize,
    origin: Origin,
    download: bool,
    out: &mut Acquired,
    progress: &dyn Progress,
) -> Result<IndexRead> {
    let root = AptRoot::create(dir, sources, arch, network)?;
    if let Err(e) = root.update() {
        let why = match &e {
            ImageError::Command { stderr, .. } => first_error(stderr),
            other => other.to_string(),
        };
        for need in needs
            .values_mut()
            .filter(|n| !n.found && n.groups.contains(&g))
        {
            need.tried
                .push(format!("{origin}: cannot read its index: {why}"));
        }
        let unreachable = [
            "Could not resolve",
            "Temporary failure resolving",
            "Could not connect",
            "Connection failed",
        ]
        .iter()
        .any(|m| why.contains(m));
        return Ok(if unreachable {
            IndexRead::Unreachable
        } else {
            IndexRead::Failed
        });
    }
    let index = root.index()?;
    let mut wanted: Vec<&LockedPackage> = Vec::new();
    for need in needs
        .values_mut()
        .filter(|n| !n.found && n.groups.contains(&g))
    {
        let p = need.pkg;
        match index.find(&p.name, &p.version, &p.arch) {
            None => need.tried.push(format!("not in {origin}")),
            Some(e) if e.sha256 != p.sha256 => {
                let msg = format!(
                    "{origin} lists other bytes under this version (SHA-256 {}): refused",
                    e.sha256
                );
                out.refused.push(format!("{} {}: {msg}", p.name, p.version));
                need.tried.push(msg);
            }
            Some(_) => wanted.push(p),
        }
    }
    if wanted.is_empty() {
        return Ok(IndexRead::Read);
    }
    if download {
        progress.event(Event::Downloading {
            origin: origin.clone(),
            count: wanted.len(),
        });
        let files = dir.join("debs");
        fs::create_dir_all(&files).at("cannot create", &files)?;
        // A failed download (a mirror mid-sync, a throttled archive) is a
        // reason for the packages it did not give, not the end: the files
        // apt completed are used (checked below), the rest go on to the
        // next source.
        let failed = root.download(&files, &wanted).err().map(|e| match e {
            ImageError::Command { stderr, .. } => first_error(&stderr),
            other => other.to_string(),
        });
        let mut got: BTreeMap<String, PathBuf> = BTreeMap::new();
        for entry in fs::read_dir(&files).at("cannot list", &files)? {
            let path = entry.at("cannot list", &files)?.path();
            if path.extension().is_some_and(|e| e == "deb") {
                got.insert(sha256_file(&path)?, path);
            }
        }
        for p in &wanted {
            let Some(path) = got.get(&p.sha256) else {
                if let Some(need) = needs.get_mut(p.sha256.as_str()) {
                    need.tried.push(match &failed {
                        Some(why) => format!("{origin}: the download failed: {why}"),
                        None => format!("{origin}: the download did not give the locked bytes"),
                    });
                }
                continue;
            };
            store.add_package(path, &p.sha256)?;
        }
    }
    for p in wanted {
        if let Some(need) = needs.get_mut(p.sha256.as_str()) {
            let have = !download || store.package_path(&p.sha256).is_file();
            if have && !need.found {
                need.found = true;
                out.from
                    .entry(origin.clone())
                    .or_default()
                    .push(format!("{} {}", p.name, p.version));
            }
        }
    }
    Ok(IndexRead::Read)
}

/// The first `E:`/`Err:` line of apt's output, or its last line.
fn first_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.starts_with("E:") || l.starts_with("Err:"))
        .or(lines.last())
        .map(|l| l.to_string())
        .unwrap_or_else(|| "no answer".into())
}

/// What [`vendor`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vendored {
    /// Packages written (or already there with the right digest).
    pub packages: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Where each came from before it went into the folder.
    pub acquired: Acquired,
}

/// Copies every package of `roles` into the folder `dir` as
/// `name_version_arch.deb` (fetching what the store's cache lacks), with a
/// `SHA256SUMS` of all the folder's files: what `--vendor DIR` builds
/// from, with no network.
pub fn vendor(
    store: &Store,
    roles: &[(&str, &RoleLock)],
    sources: &PackageSources,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<Vendored> {
    let acquired = fetch(store, roles, sources, progress)?;
    fs::create_dir_all(dir).at("cannot create", dir)?;
    let mut done = Vendored {
        acquired,
        ..Vendored::default()
    };
    let mut seen = BTreeSet::new();
    for (_, lock) in roles {
        for p in &lock.packages {
            if !seen.insert(p.sha256.clone()) {
                continue;
            }
            let dest = dir.join(deb_file_name(&p.name, &p.version, &p.arch));
            let src = store.package_path(&p.sha256);
            let current = dest.is_file() && sha256_file(&dest)? == p.sha256;
            if !current {
                let part = dir.join(format!(".{}.part", p.sha256));
                fs::copy(&src, &part).at("cannot copy", &src)?;
                fs::rename(&part, &dest).at("cannot write", &dest)?;
            }
            done.packages += 1;
            done.bytes += fs::metadata(&dest).at("cannot stat", &dest)?.len();
        }
    }
    // Every .deb of the folder, so that one folder can serve several
    // compositions and `sha256sum -c` checks it.
    let mut sums = String::new();
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .at("cannot list", dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    names.sort();
    for path in names {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        sums.push_str(&format!(
            "{}  {}\n",
            sha256_file(&path)?,
            name.unwrap_or_default()
        ));
    }
    let sums_path = dir.join("SHA256SUMS");
    fs::write(&sums_path, sums).at("cannot write", &sums_path)?;
    Ok(done)
}

/// Writes a flat apt repository of `packages` (each from the store's
/// cache) into `dir`: the files, linked from the cache, a `Packages` index
/// made from their control data, and a `Release` with its digest. apt reads
/// it as `deb [trusted=yes] file:DIR ./`; the trust is the lock's digests,
/// checked when each file entered the cache.
pub(crate) fn local_repo(store: &Store, dir: &Path, packages: &[LockedPackage]) -> Result<()> {
    fs::create_dir_all(dir).at("cannot create", dir)?;
    let mut index = String::new();
    for p in packages {
        let src = store.package_path(&p.sha256);
        let name = deb_file_name(&p.name, &p.version, &p.arch);
        let dest = dir.join(&name);
        if fs::hard_link(&src, &dest).is_err() {
            fs::copy(&src, &dest).at("cannot copy", &src)?;
        }
        let out = tools::run(
            Command::new("dpkg-deb").arg("--field").arg(&dest),
            format!("dpkg-deb --field {name}"),
        )?;
        let control = String::from_utf8_lossy(&out.stdout);
        index.push_str(control.trim_end());
        let size = fs::metadata(&dest).at("cannot stat", &dest)?.len();
        index.push_str(&format!(
            "\nFilename: ./{name}\nSize: {size}\nSHA256: {}\n\n",
            p.sha256
        ));
    }
    let packages_path = dir.join("Packages");
    fs::write(&packages_path, &index).at("cannot write", &packages_path)?;
    let digest = crate::rootfs::hex(&<sha2::Sha256 as sha2::Digest>::digest(index.as_bytes()));
    let release = format!(
        "Origin: testbed\nLabel: testbed\nSHA256:\n {digest} {} Packages\n",
        index.len()
    );
    let release_path = dir.join("Release");
    fs::write(&release_path, release).at("cannot write", &release_path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    #[test]
    fn vendor_files_are_named_as_apt_names_them() {
        assert_eq!(
            deb_file_name("bsdutils", "1:2.38.1-5+deb12u3", "amd64"),
            "bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb"
        );
        assert_eq!(
            deb_file_name("adduser", "3.134", "all"),
            "adduser_3.134_all.deb"
        );
    }

    fn lock_of(packages: Vec<LockedPackage>) -> RoleLock {
        RoleLock {
            vendor: "debian".into(),
            suite: "bookworm".into(),
            mirror: None,
            architecture: "amd64".into(),
            kernel: "k".into(),
            requested: vec![],
            source_date_epoch: 0,
            snapshot: Some("19700101T000000Z".into()),
            archives: vec!["debian bookworm main".into()],
            packages,
        }
    }

    fn package(name: &str, bytes: &[u8]) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: "1:1.0-1".into(),
            arch: "all".into(),
            sha256: crate::rootfs::hex(&<sha2::Sha256 as sha2::Digest>::digest(bytes)),
        }
    }

    /// Offline, so no network: the cache, a vendor folder with one good
    /// and one corrupt file, and what is left is missing with reasons.
    #[test]
    fn offline_sources_are_checked_by_digest_and_corrupt_files_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Store::open(&tmp.path().join("store")).expect("store");
        let vendor_dir = tmp.path().join("vendor");
        fs::create_dir_all(&vendor_dir).expect("mkdir");
        let good = package("good", b"good bytes");
        let bad = package("bad", b"the locked bytes");
        let gone = package("gone", b"nowhere");
        let cached = package("cached", b"cached bytes");
        let file = |p: &LockedPackage| vendor_dir.join(deb_file_name(&p.name, &p.version, &p.arch));
        fs::write(file(&good), b"good bytes").expect("w");
        fs::write(file(&bad), b"other bytes").expect("w");
        let part = tmp.path().join("cached.part");
        fs::write(&part, b"cached bytes").expect("w");
        store.add_package(&part, &cached.sha256).expect("add");
        let lock = lock_of(vec![
            bad.clone(),
            cached.clone(),
            gone.clone(),
            good.clone(),
        ]);
        let sources = PackageSources {
            vendor: vec![vendor_dir.clone()],
            offline: true,
            ..PackageSources::default()
        };
        let got = acquire(&store, &[("ctl", &lock)], &sources, true, &NoProgress).expect("acquire");
        assert_eq!(got.from[&Origin::Cache], ["cached 1:1.0-1"]);
        assert_eq!(
            got.from[&Origin::Vendor(vendor_dir.clone())],
            ["good 1:1.0-1"]
        );
        let mut missing: Vec<&str> = got.missing.iter().map(|m| m.name.as_str()).collect();
        missing.sort();
        assert_eq!(missing, ["bad", "gone"]);
        let bad_missing = got.missing.iter().find(|m| m.name == "bad").expect("bad");
        assert!(
            bad_missing
                .tried
                .iter()
                .any(|t| t.contains("has SHA-256") && t.contains("refused")),
            "{:?}",
            bad_missing.tried
        );
        assert_eq!(bad_missing.roles, ["ctl"]);
        assert!(bad_missing.tried.iter().any(|t| t.contains("offline")));
        // The good file is in the cache now; the corrupt one never got there.
        assert!(store.package_path(&good.sha256).is_file());
        assert!(!store.package_path(&bad.sha256).exists());
        let err = fetch(&store, &[("ctl", &lock)], &sources, &NoProgress).expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("2 locked packages of role `ctl` can be had from no source"),
            "{msg}"
        );
        assert!(msg.contains("gone 1:1.0-1 (all)"), "{msg}");

        // A damaged cache file is dropped and found again elsewhere.
        fs::write(store.package_path(&good.sha256), b"rotten").expect("w");
        let only_good = lock_of(vec![good.clone()]);
        let got =
            acquire(&store, &[("ctl", &only_good)], &sources, true, &NoProgress).expect("again");
        assert!(got.missing.is_empty());
        assert_eq!(got.from[&Origin::Vendor(vendor_dir)], ["good 1:1.0-1"]);
        assert_eq!(got.refused.len(), 1, "{:?}", got.refused);
        assert_eq!(
            sha256_file(&store.package_path(&good.sha256)).expect("hash"),
            good.sha256
        );
    }
}
