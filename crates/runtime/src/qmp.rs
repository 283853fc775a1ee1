//! A small blocking client for QMP, the QEMU Machine Protocol, over a unix
//! socket.
//!
//! QMP is JSON, one message per line: on connect QEMU sends a greeting,
//! the client must negotiate capabilities (`qmp_capabilities`) before any
//! other command, and then each command gets exactly one reply, either
//! `{"return": ...}` or `{"error": {"class": ..., "desc": ...}}`.
//! Asynchronous events (`SHUTDOWN`, `RESET`, `STOP`, ...) can arrive at any
//! moment, also between a command and its reply; the client keeps every
//! event it reads so callers can look at them later ([`Qmp::events`],
//! [`Qmp::wait_event`]).
//!
//! QEMU serves one QMP client at a time on a socket; a second client's
//! connection waits in the listen backlog until the first disconnects, so
//! hold a connection only as long as needed or share one.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

/// How long to wait between attempts while the socket is not there yet.
const RETRY: Duration = Duration::from_millis(20);

/// Errors of the QMP client. `target` names the node (when known) and the
/// socket.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected to before the timeout.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// The node and socket.
        target: String,
        /// Why.
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("i/o error on {target} while waiting for {waiting_for}: {source}")]
    Io {
        /// The node and socket.
        target: String,
        /// The command or event being waited for.
        waiting_for: String,
        /// Why.
        source: io::Error,
    },
    /// No reply (or event) within the timeout.
    #[error("{target} did not deliver {waiting_for} within {timeout:?}")]
    Timeout {
        /// The node and socket.
        target: String,
        /// The command or event being waited for.
        waiting_for: String,
        /// How long was waited.
        timeout: Duration,
    },
    /// QEMU closed the connection (it exited, or another client took over).
    #[error("{target} closed the connection while waiting for {waiting_for}")]
    Closed {
        /// The node and socket.
        target: String,
        /// The command or event being waited for.
        waiting_for: String,
    },
    /// A message that is not QMP.
    #[error("unexpected message from {target}: {detail}")]
    Protocol {
        /// The node and socket.
        target: String,
        /// What was wrong.
        detail: String,
    },
    /// QEMU rejected the command.
    #[error("{target}: {command} failed: {desc} ({class})")]
    Command {
        /// The node and socket.
        target: String,
        /// The command.
        command: String,
        /// QMP's error class, e.g. `GenericError`, `CommandNotFound`.
        class: String,
        /// QMP's human-readable description (`error.desc`).
        desc: String,
    },
}

/// An asynchronous event QEMU sent, e.g. `SHUTDOWN` with
/// `{"guest": true, "reason": "guest-shutdown"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QmpEvent {
    /// The event's name, e.g. `SHUTDOWN`, `RESET`, `STOP`, `RESUME`.
    pub name: String,
    /// Its `data` member (`null` when there is none).
    pub data: Value,
    /// QEMU's timestamp in seconds since the Unix epoch.
    pub at: f64,
}

/// A deadline, and the timeout it came from (for messages).
#[derive(Debug, Clone, Copy)]
struct Wait {
    deadline: Instant,
    timeout: Duration,
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    target: String,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Bytes of a line not yet complete when a read timed out; kept so the
    /// next read continues the same message instead of losing sync.
    partial: Vec<u8>,
    events: Vec<QmpEvent>,
    next_id: u64,
    timeout: Duration,
}

