//! A composition's images: its roles as image specs (with the guest agent
//! every image carries), where packages may come from, the lock beside the
//! composition (created when missing, upgraded from an older format with a
//! note), and the build `up` does before booting.
//!
//! Progress goes to a [`Progress`] (the builder's events) and notes about
//! the lock file to a [`LockNote`] callback; nothing here prints.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use testbed_image::lock::RoleLock;
use testbed_image::{
    BuildOptions, BuiltImage, Event, ImageError, ImageSpec, LockOptions, Lockfile, PackageSources,
    Progress, StaticFile, Store,
};
use testbed_model::{Composition, ConfineError, FileKind, Snapshot};
use testbed_runtime::spec::ImageFiles;

use crate::Error;

/// Where a build may take packages from, besides the composition's
/// mirror and snapshot archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackageOptions {
    /// Use no network: every locked package from the store's package
    /// cache or a vendor folder.
    pub offline: bool,
    /// Folders of `.deb` files (as `testbed vendor` writes them).
    pub vendor: Vec<PathBuf>,
}

impl PackageOptions {
    /// The image builder's package sources for `comp`.
    pub fn sources(&self, comp: &Composition) -> PackageSources {
        PackageSources {
            vendor: self.vendor.clone(),
            offline: self.offline,
            snapshot: comp.cluster.snapshot.as_ref().map(|s| match s {
                Snapshot::Off => "off".to_string(),
                Snapshot::Url(url) => url.clone(),
            }),
            caches: Vec::new(),
        }
    }
}

/// The lock file beside a composition.
pub fn lock_path(comp: &Composition) -> PathBuf {
    comp.dir.join("testbed.lock")
}

/// The guest agent binary installed into every image: `$TESTBED_AGENT` if
/// set, else `testbed-agent` beside `exe` (the testbed executable: where
/// cargo puts both, and where an installation puts both).
pub fn agent_binary(exe: &Path) -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("TESTBED_AGENT") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(Error::AgentNotAFile { path });
        }
        return Ok(path);
    }
    let path = exe.with_file_name("testbed-agent");
    if !path.is_file() {
        return Err(Error::AgentMissing { path });
    }
    Ok(path)
}

/// One image spec per role, each with `agent` (`None` for locking, which
/// does not depend on it). Templates are not part of images: they are
/// rendered per node at activation.
pub fn specs(comp: &Composition, agent: Option<&Path>) -> Result<Vec<ImageSpec>, Error> {
    comp.roles
        .iter()
        .map(|role| {
            let mut packages = role.packages.clone();
            packages.sort();
            packages.dedup();
            let mut files = Vec::new();
            for f in role.files.iter().filter(|f| f.is_static()) {
                let content = match &f.kind {
                    FileKind::Content(text) => text.clone().into_bytes(),
                    // Resolved and checked again right before reading: a
                    // link swapped since validation is refused.
                    FileKind::Source(path) => comp.confinement.read(path).map_err(|e| match e {
                        ConfineError::Io { source, .. } => Error::ReadFile {
                            role: role.name.clone(),
                            path: path.clone(),
                            source,
                        },
                        refused => Error::Confined {
                            role: role.name.clone(),
                            source: refused,
                        },
                    })?,
                    FileKind::Template(_) => continue,
                };
                files.push(StaticFile {
                    path: f.path.clone(),
                    content,
                    mode: f.mode,
                    owner: Some(f.owner.clone()),
                });
            }
            Ok(ImageSpec {
                role: role.name.clone(),
                vendor: comp.cluster.distro.vendor.clone(),
                suite: comp.cluster.distro.suite.clone(),
                mirror: comp.cluster.mirror.clone(),
                kernel: comp.cluster.kernel.clone(),
                packages,
                debconf: role.debconf.clone(),
                files,
                agent: agent.map(Path::to_path_buf),
            })
        })
        .collect()
}

/// Whether an image builder error is the user's input (a package that
/// does not exist, a stale or damaged lock) rather than a failure of the
/// work.
pub fn is_usage(e: &ImageError) -> bool {
    matches!(
        e,
        ImageError::UnknownPackage { .. }
            | ImageError::StaleLock { .. }
            | ImageError::BadLock { .. }
    )
}

