//! An `sshd` owned by the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::{free_tcp_port, listening};
use crate::process::run_ok;

/// An `sshd` owned by the test: its own host key, authorized key and
/// configuration in a temporary folder, on a free loopback port; killed
/// on drop. Nothing of the system's SSH setup is used or changed (but for
/// `/run/sshd`, which `sshd` needs and which it creates if missing).
/// It accepts `root` (and any user) with [`Sshd::client_key`] only.
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    /// Starts it and waits (at most 30 s) until it accepts connections;
    /// fails the test, with its log, if it does not.
    pub fn start() -> Sshd {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for key in ["host_key", "client"] {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", ""])
                    .arg("-f")
                    .arg(d.join(key)),
            );
        }
        std::fs::copy(d.join("client.pub"), d.join("authorized_keys")).expect("authorized_keys");
        let port = free_tcp_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile none\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\n",
            hk = d.join("host_key").display(),
            ak = d.join("authorized_keys").display(),
        );
        std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
        // sshd refuses to start without its privilege separation folder,
        // which only the ssh service's start creates.
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let log = std::fs::File::create(d.join("sshd.log")).expect("sshd.log");
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd is missing: install openssh-server (scripts/host-packages.txt)");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        let mut sshd = Sshd { child, port, dir };
        let up = listening(&mut sshd.child, port, Duration::from_secs(30));
        assert!(
            up,
            "sshd did not listen on port {port}: {}",
            std::fs::read_to_string(sshd.dir.path().join("sshd.log")).unwrap_or_default()
        );
        sshd
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private key it accepts.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client")
    }

    /// A known-hosts file of the test's own (not created by `start`).
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The URI of the system libvirt daemon through this sshd, with
    /// libvirt's libssh transport: the client key and a known-hosts file
    /// of the test's own (the `qemu+ssh` transport would add the host key
    /// to root's `~/.ssh/known_hosts`).
    pub fn libvirt_system_uri(&self) -> String {
        format!(
            "qemu+libssh://root@127.0.0.1:{}/system?keyfile={}&known_hosts={}&known_hosts_verify=ignore&sshauth=privkey",
            self.port,
            self.client_key().display(),
            self.known_hosts().display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
