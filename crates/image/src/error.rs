//! The errors of locking, building and the store. Every message names the
//! role, package, file or tool concerned and, where the user can act, says
//! what to do.

use std::path::PathBuf;

/// Everything that can go wrong while locking or building images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A filesystem operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What we were doing, e.g. `cannot read`.
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A program the builder needs is not installed on the host.
    #[error("`{tool}` is not installed on this host; install the Debian package `{package}` (scripts/setup-host.sh does it)")]
    MissingTool {
        /// The program, e.g. `mmdebstrap`.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },

    /// Not root, and a rootless build cannot run here (docs/rootless.md).
    #[error("building images as this user needs a user namespace with subordinate ids, and {}: {}", if problems.len() == 1 { "one thing is missing" } else { "some things are missing" }, problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Rootless {
        /// What is missing, each with its fix.
        problems: Vec<crate::rootless::Problem>,
    },

    /// A host program ran and failed.
    #[error("{what} failed ({status}): {stderr}")]
    Command {
        /// What the command was for, e.g. `mmdebstrap for role ctl`.
        what: String,
        /// The exit status, as text.
        status: String,
        /// The last lines of its standard error.
        stderr: String,
    },

    /// A role asks for a package the archive does not have.
    #[error("role `{role}`: package `{package}` does not exist in {suite}{}", suggest(.suggestions))]
    UnknownPackage {
        /// The role concerned.
        role: String,
        /// The package name as written.
        package: String,
        /// The suite searched.
        suite: String,
        /// The closest existing package names, best first.
        suggestions: Vec<String>,
    },

    /// apt could not find a consistent package set for a role.
    #[error("role `{role}`: cannot resolve packages: {message}")]
    Unresolvable {
        /// The role concerned.
        role: String,
        /// apt's explanation.
        message: String,
    },

    /// Locked packages that no source (cache, vendor folder, mirror,
    /// snapshot archive) has with the locked digest.
    #[error("{}", unavailable(.missing))]
    Unavailable {
        /// Each package, with what every source said.
        missing: Vec<crate::debs::Missing>,
    },

    /// The lock file does not match the composition.
    #[error("{} is stale for role `{role}`: {reason}; run `testbed lock`", path.display())]
    StaleLock {
        /// The lock file.
        path: PathBuf,
        /// The role concerned.
        role: String,
        /// What differs.
        reason: String,
    },

    /// The lock file cannot be parsed.
    #[error("{}: invalid lock file: {message}", path.display())]
    BadLock {
        /// The lock file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },

    /// The host's apt sources have nothing for the requested suite.
    #[error("no apt source on this host serves {vendor}/{suite}; set `mirror` in the composition or add a source to /etc/apt/sources.list.d")]
    NoSources {
        /// The distribution vendor.
        vendor: String,
        /// The suite.
        suite: String,
    },

    /// The built root does not contain exactly the locked packages.
    #[error("role `{role}`: the built root filesystem differs from the lock: {detail}")]
    RootfsMismatch {
        /// The role concerned.
        role: String,
        /// The first difference found.
        detail: String,
    },

    /// A static file cannot be placed in the image.
    #[error("role `{role}`: static file {path}: {message}")]
    BadStaticFile {
        /// The role concerned.
        role: String,
        /// The guest path.
        path: String,
        /// What is wrong.
        message: String,
    },

    /// A file the builder itself adds (the agent's unit, a unit mask, a
    /// drop-in) cannot be placed in the image.
    #[error("role `{role}`: cannot write {path} into the image: {message}")]
    BadSystemFile {
        /// The role concerned.
        role: String,
        /// The guest path.
        path: String,
        /// What is wrong.
        message: String,
    },

    /// Not enough free space where the store lives.
    #[error("not enough free disk space in {}: {available_mib} MiB free, a build needs about {needed_mib} MiB", path.display())]
    NoSpace {
        /// The store directory.
        path: PathBuf,
        /// Free space, in MiB.
        available_mib: u64,
        /// Space needed, in MiB.
        needed_mib: u64,
    },

    /// A folder of the store that someone other than its user (or root)
    /// could change: builds and the clusters started from them would use
    /// what they put there.
    #[error("refusing the store folder {}: {reason}; fix its owner and mode, or set TESTBED_STORE to a folder of your own", path.display())]
    UnsafeStore {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A store entry or manifest is damaged.
    #[error("store entry {}: {message}", path.display())]
    BadEntry {
        /// The entry directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A step that produces the boot artifacts failed.
    #[error("role `{role}`: {step}: {message}")]
    Artifact {
        /// The role concerned.
        role: String,
        /// The step, e.g. `erofs image`.
        step: &'static str,
        /// The cause.
        message: String,
    },

    /// A build thread panicked; this is a bug.
    #[error("a build thread for role `{role}` panicked")]
    Panicked {
        /// The role concerned.
        role: String,
    },
}

/// The packages no source has, one per line, with what was tried: the
/// reasons every package shares once, the others after their package.
fn unavailable(missing: &[crate::debs::Missing]) -> String {
    let mut roles: Vec<&str> = missing
        .iter()
        .flat_map(|m| m.roles.iter().map(String::as_str))
        .collect();
    roles.sort();
    roles.dedup();
    let shared: Vec<&String> = missing
        .first()
        .map(|m| {
            m.tried
                .iter()
                .filter(|t| missing.iter().all(|o| o.tried.contains(t)))
                .collect()
        })
        .unwrap_or_default();
    let roles: Vec<String> = roles.iter().map(|r| format!("`{r}`")).collect();
    let mut out = format!(
        "{} locked package{} of role{} {} can be had from no source:",
        missing.len(),
        if missing.len() == 1 { "" } else { "s" },
        if roles.len() == 1 { "" } else { "s" },
        roles.join(", ")
    );
    for m in missing {
        out.push_str(&format!("\n  {} {} ({})", m.name, m.version, m.arch));
        let own: Vec<&str> = m
            .tried
            .iter()
            .filter(|t| !shared.contains(t))
            .map(String::as_str)
            .collect();
        if !own.is_empty() {
            out.push_str(&format!(": {}", own.join("; ")));
        }
    }
    for t in shared {
        out.push_str(&format!("\n  tried: {t}"));
    }
    out.push_str("\nthe lock is left as it is. `testbed lock --update` moves it to the archive's current versions (and lists each change); `testbed vendor` on a machine that has these packages makes a folder for `--vendor`; a `snapshot` archive that has them (docs/images.md) lets the lock build as it is");
    out
}

fn suggest(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        format!("; did you mean {}?", quoted.join(", "))
    }
}

/// A shorthand for results in this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Attaches a path and an action to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| ImageError::Io {
            action,
            path: path.into(),
            source,
        })
    }
}
