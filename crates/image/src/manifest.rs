//! The store key and `manifest.json`.
//!
//! The key is the SHA-256 of [`KeyInputs`] serialized as JSON: everything
//! the image is a function of, and nothing else. The role name is *not* an
//! input, so roles with identical inputs share one entry.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ImageError, IoContext, Result};
use crate::lock::{LockedPackage, RoleLock, ALWAYS};
use crate::rootfs::hex;
use crate::spec::ImageSpec;

/// The manifest's file name in an entry.
pub const MANIFEST: &str = "manifest.json";

/// The builder's identity, part of every key. The revision is bumped
/// whenever what the builder does to a tree changes (normalization, the
/// stage-1, the image formats), so old entries are not reused.
pub const BUILDER: &str = concat!("testbed-image/", env!("CARGO_PKG_VERSION"), "+r6");

/// Everything an image is a function of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInputs {
    /// [`BUILDER`].
    pub builder: String,
    /// Distribution vendor.
    pub vendor: String,
    /// Distribution suite.
    pub suite: String,
    /// The composition's mirror, if any.
    pub mirror: Option<String>,
    /// The Debian architecture.
    pub architecture: String,
    /// The kernel package.
    pub kernel: String,
    /// The packages every image gets.
    pub always: Vec<String>,
    /// `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: u64,
    /// Every installed package, from the lock.
    pub packages: Vec<LockedPackage>,
    /// The debconf answers, in order (absent from the hashed JSON when
    /// there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub debconf: Vec<String>,
    /// The static files, sorted by path.
    pub files: Vec<FileInput>,
    /// SHA-256 of the agent binary, if one is installed.
    pub agent: Option<String>,
}

/// A static file, by digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileInput {
    /// Guest path.
    pub path: String,
    /// SHA-256 of the content.
    pub sha256: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner as written, `None` for root.
    pub owner: Option<String>,
}

impl KeyInputs {
    /// Collects the inputs of `spec` built from `lock`; reads the agent.
    pub fn new(spec: &ImageSpec, lock: &RoleLock) -> Result<KeyInputs> {
        let agent = match &spec.agent {
            Some(path) => Some(sha256_file(path)?),
            None => None,
        };
        let mut files: Vec<FileInput> = spec
            .files
            .iter()
            .map(|f| FileInput {
                path: f.path.clone(),
                sha256: hex(&Sha256::digest(&f.content)),
                mode: f.mode,
                owner: f.owner.clone(),
            })
            .collect();
        files.sort();
        let mut packages = lock.packages.clone();
        packages.sort();
        Ok(KeyInputs {
            builder: BUILDER.to_string(),
            vendor: lock.vendor.clone(),
            suite: lock.suite.clone(),
            mirror: lock.mirror.clone(),
            architecture: lock.architecture.clone(),
            kernel: lock.kernel.clone(),
            always: ALWAYS.iter().map(|s| s.to_string()).collect(),
            source_date_epoch: lock.source_date_epoch,
            packages,
            debconf: spec.debconf.clone(),
            files,
            agent,
        })
    }

    /// The store key: SHA-256 of the canonical JSON.
    pub fn key(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex(&Sha256::digest(&json))
    }
}

/// Digest and size of one output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputInfo {
    /// SHA-256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// `manifest.json`: what an entry was built from and the digest of every
/// output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The store key (the entry's directory name).
    pub key: String,
    /// The inputs the key was computed from.
    pub inputs: KeyInputs,
    /// Output file name → digest, sorted by name.
    pub outputs: BTreeMap<String, OutputInfo>,
}