/// Something done to the lock file that the user should know (and commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockNote {
    /// There was no lock; this one was made.
    Created { path: PathBuf },
    /// A lock of an older format was brought to the current one in place;
    /// no package version changed.
    Upgraded {
        path: PathBuf,
        from: u32,
        to: u32,
        /// Each role's snapshot point, deduplicated and sorted.
        points: Vec<String>,
    },
}

impl fmt::Display for LockNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockNote::Created { path } => write!(
                f,
                "created {} (commit it: it pins every package version)",
                path.display()
            ),
            LockNote::Upgraded {
                path,
                from,
                to,
                points,
            } => write!(
                f,
                "upgraded {} from format {from} to {to}: added each role's snapshot point ({}, from its source-date-epoch) and archives; no package version changed (commit it)",
                path.display(),
                points.join(", ")
            ),
        }
    }
}

/// Reads the lock for `comp`: a missing lock is created (and noted); a
/// stale one is an error that says to run `testbed lock`; an old format is
/// upgraded in place (and noted).
pub fn ensure_lock(
    comp: &Composition,
    specs: &[ImageSpec],
    packages: &PackageOptions,
    progress: &dyn Progress,
    notes: &mut dyn FnMut(LockNote),
) -> Result<Lockfile, Error> {
    let path = lock_path(comp);
    match Lockfile::read_if_exists(&path)? {
        Some(mut lock) => {
            lock.check_fresh(specs, &path)?;
            upgrade(&mut lock, &path, notes)?;
            Ok(lock)
        }
        None if packages.offline => Err(Error::Usage(format!(
            "{} does not exist, and making it needs the network; run `testbed lock` where the archive can be reached (or drop --offline)",
            path.display()
        ))),
        None => {
            let lock = testbed_image::lock(specs, None, &LockOptions::default(), progress)?;
            lock.write(&path)?;
            notes(LockNote::Created { path });
            Ok(lock)
        }
    }
}

/// The sources a role resolves against today, to name the archives of an
/// upgraded lock; none when this host has none for it (an air-gapped
/// machine building from a vendor folder), which leaves the archives to be
/// named at the next `lock`.
pub fn current_sources(r: &RoleLock) -> testbed_image::Result<Vec<testbed_image::apt::SourceLine>> {
    match testbed_image::apt::sources_for(&r.vendor, &r.suite, r.mirror.as_deref()) {
        Err(ImageError::NoSources { .. }) => Ok(Vec::new()),
        other => other,
    }
}

/// Brings a lock written by an older testbed to the current format in
/// place, noting it; package versions (so image keys) do not change.
pub fn upgrade(
    lock: &mut Lockfile,
    path: &Path,
    notes: &mut dyn FnMut(LockNote),
) -> Result<(), Error> {
    let from = lock.version;
    if lock.upgrade(current_sources)? {
        lock.write(path)?;
        let points: BTreeSet<&str> = lock
            .roles
            .values()
            .filter_map(|r| r.snapshot.as_deref())
            .collect();
        notes(LockNote::Upgraded {
            path: path.to_path_buf(),
            from,
            to: lock.version,
            points: points.into_iter().map(str::to_owned).collect(),
        });
    }
    Ok(())
}

/// The default store, and build options that register the composition's
/// lock with it (so `store ls` and `gc` know who uses an entry).
pub fn store_and_options(
    comp: &Composition,
    packages: &PackageOptions,
) -> Result<(Store, BuildOptions), Error> {
    let store = Store::open_default()?;
    let options = BuildOptions {
        lock_path: Some(lock_path(comp)),
        jobs: None,
        packages: packages.sources(comp),
    };
    Ok((store, options))
}

