//! `testbed.lock`: every package each role's image installs, with its exact
//! version, architecture and the SHA-256 of its `.deb` from the archive
//! index, plus the `SOURCE_DATE_EPOCH` the image is built with.
//!
//! Since format 2 every role also records its *snapshot point*: the time
//! of the archive state it was resolved against (`YYYYMMDDTHHMMSSZ`, the
//! timestamp form of Debian's snapshot archive) and the archives it was
//! resolved against, by name (`debian bookworm main`). When the mirror no
//! longer serves a locked version, the build finds it in a snapshot archive
//! at that point (see [`crate::debs`]). Format 1 locks (no snapshot point)
//! are read and upgraded with [`Lockfile::upgrade`].
//!
//! The file is TOML written by hand (not by serde) so that it is one line
//! per package, sorted, and byte-identical when re-locking changes nothing.
//! Resolution runs the host's apt against a private tree (see [`crate::apt`])
//! and installs what mmdebstrap's `apt` variant installs: the
//! `Essential: yes` set and apt, plus [`ALWAYS`], the kernel and the role's
//! packages. Because every package is pinned at build time, the build
//! realises exactly this set.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::apt::{self, AptRoot, PackageIndex, SourceLine};
use crate::error::{ImageError, IoContext, Result};
use crate::progress::{Event, Progress};
use crate::snapshot;
use crate::spec::ImageSpec;

/// Packages every image needs whatever the role: an init system and the
/// device manager (without udev, units waiting for devices stall), the
/// tools activation and tests use, the static busybox the stage-1
/// initramfs is made of, and the OpenSSH server that `testbed ssh` runs
/// through the agent (installed but not enabled; its host keys are removed
/// from the image and sent per node at activation).
pub const ALWAYS: &[&str] = &[
    "busybox-static",
    "iproute2",
    "iputils-ping",
    "openssh-server",
    "procps",
    "systemd",
    "systemd-sysv",
    "udev",
];

/// The lock file format version written by this builder.
pub const LOCK_VERSION: u32 = 2;

/// The oldest format version this builder still reads (and upgrades).
pub const OLDEST_LOCK_VERSION: u32 = 1;

/// The whole lock file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    /// Format version, [`LOCK_VERSION`].
    pub version: u32,
    /// Per role, by role name.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleLock>,
}

/// What one role's image is built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RoleLock {
    /// Distribution vendor, e.g. `debian`.
    pub vendor: String,
    /// Distribution suite, e.g. `bookworm`.
    pub suite: String,
    /// The mirror set in the composition, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// The Debian architecture, e.g. `amd64`.
    pub architecture: String,
    /// The kernel package asked for.
    pub kernel: String,
    /// The role's packages as the composition lists them; the staleness
    /// check compares against this.
    pub requested: Vec<String>,
    /// `SOURCE_DATE_EPOCH` for the build: every timestamp in the image is
    /// clamped to it.
    pub source_date_epoch: u64,
    /// The snapshot point: when the archive was in the state this role was
    /// resolved against, as `YYYYMMDDTHHMMSSZ`. Absent in format 1 locks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The archives this role was resolved against, by name, suite and
    /// components (`debian-security bookworm-security main`): what a
    /// snapshot archive is asked for. Absent in format 1 locks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub archives: Vec<String>,
    /// Every installed package, sorted by name.
    pub packages: Vec<LockedPackage>,
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    /// The package name.
    pub name: String,
    /// The exact version.
    pub version: String,
    /// `all` or the native architecture.
    pub arch: String,
    /// SHA-256 of the `.deb`, from the archive index.
    pub sha256: String,
}

impl Lockfile {
    /// Reads a lock file.
    pub fn read(path: &Path) -> Result<Lockfile> {
        let text = fs::read_to_string(path).at("cannot read", path)?;
        Lockfile::parse(&text, path)
    }

