//! Stage two: the validated composition. Every value here has been checked;
//! spans are kept only where later stages (the plan) can still find a problem
//! and need to point at the file.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::confine::Confinement;
use crate::diag::SourceFile;
use crate::net::Subnet;

/// The default kernel package of every image.
pub const DEFAULT_KERNEL: &str = "linux-image-cloud-amd64";
/// The default guest memory.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// The default `[test] timeout`.
pub const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The distributions the image builder knows, as `vendor/suite`.
pub const SUPPORTED_DISTROS: &[&str] = &["debian/bookworm"];

/// A validated `testbed.toml`.
#[derive(Debug, Clone)]
pub struct Composition {
    /// The composition file.
    pub source: Arc<SourceFile>,
    /// The folder relative paths are resolved against.
    pub dir: PathBuf,
    /// Where `source` and `template` files may be read from: the folder,
    /// and the paths of `[cluster] allow_paths_outside`. Read them through
    /// it ([`Confinement::read`]), never directly.
    pub confinement: Confinement,
    /// `[cluster]`
    pub cluster: Cluster,
    /// The roles, in file order.
    pub roles: Vec<Role>,
    /// The secrets, in file order.
    pub secrets: Vec<Secret>,
    /// The networks, in file order (one `lan` when the file has none).
    pub networks: Vec<Network>,
    /// The libvirt hosts (`[[hosts]]`), in file order; empty when the file
    /// has none. Only `--backend libvirt` uses them.
    pub hosts: Vec<Host>,
    /// `[test]`, when present.
    pub test: Option<TestSpec>,
}

impl Composition {
    /// The role called `name`.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }
}

/// `[cluster]`, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// The cluster's name.
    pub name: String,
    /// The distribution.
    pub distro: Distro,
    /// The kernel package.
    pub kernel: String,
    /// The apt mirror for image builds; `None` means the host's apt sources.
    pub mirror: Option<String>,
    /// The snapshot archive image builds fall back to for locked packages
    /// the mirror no longer has; `None` when the key is absent, which leaves
    /// the choice to the image builder (its default, or `TESTBED_SNAPSHOT`).
    pub snapshot: Option<Snapshot>,
    /// `[cluster] cache` and `cache_push`: the registry images are pulled
    /// from before they are built (and pushed to after); `None` when the
    /// key is absent, which leaves the choice to the environment and the
    /// user's config file (`testbed_cluster::images::CacheSetting`).
    pub cache: Option<ImageCache>,
}

/// `[cluster] cache`: a repository of an OCI registry that holds images
/// built from compositions (docs/cache.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageCache {
    /// `HOST[:PORT]/PATH`, checked by [`crate::units::check_repository`].
    pub repository: String,
    /// `cache_push`: whether images the registry lacks are pushed to it
    /// after the build.
    pub push: bool,
}

/// `[cluster] snapshot`: where image builds fetch a locked package that the
/// mirror no longer has.
///
/// It never changes an image: every package is checked against the SHA-256
/// in the lock, whichever archive it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// `"off"`: no fallback; packages come from the mirror only.
    Off,
    /// The base URL of a snapshot archive laid out as
    /// `BASE/archive/ARCHIVE/YYYYMMDDTHHMMSSZ/`, without a trailing `/`.
    Url(String),
}

// Serialized as written in the file (`"off"` or the URL), so that the
// cluster's JSON reads like the composition.
impl Serialize for Snapshot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Snapshot::Off => s.serialize_str("off"),
            Snapshot::Url(url) => s.serialize_str(url),
        }
    }
}

/// A distribution as `vendor/suite`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Distro {
    /// e.g. `debian`
    pub vendor: String,
    /// e.g. `bookworm`
    pub suite: String,
}

/// A role with `[defaults]` merged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// The role's name.
    pub name: String,
    /// How many nodes, before any `--scale`.
    pub count: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Packages, defaults first, without duplicates.
    pub packages: Vec<String>,
    /// Lines of `debconf-set-selections` given before the packages are
    /// installed, defaults first, without duplicates.
    pub debconf: Vec<String>,
    /// systemd units started at activation, defaults first, without duplicates.
    pub services: Vec<String>,
    /// The networks the role's nodes attach to, in the composition's network order.
    pub networks: Vec<String>,
    /// Files, keyed by guest path; a role's entry replaces a default's.
    pub files: Vec<FileSpec>,
    /// The name of the host (in [`Composition::hosts`]) every node of the
    /// role is pinned to, if any.
    pub host: Option<String>,
    /// Where the role is declared (its key in `[roles]`).
    pub name_span: Range<usize>,
    /// Where its count is set, if it is.
    pub count_span: Option<Range<usize>>,
}

/// A libvirt hypervisor host, `[[hosts]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    /// The host's name (default `hostN`, N its 1-based position).
    pub name: String,
    /// Its libvirt URI, e.g. `qemu:///system`.
    pub uri: String,
}

/// A file placed in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    /// Absolute guest path.
    pub path: String,
    /// Where its bytes come from.
    pub kind: FileKind,
    /// Permission bits.
    pub mode: u32,
    /// `user` or `user:group`.
    pub owner: String,
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// Inline text: static, baked into the image.
    Content(String),
    /// A host file (the composition's folder joined with the path given):
    /// static, baked into the image. Read it with [`Confinement::read`].
    Source(PathBuf),
    /// A Jinja template (the composition's folder joined with the path
    /// given) rendered per node at activation. Read it with
    /// [`crate::template::read`].
    Template(PathBuf),
}

impl FileSpec {
    /// Whether the file is the same for every node of the role, so it can be
    /// part of the image.
    pub fn is_static(&self) -> bool {
        !matches!(self.kind, FileKind::Template(_))
    }
}

/// A secret generated once per cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Secret {
    /// The secret's name.
    pub name: String,
    /// Absolute guest path.
    pub file: String,
    /// Number of random bytes.
    pub bytes: u32,
    /// `user` or `user:group`.
    pub owner: String,
    /// Permission bits.
    pub mode: u32,
    /// The roles that receive it.
    pub roles: Vec<String>,
}

/// A network, before addresses are assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The network's name.
    pub name: String,
    /// The subnet, if the file sets one (otherwise the plan picks one).
    pub subnet: Option<Subnet>,
    /// Where the network is declared, if it is.
    pub name_span: Option<Range<usize>>,
    /// Where its subnet is set, if it is.
    pub subnet_span: Option<Range<usize>>,
}

/// `[test]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestSpec {
    /// The script (resolved path), if set.
    pub script: Option<PathBuf>,
    /// The time limit of the whole test.
    pub timeout: Duration,
}
