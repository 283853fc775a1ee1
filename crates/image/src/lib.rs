//! Reproducible node images: package locking, rootfs builds, the stage-1
//! initramfs, the erofs root and the container archive, all kept in a
//! content-addressed store.
//!
//! This crate knows nothing about compositions or node counts: its input is an
//! [`ImageSpec`] per role, and an image is a pure function of that spec.

pub mod archive;
pub mod cpio;
pub mod erofs;
pub mod initramfs;
pub mod spec;

pub use spec::{ImageSpec, StaticFile};