impl Qmp {
    /// Connects to the QMP socket at `path`, reads the greeting and
    /// negotiates capabilities, all within `timeout`. A socket that does not
    /// exist yet, or refuses connections (QEMU still starting), is retried
    /// until then. `timeout` also becomes the default reply timeout of
    /// [`Qmp::execute`].
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        Qmp::connect_labelled(format!("QMP socket {}", path.display()), path, timeout)
    }

    /// [`Qmp::connect`], with errors naming `node` as well as the socket.
    pub fn connect_node(node: &str, path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        Qmp::connect_labelled(
            format!("node {node} (QMP socket {})", path.display()),
            path,
            timeout,
        )
    }

    fn connect_labelled(target: String, path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && Instant::now() + RETRY < deadline =>
                {
                    std::thread::sleep(RETRY);
                }
                Err(source) => return Err(QmpError::Connect { target, source }),
            }
        };
        let writer = stream.try_clone().map_err(|source| QmpError::Connect {
            target: target.clone(),
            source,
        })?;
        let mut qmp = Qmp {
            target,
            reader: BufReader::new(stream),
            writer,
            partial: Vec::new(),
            events: Vec::new(),
            next_id: 0,
            timeout,
        };
        let wait = Wait { deadline, timeout };
        let greeting = qmp.read_message(wait, "the QMP greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(qmp.protocol(format!("expected the QMP greeting, got {greeting}")));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        qmp.execute_within("qmp_capabilities", None, remaining)?;
        Ok(qmp)
    }

    /// Changes the reply timeout of later commands.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs `command` with `arguments` (an object, or `None`) and returns
    /// its `return` value. Events read while waiting are kept.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.execute_within(command, arguments, self.timeout)
    }

    fn execute_within(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let wait = Wait {
            deadline: Instant::now() + timeout,
            timeout,
        };
        self.next_id += 1;
        let id = format!("testbed-{}", self.next_id);
        let mut message = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        let mut line = message.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| self.io_error(command, source))?;
        loop {
            let reply = self.read_message(wait, command)?;
            // Replies to commands that timed out earlier carry their own id;
            // they are stale, not ours.
            if reply
                .get("id")
                .is_some_and(|v| *v != Value::String(id.clone()))
            {
                continue;
            }
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                let field = |k: &str| {
                    error
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                };
                return Err(QmpError::Command {
                    target: self.target.clone(),
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(self.protocol(format!("expected a reply to {command}, got {reply}")));
        }
    }

    /// Reads the next message that is not an event, keeping events.
    fn read_message(&mut self, wait: Wait, waiting_for: &str) -> Result<Value, QmpError> {
        loop {
            if let Some(message) = self.read_one(wait, waiting_for)? {
                return Ok(message);
            }
        }
    }

    /// Reads one message: an event is kept and gives `None`, anything else
    /// is returned.
    fn read_one(&mut self, wait: Wait, waiting_for: &str) -> Result<Option<Value>, QmpError> {
        let line = self.read_line(wait, waiting_for)?;
        let value: Value = serde_json::from_slice(&line).map_err(|e| {
            self.protocol(format!(
                "{e} in {:?}",
                String::from_utf8_lossy(&line).trim_end()
            ))
        })?;
        let Some(name) = value.get("event").and_then(Value::as_str) else {
            return Ok(Some(value));
        };
        let ts = &value["timestamp"];
        let at = ts["seconds"].as_f64().unwrap_or(0.0)
            + ts["microseconds"].as_f64().unwrap_or(0.0) / 1e6;
        self.events.push(QmpEvent {
            name: name.to_string(),
            data: value.get("data").cloned().unwrap_or(Value::Null),
            at,
        });
        Ok(None)
    }

    /// One complete line, waiting at most until `deadline`.
    fn read_line(&mut self, wait: Wait, waiting_for: &str) -> Result<Vec<u8>, QmpError> {
        loop {
            let remaining = wait.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.timeout_error(waiting_for, wait));
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(remaining))
                .map_err(|source| self.io_error(waiting_for, source))?;
            match self.reader.read_until(b'\n', &mut self.partial) {
                Ok(0) => {
                    return Err(QmpError::Closed {
                        target: self.target.clone(),
                        waiting_for: waiting_for.to_string(),
                    })
                }
                Ok(_) if self.partial.ends_with(b"\n") => {
                    return Ok(std::mem::take(&mut self.partial));
                }
                // EOF in the middle of a line: the next read returns 0.
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.timeout_error(waiting_for, wait));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(self.io_error(waiting_for, source)),
            }
        }
    }

    fn timeout_error(&self, waiting_for: &str, wait: Wait) -> QmpError {
        QmpError::Timeout {
            target: self.target.clone(),
            waiting_for: waiting_for.to_string(),
            timeout: wait.timeout,
        }
    }

    fn io_error(&self, waiting_for: &str, source: io::Error) -> QmpError {
        QmpError::Io {
            target: self.target.clone(),
            waiting_for: waiting_for.to_string(),
            source,
        }
    }

    fn protocol(&self, detail: String) -> QmpError {
        QmpError::Protocol {
            target: self.target.clone(),
            detail,
        }
    }

    /// Every event read so far, oldest first.
    pub fn events(&self) -> &[QmpEvent] {
        &self.events
    }

    /// Removes and returns the events read so far.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        std::mem::take(&mut self.events)
    }

    /// Removes and returns the oldest kept event named `name`, reading from
    /// the socket until one arrives, at most `timeout`. Other events read
    /// meanwhile are kept.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<QmpEvent, QmpError> {
        let wait = Wait {
            deadline: Instant::now() + timeout,
            timeout,
        };
        let waiting_for = format!("event {name}");
        loop {
            if let Some(i) = self.events.iter().position(|e| e.name == name) {
                return Ok(self.events.remove(i));
            }
            // Nothing but events arrives unless a command is pending.
            if let Some(other) = self.read_one(wait, &waiting_for)? {
                return Err(self.protocol(format!("expected only events, got {other}")));
            }
        }
    }

    /// Ends QEMU (`quit`). QEMU may close the connection before its reply
    /// arrives; that counts as success too.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(QmpError::Io { source, .. }) if source.kind() == io::ErrorKind::ConnectionReset => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Resets the machine as the reset button would (a hard reboot; with
    /// `-no-reboot` QEMU exits instead).
    pub fn system_reset(&mut self) -> Result<(), QmpError> {
        self.execute("system_reset", None).map(drop)
    }

    /// Presses the ACPI power button: a guest that handles it shuts down
    /// cleanly, and QEMU then exits. systemd handles it only through
    /// `systemd-logind` (which needs D-Bus); a guest without them ignores
    /// the button and keeps running.
    pub fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// Pauses the vCPUs (the guest freezes; its sockets stay open).
    pub fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).map(drop)
    }

    /// Resumes paused vCPUs, also a VM started with `-S`.
    pub fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).map(drop)
    }

    /// The run state: `running`, `paused`, `prelaunch` (started with `-S`),
    /// `shutdown`, `guest-panicked`, ...
    pub fn query_status(&mut self) -> Result<String, QmpError> {
        let value = self.execute("query-status", None)?;
        value
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.protocol(format!("query-status returned {value}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    /// Stands for "read the command, never answer, keep the connection".
    const HANG: &str = "HANG";

    /// A fake QEMU: sends the greeting, then answers each line read with
    /// the next scripted response (several lines allowed per response), and
    /// closes the connection after the last one.
    fn fake(script: Vec<&'static str>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            let mut r = BufReader::new(stream);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            for reply in script {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if reply == HANG {
                    let mut rest = Vec::new();
                    let _ = r.read_to_end(&mut rest);
                    return;
                }
                let id = serde_json::from_str::<Value>(&line).unwrap()["id"].clone();
                let reply = reply.replace("$ID", &id.to_string());
                w.write_all(reply.as_bytes()).unwrap();
            }
        });
        (dir, path)
    }

    const OK: &str = "{\"return\": {}, \"id\": $ID}\n";

    #[test]
    fn events_before_a_reply_are_kept_and_replies_are_matched_by_id() {
        let (_dir, path) = fake(vec![
            OK,
            "{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 10, \"microseconds\": 500000}}\n\
             {\"return\": {\"status\": \"stale\"}, \"id\": \"testbed-0\"}\n\
             {\"return\": {\"status\": \"paused\", \"running\": false}, \"id\": $ID}\n",
        ]);
        let mut qmp = Qmp::connect(&path, Duration::from_secs(10)).unwrap();
        assert_eq!(qmp.query_status().unwrap(), "paused");
        assert_eq!(qmp.events().len(), 1);
        assert_eq!(qmp.events()[0].name, "STOP");
        assert_eq!(qmp.events()[0].data, Value::Null);
        assert!((qmp.events()[0].at - 10.5).abs() < 1e-9);
        let stop = qmp.wait_event("STOP", Duration::from_secs(1)).unwrap();
        assert_eq!(stop.name, "STOP");
        assert!(qmp.events().is_empty());
    }

    #[test]
    fn wait_event_reads_until_the_event_arrives() {
        // The STOP event follows the reply to stop, so execute returns
        // before it is read; wait_event must read it from the socket.
        let (_dir, path) = fake(vec![
            OK,
            "{\"return\": {}, \"id\": $ID}\n\
             {\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 0}}\n\
             {\"event\": \"STOP\", \"timestamp\": {\"seconds\": 2, \"microseconds\": 0}}\n",
            HANG,
        ]);
        let mut qmp = Qmp::connect(&path, Duration::from_secs(10)).unwrap();
        qmp.stop().unwrap();
        let stop = qmp.wait_event("STOP", Duration::from_secs(10)).unwrap();
        assert_eq!(stop.at, 2.0);
        // The other event read on the way is kept.
        let names: Vec<&str> = qmp.events().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["RESUME"]);
        let err = qmp
            .wait_event("RESET", Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("did not deliver event RESET within 100ms"),
            "{err}"
        );
    }

    #[test]
    fn errors_carry_the_description_and_the_socket() {
        let (_dir, path) = fake(vec![
            OK,
            "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}, \"id\": $ID}\n",
        ]);
        let mut qmp = Qmp::connect_node("ctl", &path, Duration::from_secs(10)).unwrap();
        let err = qmp.execute("nope", None).unwrap_err().to_string();
        assert!(
            err.starts_with("node ctl (QMP socket ") && err.contains("qmp.sock"),
            "{err}"
        );
        assert!(
            err.ends_with("nope failed: The command nope has not been found (CommandNotFound)"),
            "{err}"
        );
    }

    #[test]
    fn quit_accepts_a_connection_closed_without_a_reply() {
        // QEMU may exit before its reply to quit is written; the fake reads
        // quit, sends only the SHUTDOWN event and hangs up.
        let (_dir, path) = fake(vec![
            OK,
            "{\"event\": \"SHUTDOWN\", \"data\": {\"guest\": false, \"reason\": \"host-qmp-quit\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 0}}\n",
        ]);
        let mut qmp = Qmp::connect(&path, Duration::from_secs(10)).unwrap();
        qmp.quit().unwrap();
        assert_eq!(qmp.events()[0].data["reason"], "host-qmp-quit");
        // Any other command on a closed connection is an error.
        let err = qmp.query_status().unwrap_err();
        assert!(
            matches!(err, QmpError::Closed { .. } | QmpError::Io { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_missing_reply_is_a_timeout_naming_the_command() {
        let (_dir, path) = fake(vec![OK, HANG]);
        let mut qmp = Qmp::connect(&path, Duration::from_secs(10)).unwrap();
        qmp.set_timeout(Duration::from_millis(100));
        // The fake has no answer for this one and keeps the connection open.
        let err = qmp.execute("query-status", None).unwrap_err();
        assert!(
            matches!(&err, QmpError::Timeout { waiting_for, .. } if waiting_for == "query-status"),
            "{err}"
        );
    }

    #[test]
    fn a_socket_that_never_appears_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Qmp::connect(&dir.path().join("none.sock"), Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot connect to QMP socket "), "{err}");
    }
}