/// Locks (if there is no lock yet) and builds every role of `comp` with
/// `agent`: what `up` does before booting.
pub fn build(
    comp: &Composition,
    packages: &PackageOptions,
    agent: &Path,
    progress: &dyn Progress,
    notes: &mut dyn FnMut(LockNote),
) -> Result<Vec<BuiltImage>, Error> {
    let specs = specs(comp, Some(agent))?;
    let lock = ensure_lock(comp, &specs, packages, progress, notes)?;
    let (store, options) = store_and_options(comp, packages)?;
    let cache = CacheSetting::from_env().and_then(|setting| {
        let keys = testbed_image::keys(&specs, &lock, &lock_path(comp)).ok()?;
        let registry = match testbed_cache::Registry::open(&setting.repository) {
            Ok(registry) => registry,
            Err(e) => {
                let role = specs.first().map_or("", |s| s.role.as_str());
                cache_note(
                    progress,
                    role,
                    format!("cache not used ({e}); building locally"),
                );
                return None;
            }
        };
        Some((setting.push, registry, keys))
    });
    if let Some((_, registry, keys)) = &cache {
        pull_missing(registry, &store, &specs, keys, progress);
    }
    let built = testbed_image::build(&store, &specs, &lock, &options, progress)?;
    if let Some((true, registry, keys)) = &cache {
        push_missing(registry, &store, &specs, keys, progress);
    }
    Ok(built)
}

/// Tells what the cache did for `role`'s image (a progress line).
fn cache_note(progress: &dyn Progress, role: &str, message: String) {
    progress.event(Event::Cache {
        role: role.to_owned(),
        message,
    });
}

/// Where images are pulled from before they are built, and pushed to
/// after (docs/cache.md): `TESTBED_CACHE` names a repository of an OCI
/// registry, `TESTBED_CACHE_PUSH=1` pushes what it lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSetting {
    /// `HOST[:PORT]/PATH`.
    pub repository: String,
    /// Whether images the registry lacks are pushed after the build.
    pub push: bool,
}

impl CacheSetting {
    /// The setting of this process's environment, if any.
    pub fn from_env() -> Option<CacheSetting> {
        let repository = std::env::var("TESTBED_CACHE")
            .ok()
            .filter(|r| !r.trim().is_empty())?;
        let push = std::env::var("TESTBED_CACHE_PUSH")
            .is_ok_and(|v| matches!(v.as_str(), "1" | "yes" | "true"));
        Some(CacheSetting { repository, push })
    }
}

/// Each image the store lacks, pulled from the cache if it has it. A
/// cache that cannot be used is a warning: the build goes on locally.
fn pull_missing(
    registry: &testbed_cache::Registry,
    store: &Store,
    specs: &[ImageSpec],
    keys: &[String],
    progress: &dyn Progress,
) {
    let mut seen = BTreeSet::new();
    let missing = specs
        .iter()
        .zip(keys)
        .filter(|(_, key)| store.lookup(key).is_none() && seen.insert(key.as_str()));
    for (spec, key) in missing {
        let say = |message| cache_note(progress, &spec.role, message);
        match registry.pull(store, key, &mut |_| {}) {
            Ok(t) => say(format!(
                "pulled {} from the cache ({:.1} MiB)",
                t.reference,
                t.bytes as f64 / (1024.0 * 1024.0)
            )),
            Err(testbed_cache::CacheError::NotInRegistry { reference }) => {
                say(format!("not in the cache ({reference}); building it"))
            }
            Err(e) => {
                say(format!("cache not used ({e}); building locally"));
                // The same registry will fail the same way for the rest.
                if matches!(e, testbed_cache::CacheError::Registry { .. }) {
                    return;
                }
            }
        }
    }
}

/// Each image of the composition the cache lacks, pushed; a failure is a
/// warning (the images are built, the cluster can start).
fn push_missing(
    registry: &testbed_cache::Registry,
    store: &Store,
    specs: &[ImageSpec],
    keys: &[String],
    progress: &dyn Progress,
) {
    let mut seen = BTreeSet::new();
    for (spec, key) in specs.iter().zip(keys) {
        if !seen.insert(key.as_str()) {
            continue;
        }
        let pushed = registry.has(key).and_then(|has| {
            if has {
                Ok(None)
            } else {
                registry.push(store, key, &mut |_| {}).map(Some)
            }
        });
        let say = |message| cache_note(progress, &spec.role, message);
        match pushed {
            Ok(Some(t)) => say(format!(
                "pushed {} to the cache ({} of {} blobs sent)",
                t.reference, t.moved, t.blobs
            )),
            Ok(None) => {}
            Err(e) => say(format!("not pushed to the cache: {e}")),
        }
    }
}

