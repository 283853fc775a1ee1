//! The glue between a finished root tree and the boot artifacts of an
//! entry: the kernel and stage-1 initramfs ([`crate::initramfs`]), the erofs
//! root ([`crate::erofs`]) and the container archive ([`crate::archive`]).
//! Kept apart from [`crate::build`] so the orchestration does not depend on
//! how each artifact is made.

use std::path::Path;

use crate::build::ArtifactError;
use crate::{archive, erofs, initramfs};

/// Writes `kernel`, `initramfs`, `rootfs.erofs` and `rootfs.tar.gz` into `out`.
pub(crate) fn build_all(rootfs: &Path, out: &Path, epoch: u64) -> Result<(), ArtifactError> {
    let fail = |step: &'static str| {
        move |e: &dyn std::fmt::Display| ArtifactError {
            step,
            message: e.to_string(),
        }
    };
    initramfs::copy_kernel(rootfs, &out.join("kernel")).map_err(|e| fail("kernel")(&e))?;
    let options = initramfs::InitramfsOptions {
        epoch,
        ..Default::default()
    };
    initramfs::build_initramfs(rootfs, &out.join("initramfs"), &options)
        .map_err(|e| fail("stage-1 initramfs")(&e))?;
    let options = erofs::ErofsOptions {
        epoch,
        ..Default::default()
    };
    erofs::build_erofs(rootfs, &out.join("rootfs.erofs"), &options)
        .map_err(|e| fail("erofs image")(&e))?;
    archive::write_rootfs_tar(rootfs, &out.join(archive::ARCHIVE), epoch)
        .map_err(|e| fail("container archive")(&e))?;
    Ok(())
}
