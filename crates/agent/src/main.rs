//! `testbed-agent`: the guest side of the testbed host-agent protocol.
//!
//! ```text
//! testbed-agent --port /dev/virtio-ports/org.testbed.agent   (VMs, via systemd)
//! testbed-agent --stdio                                      (containers, SSH)
//! testbed-agent --stdio --root DIR      (activation writes under DIR; no system changes)
//! testbed-agent --unit                  (write the systemd unit to stdout)
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use testbed_agent::session::{self, End};
use testbed_agent::{Agent, SERVICE_UNIT};

const USAGE: &str =
    "usage: testbed-agent (--port PATH | --stdio) [--root DIR]\n       testbed-agent --unit\n";

enum Mode {
    Port(PathBuf),
    Stdio,
    Unit,
}

fn parse(args: &[String]) -> Result<(Mode, PathBuf), String> {
    let mut mode = None;
    let mut root = PathBuf::from("/");
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let path = args.next().ok_or("--port needs a path")?;
                mode = Some(Mode::Port(PathBuf::from(path)));
            }
            "--stdio" => mode = Some(Mode::Stdio),
            "--unit" => mode = Some(Mode::Unit),
            "--root" => {
                let dir = args.next().ok_or("--root needs a directory")?;
                root = PathBuf::from(dir);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let mode = mode.ok_or("one of --port, --stdio or --unit is required")?;
    Ok((mode, root))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, root) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(message) => {
            log(&format!("{message}\n{USAGE}"));
            return ExitCode::from(2);
        }
    };
    let agent = Arc::new(Agent::new(root));
    match mode {
        Mode::Unit => match std::io::stdout().write_all(SERVICE_UNIT.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        },
        Mode::Stdio => serve_stdio(&agent),
        Mode::Port(path) => serve_port(&agent, &path),
    }
}

fn log(message: &str) {
    let _ = std::io::stderr().write_all(format!("testbed-agent: {message}\n").as_bytes());
}