    /// Reads a lock file if it exists.
    pub fn read_if_exists(path: &Path) -> Result<Option<Lockfile>> {
        if path.exists() {
            Lockfile::read(path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Parses lock file text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Lockfile> {
        let lock: Lockfile = toml::from_str(text).map_err(|e| ImageError::BadLock {
            path: path.to_path_buf(),
            message: e.to_string().trim().to_string(),
        })?;
        if !(OLDEST_LOCK_VERSION..=LOCK_VERSION).contains(&lock.version) {
            return Err(ImageError::BadLock {
                path: path.to_path_buf(),
                message: format!(
                    "format version {} is not supported (this testbed reads {OLDEST_LOCK_VERSION} to {LOCK_VERSION}); run `testbed lock --update`",
                    lock.version
                ),
            });
        }
        if let Err(message) = lock.validate() {
            return Err(ImageError::BadLock {
                path: path.to_path_buf(),
                message,
            });
        }
        if lock.version == LOCK_VERSION {
            if let Some((role, _)) = lock.roles.iter().find(|(_, r)| r.snapshot.is_none()) {
                return Err(ImageError::BadLock {
                    path: path.to_path_buf(),
                    message: format!(
                        "role `{role}` has no `snapshot` point; run `testbed lock --update`"
                    ),
                });
            }
        }
        for (role, r) in &lock.roles {
            if let Some(ts) = &r.snapshot {
                if snapshot::parse_timestamp(ts).is_none() {
                    return Err(ImageError::BadLock {
                        path: path.to_path_buf(),
                        message: format!(
                            "role `{role}`: snapshot `{ts}` is not a timestamp of the form YYYYMMDDTHHMMSSZ"
                        ),
                    });
                }
            }
        }
        Ok(lock)
    }

    /// Checks every field that becomes a file name, a URL, an apt argument
    /// or a line of an index: a lock may come from someone else's
    /// repository, and builds run as root, so a name like `../x` or a
    /// digest like `/etc/passwd` must never reach a path.
    fn validate(&self) -> std::result::Result<(), String> {
        fn all(s: &str, ok: impl Fn(char) -> bool) -> bool {
            !s.is_empty() && s.chars().all(ok)
        }
        let name = |s: &str| {
            s.len() >= 2
                && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && all(s, |c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c)
                })
        };
        let version = |s: &str| {
            s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && all(s, |c| c.is_ascii_alphanumeric() || ".+~:-".contains(c))
        };
        let word = |s: &str| all(s, |c| c.is_ascii_alphanumeric() || "._-".contains(c));
        let url = |s: &str| all(s, |c| c.is_ascii_graphic() && !"[]\"'\\".contains(c));
        for (role, r) in &self.roles {
            let bad = |what: &str, value: &str| {
                Err(format!(
                    "role `{role}`: {what} `{}` is not valid",
                    value.escape_debug()
                ))
            };
            for (what, value) in [
                ("vendor", &r.vendor),
                ("suite", &r.suite),
                ("architecture", &r.architecture),
            ] {
                if !word(value) {
                    return bad(what, value);
                }
            }
            if let Some(m) = r.mirror.as_deref().filter(|m| !url(m)) {
                return bad("mirror", m);
            }
            for a in &r.archives {
                if a.split(' ').count() < 2 || !a.split(' ').all(word) {
                    return bad("archive", a);
                }
            }
            for p in &r.packages {
                if !name(&p.name) {
                    return bad("package name", &p.name);
                }
                if !version(&p.version) {
                    return bad(&format!("version of `{}`", p.name), &p.version);
                }
                if !word(&p.arch) || p.arch.contains('.') {
                    return bad(&format!("architecture of `{}`", p.name), &p.arch);
                }
                let hex = p.sha256.len() == 64
                    && p.sha256.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
                if !hex {
                    return bad(&format!("sha256 of `{}`", p.name), &p.sha256);
                }
            }
        }
        Ok(())
    }

    /// Brings a format 1 lock to the current format without changing any
    /// package: each role's snapshot point is its `source-date-epoch`
    /// (which `lock` takes from the archive state the packages were
    /// resolved against, and keeps only while they stay the same, so every
    /// locked version was in the archive at that time), and its archives
    /// are named from `sources` (the sources the role resolves against
    /// today). Returns whether anything changed; image keys never do.
    pub fn upgrade(
        &mut self,
        sources: impl Fn(&RoleLock) -> Result<Vec<SourceLine>>,
    ) -> Result<bool> {
        if self.version == LOCK_VERSION {
            return Ok(false);
        }
        for r in self.roles.values_mut() {
            if r.snapshot.is_none() {
                r.snapshot = Some(snapshot::format_timestamp(r.source_date_epoch));
            }
            if r.archives.is_empty() {
                r.archives = snapshot::archives(&sources(r)?);
            }
        }
        self.version = LOCK_VERSION;
        Ok(true)
    }

    /// What changed from `old` to `self`, one line per role and package:
    /// what `lock --update` reports, so that versions never change
    /// silently.
    pub fn changes_from(&self, old: &Lockfile) -> Vec<String> {
        let mut out = Vec::new();
        for (role, new) in &self.roles {
            let Some(prev) = old.roles.get(role) else {
                out.push(format!("{role}: new role, {} packages", new.packages.len()));
                continue;
            };
            let before: BTreeMap<&str, &str> = prev
                .packages
                .iter()
                .map(|p| (p.name.as_str(), p.version.as_str()))
                .collect();
            let after: BTreeMap<&str, &str> = new
                .packages
                .iter()
                .map(|p| (p.name.as_str(), p.version.as_str()))
                .collect();
            for (name, v) in &after {
                match before.get(name) {
                    None => out.push(format!("{role}: {name} {v} (added)")),
                    Some(old_v) if old_v != v => out.push(format!("{role}: {name} {old_v} -> {v}")),
                    Some(_) => {}
                }
            }
            for (name, v) in &before {
                if !after.contains_key(name) {
                    out.push(format!("{role}: {name} {v} (removed)"));
                }
            }
        }
        for role in old.roles.keys().filter(|r| !self.roles.contains_key(*r)) {
            out.push(format!("{role}: role removed"));
        }
        out
    }

    /// Writes the lock file atomically (temp file, then rename), so a reader
    /// never sees half a lock.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("lock.tmp");
        fs::write(&tmp, self.to_toml()).at("cannot write", &tmp)?;
        fs::rename(&tmp, path).at("cannot replace", path)
    }

