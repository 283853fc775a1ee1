//! Per-cluster secrets and SSH keys, generated at `up` and never baked into
//! images.
//!
//! SSH keys come from the host's `ssh-keygen` (OpenSSH's own key format,
//! with no crypto code of ours): one client key per cluster, whose public
//! half goes to every node's `authorized_keys`, and one ed25519 host key per
//! node, whose public half goes to the cluster's `known_hosts` so `ssh`
//! checks host keys strictly. Secrets are random bytes from the kernel.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("cannot read random bytes for secret {name}: {source}")]
    Random { name: String, source: io::Error },
    #[error(
        "ssh-keygen is not installed (Debian package openssh-client); it makes the cluster's ssh keys"
    )]
    NoSshKeygen,
    #[error("ssh-keygen failed for {what}: {message}")]
    Keygen { what: String, message: String },
    #[error("cannot {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// `n` random bytes for the secret `name`.
pub fn random_bytes(name: &str, n: usize) -> Result<Vec<u8>, KeyError> {
    let mut bytes = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| KeyError::Random {
            name: name.to_owned(),
            source,
        })?;
    Ok(bytes)
}

/// An OpenSSH key pair as text.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub private_key: String,
    /// The `.pub` line, `ssh-ed25519 AAAA... comment`.
    pub public_key: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

/// Generates an ed25519 key pair with `comment`, using a scratch file in
/// `dir` (removed afterwards).
pub fn ed25519(dir: &Path, comment: &str) -> Result<KeyPair, KeyError> {
    let scratch = dir.join(format!(".keygen-{}", std::process::id()));
    let _ = fs::remove_file(&scratch);
    let _ = fs::remove_file(scratch.with_extension("pub"));
    let output = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(&scratch)
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => KeyError::NoSshKeygen,
            _ => KeyError::Keygen {
                what: comment.to_owned(),
                message: e.to_string(),
            },
        })?;
    if !output.status.success() {
        return Err(KeyError::Keygen {
            what: comment.to_owned(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let public = PathBuf::from(format!("{}.pub", scratch.display()));
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| KeyError::Io {
            what: "read",
            path: path.to_path_buf(),
            source,
        })
    };
    let pair = KeyPair {
        private_key: read(&scratch)?,
        public_key: read(&public)?.trim().to_owned(),
    };
    let _ = fs::remove_file(&scratch);
    let _ = fs::remove_file(&public);
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_sized() {
        let a = random_bytes("s", 64).unwrap();
        let b = random_bytes("s", 64).unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn keys_are_fresh_openssh_ed25519_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let a = ed25519(dir.path(), "testbed@x").unwrap();
        let b = ed25519(dir.path(), "testbed@x").unwrap();
        assert!(a.public_key.starts_with("ssh-ed25519 "), "{}", a.public_key);
        assert!(a.public_key.ends_with(" testbed@x"));
        assert!(a.private_key.contains("BEGIN OPENSSH PRIVATE KEY"));
        assert_ne!(a.public_key, b.public_key);
        // The scratch files are gone and the debug form hides the secret.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }
}
