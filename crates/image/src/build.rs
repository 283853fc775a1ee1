//! Build orchestration: from specs and a lock to store entries.
//!
//! For each role: compute the key (no I/O beyond reading the agent); a key
//! already in the store is a hit and costs nothing more. The misses are
//! deduplicated by key (roles with identical inputs build once), their
//! packages gathered into the store's package cache from whichever source
//! has them with the locked digest ([`crate::debs`]), then built in
//! parallel, each in its own `.tmp` directory of the store: a local
//! repository of exactly the locked files, mmdebstrap from it (no network),
//! check against the lock,
//! unit trims, static files and agent, services disabled, the agent's unit,
//! normalization, the boot
//! artifacts, the manifest, and an atomic rename into place.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::debs::{self, PackageSources};
use crate::error::{ImageError, IoContext, Result};
use crate::lock::{LockedPackage, Lockfile, RoleLock};
use crate::manifest::{KeyInputs, Manifest, MANIFEST};
use crate::progress::{Event, Progress, Step};
use crate::rootfs;
use crate::rootless::{self, Mapping};
use crate::spec::{ImageSpec, StaticFile};
use crate::store::{remove_tree, Store};
use crate::tools;

/// The files of a complete entry besides `manifest.json`.
pub const OUTPUTS: &[&str] = &[
    "kernel",
    "initramfs",
    "rootfs.erofs",
    crate::archive::ARCHIVE,
    "rootfs.files",
];

/// Free space one build needs while it runs: the tree (~400 MiB for a
/// systemd image), the downloaded packages, the erofs image and the archive.
pub const SPACE_PER_BUILD_MIB: u64 = 2048;

/// Why producing a boot artifact failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactError {
    /// The step, e.g. `erofs image`.
    pub step: &'static str,
    /// The cause.
    pub message: String,
}

/// Turns a finished root tree into the boot artifacts. The default,
/// [`DefaultArtifacts`], uses this crate's initramfs, erofs and archive
/// modules; tests and other backends may substitute their own.
pub trait Artifacts: Sync {
    /// Writes `kernel`, `initramfs`, `rootfs.erofs` and `rootfs.tar.gz` from
    /// the tree at `rootfs` into the directory `out`; every timestamp they
    /// record must be `epoch` or derived from the tree.
    fn build(&self, rootfs: &Path, out: &Path, epoch: u64) -> Result<(), ArtifactError>;
}

/// The artifacts testbed boots: our stage-1 initramfs, an erofs root and a
/// tar archive for container backends.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultArtifacts;

impl Artifacts for DefaultArtifacts {
    fn build(&self, rootfs: &Path, out: &Path, epoch: u64) -> Result<(), ArtifactError> {
        crate::artifacts::build_all(rootfs, out, epoch)
    }
}

/// Options of [`build`].
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The lock file the lock was read from: named in staleness errors and
    /// registered in the store so that `ls` and `gc` know who uses what.
    pub lock_path: Option<PathBuf>,
    /// At most this many builds at once; defaults to the available
    /// parallelism.
    pub jobs: Option<usize>,
    /// Where packages may come from besides the store's cache and the
    /// network, and whether the network may be used.
    pub packages: PackageSources,
}

/// The outcome for one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The role.
    pub role: String,
    /// The store key.
    pub key: String,
    /// The entry directory (holds [`OUTPUTS`] and `manifest.json`).
    pub dir: PathBuf,
    /// Whether the entry was already in the store.
    pub cached: bool,
    /// The entry's manifest.
    pub manifest: Manifest,
}