/// One session on stdin/stdout; the agent exits when it ends. The standard
/// streams are duplicated into plain files, skipping std's buffering and
/// locking, and commands never inherit them (their stdio is always piped
/// or null).
fn serve_stdio(agent: &Arc<Agent>) -> ExitCode {
    let duplicate = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map(File::from);
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let (reader, writer) = match (duplicate(stdin.as_fd()), duplicate(stdout.as_fd())) {
        (Ok(reader), Ok(writer)) => (reader, writer),
        (Err(e), _) | (_, Err(e)) => {
            log(&format!("cannot use the standard streams: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match session::serve(agent, reader, writer) {
        End::Closed | End::Idle => ExitCode::SUCCESS,
        End::Broken(reason) => {
            log(&format!("session ended: {reason}"));
            ExitCode::FAILURE
        }
    }
}

/// The kernel's own device node for `/dev/virtio-ports/NAME`. That
/// symlink is made by udev, which under TCG finishes its coldplug seconds
/// after the agent starts; the node `/dev/vportNpM` itself comes from
/// devtmpfs as soon as the port exists, and sysfs tells its name. `None`
/// when `path` is not a named-port link or no port has that name (yet).
fn by_sysfs_name(path: &Path, sysfs: &Path, dev: &Path) -> Option<PathBuf> {
    if path.parent() != Some(Path::new("/dev/virtio-ports")) || path.exists() {
        return None;
    }
    let name = path.file_name()?.to_str()?;
    std::fs::read_dir(sysfs).ok()?.flatten().find_map(|entry| {
        let port_name = std::fs::read_to_string(entry.path().join("name")).ok()?;
        let node = dev.join(entry.file_name());
        (port_name.trim_end() == name && node.exists()).then_some(node)
    })
}

/// Sessions on a virtio-serial port, forever, one host after another. The
/// device may not exist yet this early in boot.
///
/// The first time it opens the port, the process announces itself with the
/// protocol's preamble (the write waits for a host to be connected). A
/// host that already had a session with an earlier agent process (killed,
/// crashed, restarted by systemd) learns so: the requests it sent that
/// process fail at once instead of waiting for ever, and it connects again.
/// A host about to say hello skips it.
fn serve_port(agent: &Arc<Agent>, path: &Path) -> ExitCode {
    let mut reported = false;
    let mut announced = false;
    loop {
        let device = by_sysfs_name(
            path,
            Path::new("/sys/class/virtio-ports"),
            Path::new("/dev"),
        );
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .open(device.as_deref().unwrap_or(path));
        match opened {
            Ok(mut port) => {
                reported = false;
                if !announced {
                    announced = true;
                    if let Err(e) = testbed_proto::frame::write_magic(&mut port) {
                        log(&format!("cannot announce on {}: {e}", path.display()));
                    }
                }
                let writer = || port.try_clone();
                if let End::Broken(reason) = next_host(agent, &port, writer, NO_HOST_PAUSE) {
                    log(&format!("session on {} ended: {reason}", path.display()));
                }
                // Closed here, after its session: the host sees the port
                // close (a snapshot's maker waits for that).
                drop(port);
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                if !reported {
                    log(&format!("waiting for {}: {e}", path.display()));
                    reported = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// How often an open port is read again while no host is connected.
const NO_HOST_PAUSE: Duration = Duration::from_millis(200);

/// Waits on an open port for the next host and serves its session. While
/// no host is connected the port reads end-of-file; it is read again every
/// `pause`, and kept open meanwhile: the guest's driver discards what has
/// arrived on a port when it is closed, so an agent that closed and
/// reopened it after each end-of-file lost the first bytes of a host that
/// connected in between, and never answered its hello (a node restored
/// from a role snapshot, whose agent is in this wait, stayed "booting").
///
/// For the same reason, bytes that start no session (what a host sent the
/// agent process before this one, then hung up: it is about to connect
/// again and say hello to this one) are skipped on the same open port.
/// Each session writes through its own `writer()`.
fn next_host<R: Read, W: Write + Send + 'static>(
    agent: &Arc<Agent>,
    mut reader: R,
    mut writer: impl FnMut() -> std::io::Result<W>,
    pause: Duration,
) -> End {
    loop {
        let mut first = vec![0u8; 4096];
        loop {
            match reader.read(&mut first) {
                Ok(0) => std::thread::sleep(pause),
                Ok(n) => {
                    first.truncate(n);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return End::Broken(format!("cannot read the port: {e}")),
            }
        }
        let out = match writer() {
            Ok(out) => out,
            Err(e) => return End::Broken(format!("cannot write the port: {e}")),
        };
        match session::serve(agent, std::io::Cursor::new(first).chain(&mut reader), out) {
            End::Idle => {}
            end => return end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use testbed_proto::client::{Client, ClientOptions};

    /// A port as the guest sees it before a host connects: its first reads
    /// (`script`: an empty one is end-of-file) come before the host's bytes
    /// on `stream`, which may be on their way. Dropping it closes it, which
    /// in the guest discards what arrived.
    struct Port {
        stream: UnixStream,
        script: std::collections::VecDeque<Vec<u8>>,
        closed: Arc<AtomicBool>,
    }

    impl Port {
        fn new(stream: &UnixStream, script: Vec<Vec<u8>>) -> (Port, Arc<AtomicBool>) {
            let closed = Arc::new(AtomicBool::new(false));
            let port = Port {
                stream: stream.try_clone().expect("clone"),
                script: script.into(),
                closed: Arc::clone(&closed),
            };
            (port, closed)
        }
    }

    impl Read for Port {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.script.pop_front() {
                Some(bytes) => {
                    buf[..bytes.len()].copy_from_slice(&bytes);
                    Ok(bytes.len())
                }
                None => self.stream.read(buf),
            }
        }
    }

    impl Drop for Port {
        fn drop(&mut self) {
            self.closed.store(true, Ordering::SeqCst);
        }
    }

    /// An agent serving a port whose first reads are `script`, and a
    /// host that says hello on it: the host's client, its end of the
    /// stream (to hang up), whether the port was closed, the agent's
    /// thread.
    fn served(
        script: Vec<Vec<u8>>,
    ) -> (
        Client,
        UnixStream,
        Arc<AtomicBool>,
        std::thread::JoinHandle<End>,
    ) {
        let root = tempfile::tempdir().expect("tmp");
        let agent = Arc::new(Agent::new(root.path().to_path_buf()));
        let (guest, host) = UnixStream::pair().expect("pair");
        let (port, closed) = Port::new(&guest, script);
        let agent_side = std::thread::spawn(move || {
            let _root = root;
            next_host(
                &agent,
                port,
                || guest.try_clone(),
                Duration::from_millis(10),
            )
        });
        let options = ClientOptions {
            node: "n".to_owned(),
            hello_timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        };
        let hangup = host.try_clone().expect("clone");
        let client = Client::with_options(host.try_clone().expect("clone"), host, options)
            .expect("the agent answers the hello");
        (client, hangup, closed, agent_side)
    }

    #[test]
    fn a_host_that_connects_while_the_port_reads_end_of_file_is_served_on_the_same_open_port() {
        // The host's hello is sent at once, while the agent still reads
        // end-of-file; it must not be lost to a close of the port.
        let (client, hangup, closed, agent_side) = served(vec![Vec::new(); 3]);
        assert!(
            !closed.load(Ordering::SeqCst),
            "the port was closed while waiting"
        );
        assert!(!client.agent_info().software.is_empty());
        // The host goes away: the session ends and only then is the port
        // closed.
        drop(client);
        hangup.shutdown(std::net::Shutdown::Both).expect("shutdown");
        assert!(matches!(
            agent_side.join().expect("agent thread"),
            End::Closed
        ));
        assert!(
            closed.load(Ordering::SeqCst),
            "the port is closed after the session"
        );
    }

    /// An agent that started again while a host was connected to its
    /// predecessor: the host's last frames (the cancel of the request the
    /// killed process was serving) reach the new process, then the host
    /// hangs up and connects again at once. Those frames start no session;
    /// the port stays open, and the new host's hello is answered (it used
    /// to be lost to a close of the port: the reconnect timed out).
    #[test]
    fn frames_meant_for_an_earlier_agent_process_do_not_close_the_port() {
        let mut stale = Vec::new();
        testbed_proto::frame::write_frame(
            &mut stale,
            7,
            testbed_proto::frame::FrameKind::Control,
            br#"{"type":"cancel"}"#,
        )
        .expect("frame");
        // The stale frame, the old host's hang-up, no host for a while.
        let (client, hangup, closed, agent_side) = served(vec![stale, Vec::new(), Vec::new()]);
        assert!(!closed.load(Ordering::SeqCst), "the port was closed");
        assert!(!client.agent_info().software.is_empty());
        drop(client);
        hangup.shutdown(std::net::Shutdown::Both).expect("shutdown");
        assert!(matches!(
            agent_side.join().expect("agent thread"),
            End::Closed
        ));
    }

    #[test]
    fn a_named_port_is_found_through_sysfs_before_udev_links_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (sysfs, dev) = (tmp.path().join("sys"), tmp.path().join("dev"));
        for (port, name) in [
            ("vport1p1", "org.qemu.guest_agent.0"),
            ("vport1p2", "org.testbed.test-x"),
        ] {
            std::fs::create_dir_all(sysfs.join(port)).unwrap();
            std::fs::write(sysfs.join(port).join("name"), format!("{name}\n")).unwrap();
        }
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vport1p2"), "").unwrap();
        let link = Path::new("/dev/virtio-ports/org.testbed.test-x");
        assert_eq!(
            by_sysfs_name(link, &sysfs, &dev),
            Some(dev.join("vport1p2"))
        );
        // No such name, no device node yet, or not a named-port path.
        let other = Path::new("/dev/virtio-ports/org.testbed.test-y");
        assert_eq!(by_sysfs_name(other, &sysfs, &dev), None);
        std::fs::remove_file(dev.join("vport1p2")).unwrap();
        assert_eq!(by_sysfs_name(link, &sysfs, &dev), None);
        assert_eq!(by_sysfs_name(Path::new("/tmp/x"), &sysfs, &dev), None);
    }
}