    /// The canonical text: sorted, one line per package.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        out.push_str("# testbed.lock: written by `testbed lock`, do not edit by hand.\n");
        out.push_str("# Per role, every package its image installs, with the exact version and\n");
        out.push_str("# the SHA-256 of the .deb as the archive index lists it, and the snapshot\n");
        out.push_str("# point: when the archive held exactly these versions (docs/images.md).\n");
        let _ = writeln!(out, "version = {}", self.version);
        for (role, r) in &self.roles {
            let _ = writeln!(out, "\n[roles.{}]", key(role));
            let _ = writeln!(out, "vendor = {}", quote(&r.vendor));
            let _ = writeln!(out, "suite = {}", quote(&r.suite));
            if let Some(m) = &r.mirror {
                let _ = writeln!(out, "mirror = {}", quote(m));
            }
            let _ = writeln!(out, "architecture = {}", quote(&r.architecture));
            let _ = writeln!(out, "kernel = {}", quote(&r.kernel));
            let requested: Vec<String> = r.requested.iter().map(|p| quote(p)).collect();
            let _ = writeln!(out, "requested = [{}]", requested.join(", "));
            let _ = writeln!(out, "source-date-epoch = {}", r.source_date_epoch);
            if let Some(ts) = &r.snapshot {
                let _ = writeln!(out, "snapshot = {}", quote(ts));
            }
            if !r.archives.is_empty() {
                let archives: Vec<String> = r.archives.iter().map(|a| quote(a)).collect();
                let _ = writeln!(out, "archives = [{}]", archives.join(", "));
            }
            out.push_str("packages = [\n");
            for p in &r.packages {
                let _ = writeln!(
                    out,
                    "  {{ name = {}, version = {}, arch = {}, sha256 = {} }},",
                    quote(&p.name),
                    quote(&p.version),
                    quote(&p.arch),
                    quote(&p.sha256)
                );
            }
            out.push_str("]\n");
        }
        out
    }

    /// Checks that the lock covers `specs`: every role is there, with the
    /// same distribution, kernel and packages. `path` is for messages.
    pub fn check_fresh(&self, specs: &[ImageSpec], path: &Path) -> Result<()> {
        for spec in specs {
            let stale = |reason: String| ImageError::StaleLock {
                path: path.to_path_buf(),
                role: spec.role.clone(),
                reason,
            };
            let Some(r) = self.roles.get(&spec.role) else {
                return Err(stale("the role is not in it".into()));
            };
            if let Some(reason) = r.differs_from(spec) {
                return Err(stale(reason));
            }
        }
        Ok(())
    }

    /// The lock of one role, checked against its spec.
    pub fn role(&self, spec: &ImageSpec, path: &Path) -> Result<&RoleLock> {
        self.check_fresh(std::slice::from_ref(spec), path)?;
        self.roles
            .get(&spec.role)
            .ok_or_else(|| ImageError::StaleLock {
                path: path.to_path_buf(),
                role: spec.role.clone(),
                reason: "the role is not in it".into(),
            })
    }
}

