//! A composition's images: its roles as image specs (with the guest agent
//! every image carries), where packages may come from, the lock beside the
//! composition (created when missing, upgraded from an older format with a
//! note), and the build `up` does before booting, with the registry cache
//! of [`CacheSetting::resolve`] (docs/cache.md).
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
use testbed_model::{Composition, ConfineError, FileKind, ImageCache, Snapshot};
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
    // First, so that a broken config file stops the build before any work.
    let setting = CacheSetting::resolve(comp)?;
    let specs = specs(comp, Some(agent))?;
    let lock = ensure_lock(comp, &specs, packages, progress, notes)?;
    let (store, options) = store_and_options(comp, packages)?;
    let first_role = specs.first().map_or("", |s| s.role.as_str());
    let cache = setting.and_then(|setting| {
        let keys = testbed_image::keys(&specs, &lock, &lock_path(comp)).ok()?;
        cache_note(progress, first_role, setting.to_string());
        let registry = match testbed_cache::Registry::open(&setting.repository) {
            Ok(registry) => registry,
            Err(e) => {
                cache_note(
                    progress,
                    first_role,
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
/// after (docs/cache.md), and which setting said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSetting {
    /// `HOST[:PORT]/PATH`.
    pub repository: String,
    /// Whether images the registry lacks are pushed after the build.
    pub push: bool,
    /// Where `repository` came from.
    pub source: CacheSource,
}

/// Where a [`CacheSetting`]'s repository came from, most specific first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheSource {
    /// The environment variable `TESTBED_CACHE`.
    Environment,
    /// `[cluster] cache` of the composition.
    Composition,
    /// `[cache] repository` of the user's config file, at this path.
    ConfigFile(PathBuf),
}

impl fmt::Display for CacheSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheSource::Environment => f.write_str("TESTBED_CACHE"),
            CacheSource::Composition => f.write_str("the composition"),
            CacheSource::ConfigFile(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The progress line that says which cache a build uses.
impl fmt::Display for CacheSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cache {} (from {})", self.repository, self.source)?;
        if self.push {
            f.write_str(", pushing the images it lacks")?;
        }
        Ok(())
    }
}

/// The environment variables of the cache, as set (`None`: unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheEnv {
    /// `TESTBED_CACHE`: a repository, or `off`.
    pub cache: Option<String>,
    /// `TESTBED_CACHE_PUSH`: `1`, `true`, `yes`, or `0`, `false`, `no`.
    pub push: Option<String>,
}

impl CacheEnv {
    /// The variables of this process's environment.
    pub fn from_process() -> CacheEnv {
        CacheEnv {
            cache: std::env::var("TESTBED_CACHE").ok(),
            push: std::env::var("TESTBED_CACHE_PUSH").ok(),
        }
    }

    /// `TESTBED_CACHE_PUSH` as a choice; unset or empty is none.
    fn push(&self) -> Result<Option<bool>, Error> {
        let Some(value) = self
            .push
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
        else {
            return Ok(None);
        };
        match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" => Ok(Some(true)),
            "0" | "false" | "no" => Ok(Some(false)),
            _ => Err(Error::Usage(format!(
                "TESTBED_CACHE_PUSH is \"{value}\": set it to 1 to push the images the cache lacks, 0 not to, or unset it"
            ))),
        }
    }
}

impl CacheSetting {
    /// The setting for a build of `comp`, from this process's environment,
    /// the composition and the user's config file
    /// ([`crate::config::default_path`]); see [`CacheSetting::resolve_from`].
    pub fn resolve(comp: &Composition) -> Result<Option<CacheSetting>, Error> {
        CacheSetting::resolve_from(
            &CacheEnv::from_process(),
            comp.cluster.cache.as_ref(),
            crate::config::default_path().as_deref(),
        )
    }

