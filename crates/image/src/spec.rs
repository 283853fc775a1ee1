//! What an image is made of. An image is a pure function of its [`ImageSpec`]
//! (plus the pinned package versions from the lock and the builder version):
//! nothing here may depend on node names, counts or addresses.

use std::path::PathBuf;

/// The inputs of one role's image, as the CLI derives them from the validated
/// composition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The role this image is for; used in messages only, never hashed, so
    /// that roles with identical inputs share one image.
    pub role: String,
    /// Distribution vendor, e.g. `debian`.
    pub vendor: String,
    /// Distribution suite, e.g. `bookworm`.
    pub suite: String,
    /// An apt mirror URL set in the composition; `None` means the host's apt
    /// sources.
    pub mirror: Option<String>,
    /// The kernel package, e.g. `linux-image-cloud-amd64`.
    pub kernel: String,
    /// The role's packages (defaults merged in), sorted and deduplicated.
    pub packages: Vec<String>,
    /// Lines of `debconf-set-selections` given before the packages are
    /// installed (`package question type value`), in the composition's order.
    pub debconf: Vec<String>,
    /// Static files baked into the image (templates are *not* here: they are
    /// rendered per node at activation).
    pub files: Vec<StaticFile>,
    /// The guest agent binary to install, when one is built.
    pub agent: Option<PathBuf>,
}

/// One static file of an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StaticFile {
    /// Absolute path inside the guest.
    pub path: String,
    /// The file's bytes.
    pub content: Vec<u8>,
    /// Permission bits, e.g. `0o644`.
    pub mode: u32,
    /// `user` or `user:group`; `None` means root.
    pub owner: Option<String>,
}
