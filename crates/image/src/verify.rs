//! `verify`: rebuild every image into a fresh temporary store and compare
//! the outputs' digests with the entries of the real store, file by file.
//! When an output differs, the two trees' listings (`rootfs.files`) name the
//! first path inside the image that differs, which is what one needs to fix
//! a reproducibility bug.

use std::path::{Path, PathBuf};

use crate::build::{build_with, Artifacts, BuildOptions, BuiltImage, DefaultArtifacts};
use crate::error::Result;
use crate::lock::Lockfile;
use crate::progress::Progress;
use crate::spec::ImageSpec;
use crate::store::{remove_tree, Store};

/// The first difference found for one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The output file, e.g. `rootfs.erofs`.
    pub output: String,
    /// Its digest in the store.
    pub expected: String,
    /// Its digest in the rebuild.
    pub actual: String,
    /// The first differing line of the two trees' listings (path, mode,
    /// owner, mtime, digest), when the trees differ.
    pub first_path: Option<(String, String)>,
}

/// The outcome for one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleVerification {
    /// The role.
    pub role: String,
    /// The store key.
    pub key: String,
    /// How many outputs were compared.
    pub compared: usize,
    /// The first difference, `None` when identical.
    pub difference: Option<Difference>,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Per role, in the order of the specs.
    pub roles: Vec<RoleVerification>,
    /// The temporary store, kept for inspection when something differs.
    pub kept_store: Option<PathBuf>,
}

impl Verification {
    /// Whether every output of every role is identical.
    pub fn identical(&self) -> bool {
        self.roles.iter().all(|r| r.difference.is_none())
    }
}

/// Builds `specs` into `store` if needed, rebuilds them in a fresh store
/// inside `store`'s temporary area, and compares.
pub fn verify(
    store: &Store,
    specs: &[ImageSpec],
    lock: &Lockfile,
    options: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Verification> {
    verify_with(store, specs, lock, options, progress, &DefaultArtifacts)
}

/// [`verify`] with a chosen [`Artifacts`] implementation.
pub fn verify_with(
    store: &Store,
    specs: &[ImageSpec],
    lock: &Lockfile,
    options: &BuildOptions,
    progress: &dyn Progress,
    artifacts: &dyn Artifacts,
) -> Result<Verification> {
    let reference = build_with(store, specs, lock, options, progress, artifacts)?;
    let fresh_root = store.temp_dir("verify")?;
    let fresh_store = Store::open(&fresh_root)?;
    // The rebuild must not register itself as a user of the keys. It reads
    // the packages the reference build used from the store's cache (each
    // checked against the lock again), so verifying needs no network.
    let mut fresh_options = BuildOptions {
        lock_path: None,
        ..options.clone()
    };
    fresh_options.packages.caches.push(store.package_dir());
    let rebuilt = match build_with(
        &fresh_store,
        specs,
        lock,
        &fresh_options,
        progress,
        artifacts,
    ) {
        Ok(r) => r,
        Err(e) => {
            let _ = remove_tree(&fresh_root);
            return Err(e);
        }
    };
    let roles: Vec<RoleVerification> = reference
        .iter()
        .zip(&rebuilt)
        .map(|(a, b)| compare(a, b))
        .collect();
    let verification = Verification {
        kept_store: None,
        roles,
    };
    if verification.identical() {
        remove_tree(&fresh_root)?;
        Ok(verification)
    } else {
        Ok(Verification {
            kept_store: Some(fresh_root),
            ..verification
        })
    }
}

fn compare(a: &BuiltImage, b: &BuiltImage) -> RoleVerification {
    let mut difference = None;
    // The listing first: when the trees differ it names the path, and every
    // image format built from the tree differs for the same reason.
    let mut names: Vec<&String> = a.manifest.outputs.keys().collect();
    names.sort_by_key(|n| (n.as_str() != "rootfs.files", n.as_str()));
    for name in &names {
        let expected = &a.manifest.outputs[*name].sha256;
        let actual = b
            .manifest
            .outputs
            .get(*name)
            .map(|o| o.sha256.clone())
            .unwrap_or_else(|| "(missing)".into());
        if *expected != actual {
            difference = Some(Difference {
                output: name.to_string(),
                expected: expected.clone(),
                actual,
                first_path: first_differing_line(
                    &a.output("rootfs.files"),
                    &b.output("rootfs.files"),
                ),
            });
            break;
        }
    }
    RoleVerification {
        role: a.role.clone(),
        key: a.key.clone(),
        compared: names.len(),
        difference,
    }
}

/// The first line where two listings differ, as (store, rebuild).
fn first_differing_line(a: &Path, b: &Path) -> Option<(String, String)> {
    let a = std::fs::read_to_string(a).ok()?;
    let b = std::fs::read_to_string(b).ok()?;
    let mut la = a.lines();
    let mut lb = b.lines();
    loop {
        match (la.next(), lb.next()) {
            (None, None) => return None,
            (x, y) if x != y => {
                return Some((
                    x.unwrap_or("(end)").to_string(),
                    y.unwrap_or("(end)").to_string(),
                ))
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Manifest, OutputInfo};

    fn image(dir: &Path, erofs: &str, listing: &str) -> BuiltImage {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join("rootfs.files"), listing).expect("w");
        let mut manifest = Manifest::for_test("k");
        for (name, sha) in [
            ("kernel", "k1"),
            ("rootfs.erofs", erofs),
            ("rootfs.files", listing),
        ] {
            manifest.outputs.insert(
                name.into(),
                OutputInfo {
                    sha256: sha.into(),
                    size: 1,
                },
            );
        }
        BuiltImage {
            role: "ctl".into(),
            key: "k".into(),
            dir: dir.to_path_buf(),
            cached: false,
            manifest,
        }
    }

    #[test]
    fn names_the_first_differing_output_and_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = image(&dir.path().join("a"), "e1", "/a\t1\n/etc/x\t644 1\n/z\t1\n");
        let same = image(&dir.path().join("b"), "e1", "/a\t1\n/etc/x\t644 1\n/z\t1\n");
        assert_eq!(compare(&a, &same).difference, None);
        let b = image(&dir.path().join("c"), "e2", "/a\t1\n/etc/x\t644 2\n/z\t1\n");
        let d = compare(&a, &b).difference.expect("differs");
        assert_eq!(d.output, "rootfs.files");
        assert_eq!(
            d.first_path,
            Some(("/etc/x\t644 1".to_string(), "/etc/x\t644 2".to_string()))
        );
    }
}