impl Manifest {
    /// Reads a manifest.
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = fs::read_to_string(path).at("cannot read", path)?;
        serde_json::from_str(&text).map_err(|e| ImageError::BadEntry {
            path: path.to_path_buf(),
            message: format!("invalid manifest: {e}"),
        })
    }

    /// Writes a manifest.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        fs::write(path, text).at("cannot write", path)
    }

    /// Hashes every regular file in `dir` (except the manifest) into
    /// a manifest for `inputs`.
    pub fn from_dir(dir: &Path, inputs: KeyInputs) -> Result<Manifest> {
        let mut outputs = BTreeMap::new();
        let mut names: Vec<_> = fs::read_dir(dir)
            .at("cannot list", dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n != MANIFEST)
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let size = fs::metadata(&path).at("cannot stat", &path)?.len();
            outputs.insert(
                name,
                OutputInfo {
                    sha256: sha256_file(&path)?,
                    size,
                },
            );
        }
        Ok(Manifest {
            key: inputs.key(),
            inputs,
            outputs,
        })
    }

    #[cfg(test)]
    pub(crate) fn for_test(key: &str) -> Manifest {
        Manifest {
            key: key.to_string(),
            inputs: KeyInputs {
                builder: BUILDER.into(),
                vendor: "debian".into(),
                suite: "bookworm".into(),
                mirror: None,
                architecture: "amd64".into(),
                kernel: "k".into(),
                always: vec![],
                source_date_epoch: 0,
                packages: vec![],
                debconf: vec![],
                files: vec![],
                agent: None,
            },
            outputs: BTreeMap::new(),
        }
    }
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).at("cannot open", path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).at("cannot read", path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::StaticFile;

    fn lock() -> RoleLock {
        RoleLock {
            vendor: "debian".into(),
            suite: "bookworm".into(),
            mirror: None,
            architecture: "amd64".into(),
            kernel: "linux-image-cloud-amd64".into(),
            requested: vec!["munge".into()],
            source_date_epoch: 1,
            snapshot: Some("19700101T000001Z".into()),
            archives: vec!["debian bookworm main".into()],
            packages: vec![LockedPackage {
                name: "munge".into(),
                version: "1".into(),
                arch: "amd64".into(),
                sha256: "00".repeat(32),
            }],
        }
    }

    fn spec(role: &str) -> ImageSpec {
        ImageSpec {
            role: role.into(),
            vendor: "debian".into(),
            suite: "bookworm".into(),
            mirror: None,
            kernel: "linux-image-cloud-amd64".into(),
            packages: vec!["munge".into()],
            debconf: vec![],
            files: vec![StaticFile {
                path: "/etc/a".into(),
                content: b"a".to_vec(),
                mode: 0o644,
                owner: None,
            }],
            agent: None,
        }
    }

    #[test]
    fn key_ignores_the_role_and_sees_every_input() {
        let base = KeyInputs::new(&spec("ctl"), &lock()).expect("inputs").key();
        assert_eq!(base.len(), 64);
        assert_eq!(
            KeyInputs::new(&spec("compute"), &lock())
                .expect("inputs")
                .key(),
            base
        );
        let mut s = spec("ctl");
        s.files[0].mode = 0o600;
        assert_ne!(KeyInputs::new(&s, &lock()).expect("inputs").key(), base);
        let mut s = spec("ctl");
        s.files[0].content = b"b".to_vec();
        assert_ne!(KeyInputs::new(&s, &lock()).expect("inputs").key(), base);
        let mut s = spec("ctl");
        s.files[0].owner = Some("munge".into());
        assert_ne!(KeyInputs::new(&s, &lock()).expect("inputs").key(), base);
        let mut s = spec("ctl");
        s.debconf = vec!["gridengine-common shared/gridengineconfig boolean false".into()];
        let with_answer = KeyInputs::new(&s, &lock()).expect("inputs").key();
        assert_ne!(with_answer, base);
        s.debconf = vec!["gridengine-common shared/gridengineconfig boolean true".into()];
        assert_ne!(
            KeyInputs::new(&s, &lock()).expect("inputs").key(),
            with_answer
        );
        let mut l = lock();
        l.packages[0].version = "2".into();
        assert_ne!(
            KeyInputs::new(&spec("ctl"), &l).expect("inputs").key(),
            base
        );
        // Where packages are found is not an input: the snapshot point and
        // the archives' names (and a format 1 lock without them) give the
        // same key, so upgrading a lock keeps its images.
        let mut l = lock();
        l.snapshot = None;
        l.archives.clear();
        assert_eq!(
            KeyInputs::new(&spec("ctl"), &l).expect("inputs").key(),
            base
        );
        l.snapshot = Some("20300101T000000Z".into());
        assert_eq!(
            KeyInputs::new(&spec("ctl"), &l).expect("inputs").key(),
            base
        );
        let mut l = lock();
        l.mirror = Some("http://example.invalid/debian".into());
        assert_ne!(
            KeyInputs::new(&spec("ctl"), &l).expect("inputs").key(),
            base
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = dir.path().join("agent");
        fs::write(&agent, b"\x7fELF").expect("w");
        let mut s = spec("ctl");
        s.agent = Some(agent.clone());
        let with_agent = KeyInputs::new(&s, &lock()).expect("inputs").key();
        assert_ne!(with_agent, base);
        fs::write(&agent, b"\x7fELF2").expect("w");
        assert_ne!(
            KeyInputs::new(&s, &lock()).expect("inputs").key(),
            with_agent
        );
    }

    #[test]
    fn manifest_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("kernel"), b"abc").expect("w");
        let m = Manifest::from_dir(dir.path(), KeyInputs::new(&spec("x"), &lock()).expect("i"))
            .expect("manifest");
        assert_eq!(
            m.outputs["kernel"].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        m.write(&dir.path().join(MANIFEST)).expect("write");
        assert_eq!(Manifest::read(&dir.path().join(MANIFEST)).expect("read"), m);
    }
}