impl RoleLock {
    /// Why this lock does not fit `spec`, if it does not.
    pub fn differs_from(&self, spec: &ImageSpec) -> Option<String> {
        if self.vendor != spec.vendor || self.suite != spec.suite {
            return Some(format!(
                "it is for {}/{}, the composition asks for {}/{}",
                self.vendor, self.suite, spec.vendor, spec.suite
            ));
        }
        if self.mirror != spec.mirror {
            return Some("the mirror changed".into());
        }
        if self.kernel != spec.kernel {
            return Some(format!(
                "it has kernel `{}`, the composition asks for `{}`",
                self.kernel, spec.kernel
            ));
        }
        let locked: BTreeSet<&str> = self.requested.iter().map(String::as_str).collect();
        let wanted: BTreeSet<&str> = spec.packages.iter().map(String::as_str).collect();
        let missing: Vec<&str> = wanted.difference(&locked).copied().collect();
        if !missing.is_empty() {
            return Some(format!("packages {} are not in it", list(&missing)));
        }
        let removed: Vec<&str> = locked.difference(&wanted).copied().collect();
        if !removed.is_empty() {
            return Some(format!(
                "packages {} were removed from the role",
                list(&removed)
            ));
        }
        let names: BTreeSet<&str> = self.packages.iter().map(|p| p.name.as_str()).collect();
        let absent: Vec<&str> = ALWAYS
            .iter()
            .copied()
            .filter(|p| !names.contains(p))
            .collect();
        if !absent.is_empty() {
            return Some(format!(
                "packages every image needs ({}) are not in it",
                list(&absent)
            ));
        }
        None
    }
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML key: bare when it can be, quoted otherwise.
fn key(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        s.to_string()
    } else {
        quote(s)
    }
}

/// Options of [`lock`].
#[derive(Debug, Clone, Default)]
pub struct LockOptions {
    /// A directory for the private apt trees; the system temp dir if unset.
    pub work_dir: Option<PathBuf>,
}