impl BuiltImage {
    /// The path of one output, e.g. `rootfs.erofs`.
    pub fn output(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The store key of each spec, checking the lock is fresh for it.
pub fn keys(specs: &[ImageSpec], lock: &Lockfile, lock_path: &Path) -> Result<Vec<String>> {
    specs
        .iter()
        .map(|s| Ok(KeyInputs::new(s, lock.role(s, lock_path)?)?.key()))
        .collect()
}

struct Job<'a> {
    key: String,
    roles: Vec<String>,
    spec: &'a ImageSpec,
    lock: &'a RoleLock,
    inputs: KeyInputs,
}

/// Builds every spec's image into `store` (or finds it there) and returns
/// them in the order of `specs`.
pub fn build(
    store: &Store,
    specs: &[ImageSpec],
    lock: &Lockfile,
    options: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Vec<BuiltImage>> {
    build_with(store, specs, lock, options, progress, &DefaultArtifacts)
}

/// [`build`] with a chosen [`Artifacts`] implementation.
pub fn build_with(
    store: &Store,
    specs: &[ImageSpec],
    lock: &Lockfile,
    options: &BuildOptions,
    progress: &dyn Progress,
    artifacts: &dyn Artifacts,
) -> Result<Vec<BuiltImage>> {
    let lock_path = options
        .lock_path
        .clone()
        .unwrap_or_else(|| PathBuf::from("testbed.lock"));
    let mut jobs: Vec<Job<'_>> = Vec::new();
    let mut role_keys: Vec<(String, String)> = Vec::new();
    let mut hits: BTreeSet<String> = BTreeSet::new();
    for spec in specs {
        let role_lock = lock.role(spec, &lock_path)?;
        let inputs = KeyInputs::new(spec, role_lock)?;
        let key = inputs.key();
        role_keys.push((spec.role.clone(), key.clone()));
        if store.lookup(&key).is_some() {
            hits.insert(spec.role.clone());
            progress.event(Event::CacheHit {
                role: spec.role.clone(),
                key,
            });
            continue;
        }
        if let Some(job) = jobs.iter_mut().find(|j| j.key == key) {
            progress.event(Event::SharedWith {
                role: spec.role.clone(),
                builder: job.roles[0].clone(),
            });
            job.roles.push(spec.role.clone());
            continue;
        }
        jobs.push(Job {
            key,
            roles: vec![spec.role.clone()],
            spec,
            lock: role_lock,
            inputs,
        });
    }

    if !jobs.is_empty() {
        run_jobs(store, jobs, options, progress, artifacts)?;
    }

    let mut out = Vec::with_capacity(specs.len());
    for (role, key) in &role_keys {
        let manifest = store.lookup(key).ok_or_else(|| ImageError::BadEntry {
            path: store.entry_dir(key),
            message: "missing after the build".into(),
        })?;
        out.push(BuiltImage {
            role: role.clone(),
            key: key.clone(),
            dir: store.entry_dir(key),
            cached: hits.contains(role),
            manifest,
        });
    }
    if options.lock_path.is_some() {
        let keys: BTreeMap<String, String> = role_keys.iter().cloned().collect();
        store.register(&lock_path, &keys)?;
    }
    Ok(out)
}

fn run_jobs(
    store: &Store,
    jobs: Vec<Job<'_>>,
    options: &BuildOptions,
    progress: &dyn Progress,
    artifacts: &dyn Artifacts,
) -> Result<()> {
    tools::require(tools::BUILD_TOOLS)?;
    // Not root: mmdebstrap's unshare mode and the same namespace for the
    // steps after it (crate::rootless).
    let rootless = if rootless::needed() {
        Some(rootless::probe().map_err(|problems| ImageError::Rootless { problems })?)
    } else {
        None
    };
    store.clean_stale(progress)?;
    let parallel = options
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, jobs.len().max(1));
    store.check_space(SPACE_PER_BUILD_MIB * parallel as u64)?;

    // Every role of a job, so that a missing package names them all.
    let roles: Vec<(&str, &RoleLock)> = jobs
        .iter()
        .flat_map(|j| j.roles.iter().map(move |r| (r.as_str(), j.lock)))
        .collect();
    for job in &jobs {
        progress.event(Event::Step {
            role: job.roles[0].clone(),
            step: Step::Packages,
        });
    }
    debs::fetch(store, &roles, &options.packages, progress)?;
    let queue = Mutex::new(VecDeque::from(jobs));
    let first_error: Mutex<Option<ImageError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| loop {
                if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                    return;
                }
                let Some(job) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                    return;
                };
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    build_one(store, &job, progress, artifacts, rootless.as_ref())
                }))
                .unwrap_or_else(|_| {
                    Err(ImageError::Panicked {
                        role: job.roles[0].clone(),
                    })
                });
                if let Err(e) = res {
                    if let Ok(mut slot) = first_error.lock() {
                        slot.get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_error.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

fn build_one(
    store: &Store,
    job: &Job<'_>,
    progress: &dyn Progress,
    artifacts: &dyn Artifacts,
    rootless: Option<&Mapping>,
) -> Result<()> {
    let started = Instant::now();
    let role = job.roles[0].as_str();
    let work = store.temp_dir(&job.key[..16])?;
    let result = (|| {
        let out = work.join("out");
        fs::create_dir(&out).at("cannot create", &out)?;
        let mut step = |step| {
            progress.event(Event::Step {
                role: role.to_string(),
                step,
            })
        };
        step(Step::Bootstrapping);
        if let Some(mapping) = rootless {
            // The tree is built where the subordinate root may reach it,
            // and belongs to it: only the namespace removes it.
            let scratch = rootless::Scratch::new(mapping, &job.key[..16])?;
            let repo = scratch.dir.join("repo");
            debs::local_repo(store, &repo, &job.lock.packages)?;
            readable_by_all(&repo)?;
            let tree = scratch.dir.join("rootfs");
            rootfs::bootstrap(
                &rootfs::Bootstrap {
                    role,
                    lock: job.lock,
                    repo: &repo,
                    debconf: &job.spec.debconf,
                    unshare: true,
                },
                &tree,
                &scratch.dir,
            )?;
            let agent = match job.spec.agent.as_deref() {
                Some(agent) => {
                    let copy = scratch.dir.join("agent");
                    fs::copy(agent, &copy).at("cannot copy the agent binary", agent)?;
                    Some(copy)
                }
                None => None,
            };
            let request = rootless::Request {
                role: role.to_owned(),
                tree,
                out: out.clone(),
                packages: job.lock.packages.clone(),
                files: job.spec.files.clone(),
                agent,
                epoch: job.lock.source_date_epoch,
                uid: mapping.uid,
                gid: mapping.gid,
                uids: mapping.uids,
                gids: mapping.gids,
            };
            rootless::finish_in_namespace(mapping, &scratch, &request, &mut step)?;
        } else {
            let tree = work.join("rootfs");
            let repo = work.join("repo");
            debs::local_repo(store, &repo, &job.lock.packages)?;
            rootfs::bootstrap(
                &rootfs::Bootstrap {
                    role,
                    lock: job.lock,
                    repo: &repo,
                    debconf: &job.spec.debconf,
                    unshare: false,
                },
                &tree,
                &work,
            )?;
            finish_tree(
                role,
                &tree,
                &out,
                &job.lock.packages,
                &job.spec.files,
                job.spec.agent.as_deref(),
                job.lock.source_date_epoch,
                artifacts,
                &mut step,
            )?;
        }
        step(Step::Committing);
        let manifest = Manifest::from_dir(&out, job.inputs.clone())?;
        for name in OUTPUTS {
            if !manifest.outputs.contains_key(*name) {
                return Err(ImageError::Artifact {
                    role: role.into(),
                    step: "outputs",
                    message: format!("the build produced no `{name}`"),
                });
            }
        }
        manifest.write(&out.join(MANIFEST))?;
        store.commit(&out, &job.key)?;
        Ok(())
    })();
    // The tree is large and useless once the outputs exist; a failed build
    // leaves nothing behind either (the next build would clean it anyway).
    let _ = crate::store::unmount_under(&work);
    let _ = remove_tree(&work);
    result?;
    progress.event(Event::Built {
        role: role.to_string(),
        key: job.key.clone(),
        elapsed: started.elapsed(),
    });
    Ok(())
}

/// Makes the local repository readable by the subordinate root that
/// mmdebstrap runs as (hard links from the package cache keep the cache's
/// modes, which a strict umask may have made private).
fn readable_by_all(repo: &Path) -> Result<()> {
    fs::set_permissions(repo, fs::Permissions::from_mode(0o755))
        .at("cannot set the mode of", repo)?;
    for entry in fs::read_dir(repo).at("cannot list", repo)? {
        let path = entry.at("cannot list", repo)?.path();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .at("cannot set the mode of", &path)?;
    }
    Ok(())
}

/// The steps after mmdebstrap, on the tree at `tree`: the check against
/// the lock, the static files and the agent, normalization, the listing
/// and the boot artifacts, into `out`. As root, in this process; rootless,
/// in the build's user namespace ([`rootless::finish`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish_tree(
    role: &str,
    tree: &Path,
    out: &Path,
    packages: &[LockedPackage],
    files: &[StaticFile],
    agent: Option<&Path>,
    epoch: u64,
    artifacts: &dyn Artifacts,
    step: &mut dyn FnMut(Step),
) -> Result<()> {
    rootfs::check_installed(role, tree, packages)?;
    step(Step::Customizing);
    rootfs::customize(role, tree, files, agent)?;
    step(Step::Normalizing);
    rootfs::normalize(tree, epoch)?;
    let listing = rootfs::listing(tree)?;
    let listing_path = out.join("rootfs.files");
    fs::write(&listing_path, listing).at("cannot write", &listing_path)?;
    step(Step::Artifacts);
    artifacts
        .build(tree, out, epoch)
        .map_err(|e| ImageError::Artifact {
            role: role.into(),
            step: e.step,
            message: e.message,
        })
}
