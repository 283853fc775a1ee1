//! Progress reporting. The library never prints: it tells a [`Progress`]
//! implementation what it is doing, and the CLI renders that (spinners, log
//! lines, JSON). Implementations must be cheap and thread-safe because roles
//! build in parallel.

use std::time::Duration;

/// One thing the builder started or finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Downloading the package index of a suite.
    UpdatingIndex {
        /// `vendor/suite`.
        distro: String,
    },
    /// Resolving a role's full package set.
    Resolving {
        /// The role.
        role: String,
    },
    /// A role is locked.
    Locked {
        /// The role.
        role: String,
        /// How many packages its image installs.
        packages: usize,
    },
    /// The store already holds this role's image; nothing is built.
    CacheHit {
        /// The role.
        role: String,
        /// The store key.
        key: String,
    },
    /// Another role with identical inputs builds the same image.
    SharedWith {
        /// The role.
        role: String,
        /// The role that builds it.
        builder: String,
    },
    /// A build step of a role started.
    Step {
        /// The role.
        role: String,
        /// What happens now.
        step: Step,
    },
    /// A role's image is in the store.
    Built {
        /// The role.
        role: String,
        /// The store key.
        key: String,
        /// Wall time of the build.
        elapsed: Duration,
    },
    /// Locked packages were found in a source (once per source, after
    /// every package is found or known missing).
    PackagesFrom {
        /// The source.
        origin: crate::debs::Origin,
        /// `name version` of each.
        packages: Vec<String>,
    },
    /// Downloading packages from a source.
    Downloading {
        /// The source.
        origin: crate::debs::Origin,
        /// How many packages.
        count: usize,
    },
    /// Removed a temporary directory left by an interrupted build.
    CleanedStale {
        /// Its name inside the store.
        name: String,
    },
    /// A registry cache pulled or pushed a role's image, or could not
    /// (docs/cache.md); `message` says which, whole.
    Cache {
        /// The role concerned.
        role: String,
        /// What happened.
        message: String,
    },
}

/// The steps of one image build, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Gathering the locked packages into the store's package cache.
    Packages,
    /// Running mmdebstrap.
    Bootstrapping,
    /// Masking the units nodes do without, adding static files, the agent
    /// and its unit, disabling package-enabled services.
    Customizing,
    /// Removing and normalizing non-deterministic files.
    Normalizing,
    /// Building kernel, initramfs, erofs image and container archive.
    Artifacts,
    /// Hashing outputs and moving the entry into the store.
    Committing,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Packages => "gathering locked packages",
            Step::Bootstrapping => "building root filesystem",
            Step::Customizing => "adding files and the agent",
            Step::Normalizing => "normalizing",
            Step::Artifacts => "building boot artifacts",
            Step::Committing => "committing to the store",
        })
    }
}

/// Receives progress events; called from several threads at once.
pub trait Progress: Sync {
    /// Something happened.
    fn event(&self, event: Event);
}

/// Discards all events.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _event: Event) {}
}

impl<F: Fn(Event) + Sync> Progress for F {
    fn event(&self, event: Event) {
        self(event)
    }
}