/// Resolves every role's package set against the archive and returns the
/// new lock. Roles whose resolved packages are unchanged keep their
/// `SOURCE_DATE_EPOCH` from `previous`, so re-locking an unchanged
/// composition gives a byte-identical file.
pub fn lock(
    specs: &[ImageSpec],
    previous: Option<&Lockfile>,
    options: &LockOptions,
    progress: &dyn Progress,
) -> Result<Lockfile> {
    let arch = apt::host_arch()?;
    let network = apt::host_network_config()?;
    let mut out = Lockfile {
        version: LOCK_VERSION,
        roles: BTreeMap::new(),
    };
    // Roles of the same distribution and mirror share one index download.
    let mut groups: BTreeMap<(String, String, Option<String>), Vec<&ImageSpec>> = BTreeMap::new();
    for spec in specs {
        groups
            .entry((spec.vendor.clone(), spec.suite.clone(), spec.mirror.clone()))
            .or_default()
            .push(spec);
    }
    for ((vendor, suite, mirror), group) in groups {
        let sources = apt::sources_for(&vendor, &suite, mirror.as_deref())?;
        let tmp = temp_dir(options.work_dir.as_deref(), "testbed-lock-")?;
        let root = AptRoot::create(tmp.path(), &sources, &arch, &network)?;
        progress.event(Event::UpdatingIndex {
            distro: format!("{vendor}/{suite}"),
        });
        root.update()?;
        let index = root.index()?;
        for spec in group {
            progress.event(Event::Resolving {
                role: spec.role.clone(),
            });
            let packages = resolve(&root, &index, spec)?;
            let kept = previous
                .and_then(|p| p.roles.get(&spec.role))
                .filter(|old| old.packages == packages);
            // A fresh lock takes the archive's own date, so that two people
            // locking against the same archive state get the same file; the
            // snapshot point is that date too. Unchanged packages keep both:
            // they were in the archive then as they are now.
            let epoch = kept
                .map(|old| old.source_date_epoch)
                .or(index.release_date)
                .unwrap_or_else(now_unix);
            let snapshot_point = kept
                .and_then(|old| old.snapshot.clone())
                .unwrap_or_else(|| snapshot::format_timestamp(epoch));
            progress.event(Event::Locked {
                role: spec.role.clone(),
                packages: packages.len(),
            });
            out.roles.insert(
                spec.role.clone(),
                RoleLock {
                    vendor: spec.vendor.clone(),
                    suite: spec.suite.clone(),
                    mirror: spec.mirror.clone(),
                    architecture: arch.clone(),
                    kernel: spec.kernel.clone(),
                    requested: sorted(&spec.packages),
                    source_date_epoch: epoch,
                    snapshot: Some(snapshot_point),
                    archives: snapshot::archives(&sources),
                    packages,
                },
            );
        }
    }
    Ok(out)
}

