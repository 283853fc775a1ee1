//! Reproducible node images: package locking, rootfs builds, the stage-1
//! initramfs, the erofs root and the container archive, all kept in a
//! content-addressed store.
//!
//! This crate knows nothing about compositions or node counts: its input is an
//! [`ImageSpec`] per role, and an image is a pure function of that spec.

pub mod apt;
pub mod archive;
mod artifacts;
pub mod build;
pub mod cpio;
pub mod debs;
pub mod erofs;
pub mod error;
pub mod initramfs;
pub mod lock;
pub mod manifest;
pub mod progress;
pub mod rootfs;
pub mod rootless;
pub mod snapshot;
pub mod spec;
pub mod store;
pub mod tools;
pub mod verify;

pub use build::{build, keys, BuildOptions, BuiltImage};
pub use debs::{Origin, PackageSources};
pub use error::{ImageError, Result};
pub use lock::{lock, LockOptions, Lockfile};
pub use manifest::Manifest;
pub use progress::{Event, NoProgress, Progress, Step};
pub use spec::{ImageSpec, StaticFile};
pub use store::Store;
pub use verify::{verify, Verification};