    /// The setting, most specific first: `TESTBED_CACHE` (`off`: no cache,
    /// whatever the files say), then the composition's `[cluster] cache`,
    /// then `[cache]` of the config file at `config` (read here; a missing
    /// file is no setting). Pushing goes with the repository chosen (a
    /// config file's `push` never pushes to the composition's cache), and
    /// `TESTBED_CACHE_PUSH` overrides it whichever that is.
    ///
    /// The config file is read and checked whatever else is set, so that
    /// a mistake in it shows at once; a broken one is an error with its
    /// location ([`Error::Composition`]), as is a `TESTBED_CACHE_PUSH` that
    /// is neither yes nor no ([`Error::Usage`]). `TESTBED_CACHE` itself is
    /// not checked here: a repository the cache client refuses is a
    /// warning at the build, which goes on locally.
    pub fn resolve_from(
        env: &CacheEnv,
        composition: Option<&ImageCache>,
        config: Option<&Path>,
    ) -> Result<Option<CacheSetting>, Error> {
        let from_file = match config {
            Some(path) => crate::config::read(path)?
                .and_then(|c| c.cache)
                .map(|c| (path, c)),
            None => None,
        };
        let push_override = env.push()?;
        let from_env = env.cache.as_deref().filter(|v| !v.trim().is_empty());
        let chosen = match from_env {
            Some(off) if off.trim() == "off" => return Ok(None),
            Some(repository) => CacheSetting {
                repository: repository.to_owned(),
                push: false,
                source: CacheSource::Environment,
            },
            None => match (composition, from_file) {
                (Some(c), _) => CacheSetting {
                    repository: c.repository.clone(),
                    push: c.push,
                    source: CacheSource::Composition,
                },
                (None, Some((path, c))) => CacheSetting {
                    repository: c.repository,
                    push: c.push,
                    source: CacheSource::ConfigFile(path.to_path_buf()),
                },
                (None, None) => return Ok(None),
            },
        };
        Ok(Some(CacheSetting {
            push: push_override.unwrap_or(chosen.push),
            ..chosen
        }))
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

    /// An environment with `TESTBED_CACHE` and `TESTBED_CACHE_PUSH` as given.
    fn env(cache: Option<&str>, push: Option<&str>) -> CacheEnv {
        CacheEnv {
            cache: cache.map(str::to_owned),
            push: push.map(str::to_owned),
        }
    }

    /// A config file in a temporary folder with `text`.
    fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    fn setting(repository: &str, push: bool, source: CacheSource) -> Option<CacheSetting> {
        Some(CacheSetting {
            repository: repository.to_owned(),
            push,
            source,
        })
    }

    #[test]
    fn the_environment_wins_then_the_composition_then_the_config_file() {
        let (_dir, file) =
            config_file("[cache]\nrepository = \"localhost:5000/mine\"\npush = true\n");
        let comp = ImageCache {
            repository: "127.0.0.1:5000/team/slurm".into(),
            push: false,
        };
        let none = env(None, None);
        let resolve = |env: &CacheEnv, comp: Option<&ImageCache>, file: Option<&Path>| {
            CacheSetting::resolve_from(env, comp, file).expect("resolves")
        };
        // Nothing anywhere (no file, or one that is not there): no cache.
        assert_eq!(resolve(&none, None, None), None);
        assert_eq!(
            resolve(&none, None, Some(&file.with_file_name("absent.toml"))),
            None
        );
        // The config file alone.
        assert_eq!(
            resolve(&none, None, Some(&file)),
            setting(
                "localhost:5000/mine",
                true,
                CacheSource::ConfigFile(file.clone())
            )
        );
        // The composition over the config file; the file's push does not
        // follow to the composition's repository.
        assert_eq!(
            resolve(&none, Some(&comp), Some(&file)),
            setting("127.0.0.1:5000/team/slurm", false, CacheSource::Composition)
        );
        // TESTBED_CACHE over both; an empty one is unset.
        let over = env(Some("registry.example/ci"), None);
        assert_eq!(
            resolve(&over, Some(&comp), Some(&file)),
            setting("registry.example/ci", false, CacheSource::Environment)
        );
        assert_eq!(
            resolve(&env(Some(" "), None), Some(&comp), Some(&file)),
            setting("127.0.0.1:5000/team/slurm", false, CacheSource::Composition)
        );
        // TESTBED_CACHE=off: no cache, whatever the files say.
        assert_eq!(
            resolve(&env(Some("off"), Some("1")), Some(&comp), Some(&file)),
            None
        );
        // TESTBED_CACHE_PUSH overrides the push of whichever repository
        // was chosen, either way; empty is unset.
        assert_eq!(
            resolve(&env(None, Some("1")), Some(&comp), None),
            setting("127.0.0.1:5000/team/slurm", true, CacheSource::Composition)
        );
        assert_eq!(
            resolve(&env(None, Some("0")), None, Some(&file)),
            setting(
                "localhost:5000/mine",
                false,
                CacheSource::ConfigFile(file.clone())
            )
        );
        assert_eq!(
            resolve(&env(Some("registry.example/ci"), Some("TRUE")), None, None),
            setting("registry.example/ci", true, CacheSource::Environment)
        );
        assert_eq!(
            resolve(&env(None, Some("")), None, Some(&file)),
            setting(
                "localhost:5000/mine",
                true,
                CacheSource::ConfigFile(file.clone())
            )
        );
        // Pushing with nowhere to push to is no cache, as before.
        assert_eq!(resolve(&env(None, Some("1")), None, None), None);
    }

    #[test]
    fn a_broken_config_file_or_push_variable_is_an_error_whatever_else_is_set() {
        let (_dir, file) = config_file("[cache]\nrepository = \"localhost:5000/x\"\npush = 1\n");
        for env in [
            env(None, None),
            env(Some("off"), None),
            env(Some("localhost/y"), None),
        ] {
            let err = CacheSetting::resolve_from(&env, None, Some(&file)).expect_err("broken file");
            assert!(err.is_usage(), "{err:?}");
            let text = err.to_string();
            assert!(
                text.starts_with(&format!(
                    "{}:3:8: invalid type: integer `1`, expected a boolean",
                    file.display()
                )),
                "{text}"
            );
        }
        let err = CacheSetting::resolve_from(&env(Some("localhost/y"), Some("on")), None, None)
            .expect_err("neither yes nor no");
        assert!(err.is_usage(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "TESTBED_CACHE_PUSH is \"on\": set it to 1 to push the images the cache lacks, 0 not to, or unset it"
        );
    }

    #[test]
    fn the_progress_line_names_the_cache_and_where_it_came_from() {
        let line = |push, source| {
            CacheSetting {
                repository: "127.0.0.1:5000/x".into(),
                push,
                source,
            }
            .to_string()
        };
        assert_eq!(
            line(false, CacheSource::Composition),
            "cache 127.0.0.1:5000/x (from the composition)"
        );
        assert_eq!(
            line(true, CacheSource::Environment),
            "cache 127.0.0.1:5000/x (from TESTBED_CACHE), pushing the images it lacks"
        );
        assert_eq!(
            line(
                false,
                CacheSource::ConfigFile("/home/u/.config/testbed/config.toml".into())
            ),
            "cache 127.0.0.1:5000/x (from /home/u/.config/testbed/config.toml)"
        );
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