/// The files of each role's image, as the cluster spec names them.
pub fn image_files(built: &[BuiltImage]) -> BTreeMap<String, ImageFiles> {
    built
        .iter()
        .map(|b| {
            (
                b.role.clone(),
                ImageFiles {
                    key: b.key.clone(),
                    kernel: b.output("kernel"),
                    initramfs: b.output("initramfs"),
                    rootfs: b.output("rootfs.erofs"),
                    archive: b.output(testbed_image::archive::ARCHIVE),
                    cmdline: testbed_image::initramfs::KERNEL_CMDLINE.to_owned(),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_comes_from_the_environment_or_beside_the_executable() {
        // One test, because it changes the process environment.
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("testbed");
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"agent").expect("write");
        std::env::set_var("TESTBED_AGENT", &agent);
        assert_eq!(agent_binary(&exe).expect("from TESTBED_AGENT"), agent);
        std::env::set_var("TESTBED_AGENT", dir.path().join("missing"));
        let err = agent_binary(&exe).expect_err("not a file").to_string();
        assert!(err.starts_with("TESTBED_AGENT is "), "{err}");
        assert!(err.contains("cargo build --bins"), "{err}");
        std::env::remove_var("TESTBED_AGENT");
        let err = agent_binary(&exe)
            .expect_err("no agent beside the executable")
            .to_string();
        assert!(
            err.starts_with("the guest agent binary is missing"),
            "{err}"
        );
        assert!(
            err.contains(&dir.path().join("testbed-agent").display().to_string())
                && err.contains("cargo build --bins")
                && err.contains("TESTBED_AGENT"),
            "{err}"
        );
        let beside = dir.path().join("testbed-agent");
        std::fs::write(&beside, b"agent").expect("write");
        assert_eq!(agent_binary(&exe).expect("beside"), beside);
    }

    #[test]
    fn a_source_swapped_for_a_link_out_of_the_folder_is_refused_at_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let comp_dir = dir.path().join("comp");
        std::fs::create_dir(&comp_dir).expect("mkdir");
        std::fs::write(dir.path().join("secret"), b"secret").expect("write");
        std::fs::write(comp_dir.join("real.conf"), b"real").expect("write");
        let link = comp_dir.join("app.conf");
        std::os::unix::fs::symlink("real.conf", &link).expect("symlink");
        let toml = comp_dir.join("testbed.toml");
        std::fs::write(
            &toml,
            "[cluster]\nname = \"c\"\n[roles.r]\nfiles.\"/etc/app.conf\" = { source = \"app.conf\" }\n",
        )
        .expect("write");
        let comp = testbed_model::load(&toml).expect("valid");
        let built = specs(&comp, None).expect("inside the folder");
        assert_eq!(built[0].files[0].content, b"real");

        // Validated; then the link is pointed at a file outside.
        std::fs::remove_file(&link).expect("rm");
        std::os::unix::fs::symlink(dir.path().join("secret"), &link).expect("symlink");
        let err = specs(&comp, None).expect_err("refused");
        assert!(matches!(err, Error::Confined { .. }), "{err:?}");
        assert!(err.is_usage());
        assert_eq!(err.to_string(), "role r: a source file is refused");
        let cause = std::error::Error::source(&err).expect("cause").to_string();
        assert!(
            cause.contains("outside the composition's folder"),
            "{cause}"
        );

        // A file that is gone is an I/O error, as before.
        std::fs::remove_file(&link).expect("rm");
        let err = specs(&comp, None).expect_err("gone");
        assert!(matches!(err, Error::ReadFile { .. }), "{err:?}");
    }

    #[test]
    fn lock_notes_say_what_to_commit() {
        let created = LockNote::Created {
            path: "x/testbed.lock".into(),
        };
        assert_eq!(
            created.to_string(),
            "created x/testbed.lock (commit it: it pins every package version)"
        );
        let upgraded = LockNote::Upgraded {
            path: "testbed.lock".into(),
            from: 1,
            to: 2,
            points: vec!["20240101T000000Z".into()],
        };
        assert_eq!(
            upgraded.to_string(),
            "upgraded testbed.lock from format 1 to 2: added each role's snapshot point (20240101T000000Z, from its source-date-epoch) and archives; no package version changed (commit it)"
        );
    }
}
