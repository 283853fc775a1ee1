//! Orchestration: what `testbed up`, `testbed down` and `testbed test` do
//! to a composition's cluster, as a library.
//!
//! - [`Target::load`]: the composition, its plan and its state directory;
//!   [`locate`] finds the state directory alone, without planning.
//! - [`up`]: from a target to a cluster whose every node is ready: "already
//!   running" detection, teardown of a stale state directory, the backend
//!   ([`backend`]: libvirt hosts and placement ([`libvirt`]), the container
//!   engine) and the accelerator, the backend's time limits
//!   (`testbed_runtime::backend::timeouts`), the images ([`images`]), the
//!   spec, the supervisor process, and the wait, failing fast; a cluster
//!   that did not come up is an [`Error::NotReady`] naming every node.
//! - [`images::CacheSetting::resolve`]: the registry cache of a build, from
//!   the environment, the composition or the user's config file
//!   ([`config`]).
//! - [`down`]: through the supervisor, or by hand when it is gone.
//! - [`snapshots`]: snapshots of the whole cluster, saved, restored,
//!   listed and removed (`up` starts from one with [`UpOptions::from`]).
//!
//! Nothing here prints: progress is a stream of [`UpEvent`]s to the
//! caller's callback, on the caller's thread, and errors are [`Error`]s,
//! which say whether the user's input is at fault ([`Error::is_usage`]).

pub mod backend;
pub mod config;
mod down;
mod error;
pub mod images;
pub mod libvirt;
pub mod snapshots;
mod summary;
mod target;
mod up;

pub use backend::{AccelChoice, BackendKind, BackendOptions};
pub use down::{down, DownOutcome, DownReport};
pub use error::Error;
pub use images::{CacheSetting, CacheSource, LockNote, PackageOptions};
pub use summary::NotReady;
pub use target::{locate, Located, Target};
pub use up::{connect, reply_error, running, status, up, UpEvent, UpOptions};

#[cfg(test)]
mod test_support {
    use crate::Target;

    /// A composition in a temporary folder, loaded.
    pub fn target(toml: &str) -> (tempfile::TempDir, Target) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("testbed.toml");
        std::fs::write(&path, toml).expect("write");
        let target =
            Target::load(Some(&path), &Default::default()).unwrap_or_else(|e| panic!("{e}"));
        (dir, target)
    }
}
