//! An OCI registry owned by the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::{free_tcp_port, listening};

/// Debian's `docker-registry` (the CNCF distribution registry) serving a
/// temporary folder on a free loopback port, without authentication;
/// killed on drop. Nothing of the system's registry setup is used.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts it and waits (at most 30 s) until it accepts connections;
    /// fails the test, with its log, if it does not.
    pub fn start() -> Registry {
        let binary = Path::new("/usr/bin/docker-registry");
        assert!(
            binary.exists(),
            "docker-registry is missing: install it with scripts/setup-host.sh (scripts/host-packages.txt)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_tcp_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).expect("config.yml");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry.log");
        let child = Command::new(binary)
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut registry = Registry { child, port, dir };
        let up = listening(&mut registry.child, port, Duration::from_secs(30));
        assert!(
            up,
            "docker-registry did not listen on port {port}: {}",
            registry.log()
        );
        registry
    }

    /// `127.0.0.1:PORT`, the registry part of a reference.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The folder of its blobs: `sha256/XX/DIGEST/data` each.
    pub fn blobs(&self) -> PathBuf {
        self.dir.path().join("data/docker/registry/v2/blobs")
    }

    /// The file of the blob `digest` (`sha256:...`).
    pub fn blob(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.blobs()
            .join("sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