fn sorted(v: &[String]) -> Vec<String> {
    let set: BTreeSet<&String> = v.iter().collect();
    set.into_iter().cloned().collect()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn temp_dir(base: Option<&Path>, prefix: &str) -> Result<tempfile::TempDir> {
    let base = base.map_or_else(std::env::temp_dir, Path::to_path_buf);
    fs::create_dir_all(&base).at("cannot create", &base)?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .at("cannot create a temporary directory in", &base)
}

/// The full package set of one role, from an updated private apt tree.
pub(crate) fn resolve(
    root: &AptRoot,
    index: &PackageIndex,
    spec: &ImageSpec,
) -> Result<Vec<LockedPackage>> {
    let mut wanted: Vec<String> = Vec::new();
    for name in spec
        .packages
        .iter()
        .map(String::as_str)
        .chain([spec.kernel.as_str()])
        .chain(ALWAYS.iter().copied())
    {
        if !index.knows(name) {
            return Err(ImageError::UnknownPackage {
                role: spec.role.clone(),
                package: name.to_string(),
                suite: format!("{}/{}", spec.vendor, spec.suite),
                suggestions: index.suggest(name, 3),
            });
        }
        wanted.push(name.to_string());
    }
    // mmdebstrap's `apt` variant installs the essential set and apt first;
    // asking for them explicitly in one transaction gives the same set.
    wanted.extend(index.essential());
    wanted.push("apt".into());
    let wanted = sorted(&wanted);
    let resolved = root
        .simulate_install(&wanted)
        .map_err(|message| ImageError::Unresolvable {
            role: spec.role.clone(),
            message,
        })?;
    let mut out = Vec::with_capacity(resolved.len());
    for r in resolved {
        let entry =
            index
                .find(&r.name, &r.version, &r.arch)
                .ok_or_else(|| ImageError::Unresolvable {
                    role: spec.role.clone(),
                    message: format!(
                        "apt chose {} {} ({}) which is not in the downloaded index",
                        r.name, r.version, r.arch
                    ),
                })?;
        out.push(LockedPackage {
            name: r.name,
            version: r.version,
            arch: r.arch,
            sha256: entry.sha256.clone(),
        });
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(packages: &[&str]) -> ImageSpec {
        ImageSpec {
            role: "ctl".into(),
            vendor: "debian".into(),
            suite: "bookworm".into(),
            mirror: None,
            kernel: "linux-image-cloud-amd64".into(),
            packages: packages.iter().map(|p| p.to_string()).collect(),
            debconf: vec![],
            files: vec![],
            agent: None,
        }
    }

    fn sample() -> Lockfile {
        let mut packages: Vec<LockedPackage> = ALWAYS
            .iter()
            .map(|n| LockedPackage {
                name: n.to_string(),
                version: "1:2.3-4+deb12u1".into(),
                arch: "amd64".into(),
                sha256: "ab".repeat(32),
            })
            .collect();
        packages.push(LockedPackage {
            name: "munge".into(),
            version: "0.5.15-2".into(),
            arch: "amd64".into(),
            sha256: "cd".repeat(32),
        });
        packages.sort();
        let mut roles = BTreeMap::new();
        roles.insert(
            "ctl".to_string(),
            RoleLock {
                vendor: "debian".into(),
                suite: "bookworm".into(),
                mirror: None,
                architecture: "amd64".into(),
                kernel: "linux-image-cloud-amd64".into(),
                requested: vec!["munge".into()],
                source_date_epoch: 1_746_869_602,
                snapshot: Some("20250510T093322Z".into()),
                archives: vec!["debian bookworm main".into()],
                packages,
            },
        );
        roles.insert(
            "odd role".to_string(),
            RoleLock {
                mirror: Some("http://example.invalid/debian".into()),
                ..roles["ctl"].clone()
            },
        );
        Lockfile {
            version: LOCK_VERSION,
            roles,
        }
    }

    #[test]
    fn lock_round_trips_and_is_canonical() {
        let lock = sample();
        let text = lock.to_toml();
        let back = Lockfile::parse(&text, Path::new("testbed.lock")).expect("parses");
        assert_eq!(back, lock);
        assert_eq!(back.to_toml(), text);
        assert!(text.contains("[roles.\"odd role\"]"));
        assert!(text.contains(
            "  { name = \"munge\", version = \"0.5.15-2\", arch = \"amd64\", sha256 = \""
        ));
    }

    #[test]
    fn bad_lock_names_the_file() {
        let err = Lockfile::parse("version = 1\nroles = 3\n", Path::new("/x/testbed.lock"))
            .expect_err("invalid");
        assert!(err
            .to_string()
            .starts_with("/x/testbed.lock: invalid lock file"));
        let err = Lockfile::parse("version = 9\n", Path::new("t.lock")).expect_err("version");
        assert!(err.to_string().contains("format version 9"));
        let mut text = sample().to_toml();
        text = text.replace("20250510T093322Z", "2025-05-10");
        let err = Lockfile::parse(&text, Path::new("t.lock")).expect_err("timestamp");
        assert!(
            err.to_string().contains("`2025-05-10` is not a timestamp"),
            "{err}"
        );
    }

    #[test]
    fn hostile_fields_never_reach_a_path_or_an_argument() {
        let good = sample().to_toml();
        let cases = [
            (
                "sha256 = \"abababababababababababababababababababababababababababababababab\" }",
                "sha256 = \"../../../etc/passwd\" }",
                "sha256 of",
            ),
            ("name = \"munge\"", "name = \"../x\"", "package name `../x`"),
            ("name = \"munge\"", "name = \"-oDebug=1\"", "package name"),
            ("name = \"munge\"", "name = \"mu\\nnge\"", "package name"),
            (
                "version = \"0.5.15-2\"",
                "version = \"1/../2\"",
                "version of `munge`",
            ),
            (
                "arch = \"amd64\", sha256 = \"cd",
                "arch = \"../a\", sha256 = \"cd",
                "architecture of",
            ),
            (
                "suite = \"bookworm\"",
                "suite = \"bookworm main\\ndeb x\"",
                "suite",
            ),
            (
                "mirror = \"http://example.invalid/debian\"",
                "mirror = \"http://x/ bookworm\"",
                "mirror",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(good.contains(from), "{from}");
            let text = good.replacen(from, to, 1);
            let err = Lockfile::parse(&text, Path::new("t.lock")).expect_err(to);
            assert!(err.to_string().contains(expected), "{to}: {err}");
        }
    }

    #[test]
    fn a_format_1_lock_is_read_and_upgraded_without_changing_a_package() {
        let new = sample();
        // What a format 1 lock looked like: no snapshot point, no archives.
        let old_text = new
            .to_toml()
            .replace("version = 2", "version = 1")
            .lines()
            .filter(|l| !l.starts_with("snapshot = ") && !l.starts_with("archives = "))
            .collect::<Vec<_>>()
            .join("\n");
        let mut old = Lockfile::parse(&old_text, Path::new("t.lock")).expect("format 1 reads");
        assert_eq!(old.version, 1);
        assert!(old.roles["ctl"].snapshot.is_none());
        let sources = |_: &RoleLock| {
            Ok(vec![SourceLine {
                uri: "http://mirror.example.invalid/debian".into(),
                suite: "bookworm".into(),
                components: vec!["main".into()],
                signed_by: None,
                trusted: false,
            }])
        };
        assert!(old.upgrade(sources).expect("upgrade"));
        // The snapshot point is the epoch, the archives are named, and the
        // packages (so the image keys) are those of the old file.
        assert_eq!(old, new);
        assert!(!old.upgrade(sources).expect("again"), "already current");
        assert!(old.changes_from(&new).is_empty());
        // A format 2 lock must have its snapshot point.
        let missing = new
            .to_toml()
            .replace("snapshot = \"20250510T093322Z\"\n", "");
        let err = Lockfile::parse(&missing, Path::new("t.lock")).expect_err("no point");
        assert!(err.to_string().contains("has no `snapshot` point"), "{err}");
    }

    #[test]
    fn changes_name_every_moved_package() {
        let old = sample();
        let mut new = sample();
        let ctl = new.roles.get_mut("ctl").expect("ctl");
        ctl.packages.retain(|p| p.name != "procps");
        ctl.packages[0].version = "9.9".into();
        ctl.packages.push(LockedPackage {
            name: "zzz".into(),
            version: "1".into(),
            arch: "all".into(),
            sha256: "ef".repeat(32),
        });
        new.roles.remove("odd role");
        let first = old.roles["ctl"].packages[0].name.clone();
        assert_eq!(
            new.changes_from(&old),
            [
                format!("ctl: {first} 1:2.3-4+deb12u1 -> 9.9"),
                "ctl: zzz 1 (added)".to_string(),
                "ctl: procps 1:2.3-4+deb12u1 (removed)".to_string(),
                "odd role: role removed".to_string(),
            ]
        );
    }

    #[test]
    fn staleness_names_the_role_and_the_packages() {
        let lock = sample();
        let path = Path::new("testbed.lock");
        lock.check_fresh(&[spec(&["munge"])], path).expect("fresh");
        let err = lock
            .check_fresh(&[spec(&["munge", "slurmd"])], path)
            .expect_err("stale");
        let msg = err.to_string();
        assert!(msg.contains("role `ctl`"), "{msg}");
        assert!(msg.contains("`slurmd`"), "{msg}");
        assert!(msg.ends_with("run `testbed lock`"), "{msg}");
        let err = lock.check_fresh(&[spec(&[])], path).expect_err("removed");
        assert!(err.to_string().contains("removed"));
        let mut other = spec(&["munge"]);
        other.role = "compute".into();
        let err = lock.check_fresh(&[other], path).expect_err("missing role");
        assert!(err.to_string().contains("role `compute`"));
        let mut k = spec(&["munge"]);
        k.kernel = "linux-image-amd64".into();
        assert!(lock.check_fresh(&[k], path).is_err());
    }
}
