//! The host side of the protocol: a blocking, thread-safe client.
//!
//! One reader thread owns the read half of the stream and routes each frame
//! to its channel's queue; callers write frames under a mutex. The reader
//! never waits on a writer and writers never wait on a read, so the client
//! works over pipes where a blocked write on one side must not stop reads.
//! Queues are unbounded: the host has memory to spare, and a caller that
//! stops reading a stream only costs that stream's bytes.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::frame::{self, FrameError, FrameKind, FrameReader, DATA_CHUNK, HANDSHAKE_CHANNEL};
use crate::message::{
    millis, Activation, ActivationReport, AgentState, ErrorKind, ExecRequest, ExitStatus, FileInfo,
    ForwardRequest, GetRequest, Hello, HelloReply, PutRequest, RemoteError, Reply, Request,
    WaitFileRequest, WaitPortRequest, WaitUnitRequest, PROTOCOL_VERSION,
};

/// Extra time the client waits beyond a timeout the agent enforces itself,
/// so that the agent's own (more precise) report arrives first.
const GRACE: Duration = Duration::from_secs(10);

/// Why a call failed. Every message names the node and the request.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("node {node}: cannot write {what} to the agent channel: {source}")]
    Write {
        node: String,
        what: String,
        source: io::Error,
    },
    #[error("node {node}: agent channel closed during {what}: {reason}")]
    Disconnected {
        node: String,
        what: String,
        reason: String,
    },
    #[error("node {node}: protocol version mismatch: host speaks {}, agent speaks {}", versions(.host), versions(.agent))]
    VersionMismatch {
        node: String,
        host: Vec<u32>,
        agent: Vec<u32>,
        agent_software: String,
    },
    #[error("node {node}: {what} timed out after {}", seconds(*.after))]
    Timeout {
        node: String,
        what: String,
        after: Duration,
    },
    #[error("node {node}: {what}: {message}")]
    Remote {
        node: String,
        what: String,
        kind: ErrorKind,
        message: String,
    },
    #[error(
        "node {node}: service {unit} did not become active ({state}); journal tail:\n{journal}"
    )]
    ServiceFailed {
        node: String,
        unit: String,
        state: String,
        journal: String,
    },
    #[error("node {node}: unexpected reply to {what}: {detail}")]
    Protocol {
        node: String,
        what: String,
        detail: String,
    },
}

fn versions(list: &[u32]) -> String {
    let parts: Vec<String> = list.iter().map(u32::to_string).collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The node's name, used in every error message.
    pub node: String,
    /// How long to wait for the agent's answer to the hello. A VM's agent
    /// answers only once it has booted far enough to start.
    pub hello_timeout: Duration,
    /// The protocol versions offered in the hello. Only tests change this,
    /// to check how a mismatch is reported.
    pub protocols: Vec<u32>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            node: "agent".to_owned(),
            hello_timeout: Duration::from_secs(30),
            protocols: vec![PROTOCOL_VERSION],
        }
    }
}

/// What the agent said about itself in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub protocol: u32,
    pub software: String,
}

enum Inbound {
    Control(Vec<u8>),
    Data(Vec<u8>),
    Stderr(Vec<u8>),
    Eof,
}

#[derive(Default)]
struct Channels {
    open: HashMap<u32, Sender<Inbound>>,
    /// Set once the reader stops: why the connection ended.
    closed: Option<String>,
    /// Whether it ended because the agent announced a new process.
    restarted: bool,
}

/// How a client's connection ended ([`Client::wait_closed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// Why, as the failed requests were told.
    pub reason: String,
    /// The agent started again: a new process announced itself on the same
    /// stream (the old one was killed or crashed). The stream is still
    /// there; a new client on a new connection gets the new agent.
    pub restarted: bool,
}

struct Shared {
    node: String,
    writer: Mutex<Box<dyn Write + Send>>,
    /// Shared with the reader thread, which must not own the writer: when
    /// the last handle goes, the writer is dropped, which closes the stream
    /// (and ends a `--stdio` agent).
    channels: Arc<Mutex<Channels>>,
    /// Notified by the reader when it stops.
    ended: Arc<Condvar>,
    next_id: AtomicU32,
}

fn lock(channels: &Mutex<Channels>) -> MutexGuard<'_, Channels> {
    // A poisoned lock only means another thread panicked while holding it;
    // the map itself is still consistent.
    channels.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn channels(&self) -> MutexGuard<'_, Channels> {
        lock(&self.channels)
    }

    /// Nothing is written once the session has ended: on a stream where a
    /// new agent process announced itself, frames for the old one (the
    /// cancels of the requests it took with it) would reach the new one.
    fn write(&self, channel: u32, kind: FrameKind, payload: &[u8]) -> io::Result<()> {
        if let Some(reason) = &self.channels().closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, reason.clone()));
        }
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        frame::write_frame(&mut *writer, channel, kind, payload)
    }

    fn closed_reason(&self) -> String {
        self.channels()
            .closed
            .clone()
            .unwrap_or_else(|| "the connection ended".to_owned())
    }
}

/// A connection to one agent. Cheap to clone; all clones share the stream,
/// and calls from many threads run concurrently on their own channels.
///
/// The reader thread ends when the stream does: to stop it, close the
/// underlying transport (kill the `exec -i` process, shut the socket down).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    info: AgentInfo,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("node", &self.shared.node)
            .field("agent", &self.info)
            .finish()
    }
}

impl Client {
    /// Connects with default options: sends the hello and waits for the
    /// agent's answer.
    pub fn new<R, W>(reader: R, writer: W) -> Result<Client, ClientError>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        Self::with_options(reader, writer, ClientOptions::default())
    }

    pub fn with_options<R, W>(
        reader: R,
        writer: W,
        options: ClientOptions,
    ) -> Result<Client, ClientError>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let shared = Arc::new(Shared {
            node: options.node.clone(),
            writer: Mutex::new(Box::new(writer)),
            channels: Arc::new(Mutex::new(Channels::default())),
            ended: Arc::new(Condvar::new()),
            next_id: AtomicU32::new(1),
        });
        let (tx, rx) = mpsc::channel();
        shared.channels().open.insert(HANDSHAKE_CHANNEL, tx);
        let routes = Arc::clone(&shared.channels);
        let ended = Arc::clone(&shared.ended);
        let node = options.node.clone();
        std::thread::Builder::new()
            .name(format!("agent-reader-{}", options.node))
            .spawn(move || read_loop(reader, &node, &routes, &ended))
            .map_err(|source| ClientError::Write {
                node: options.node.clone(),
                what: "hello".to_owned(),
                source,
            })?;

        let what = "hello".to_owned();
        let hello = Hello {
            protocols: options.protocols.clone(),
            software: format!("testbed {}", env!("CARGO_PKG_VERSION")),
        };
        let payload = serde_json::to_vec(&hello).map_err(|e| protocol(&shared, &what, e))?;
        {
            let mut w = shared.writer.lock().unwrap_or_else(|e| e.into_inner());
            frame::write_magic(&mut *w)
                .and_then(|()| {
                    frame::write_frame(&mut *w, HANDSHAKE_CHANNEL, FrameKind::Control, &payload)
                })
                .map_err(|source| ClientError::Write {
                    node: shared.node.clone(),
                    what: what.clone(),
                    source,
                })?;
        }
        let answer = match rx.recv_timeout(options.hello_timeout) {
            Ok(Inbound::Control(bytes)) => bytes,
            Ok(_) => {
                return Err(protocol(
                    &shared,
                    &what,
                    "data frame on the handshake channel",
                ));
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(ClientError::Timeout {
                    node: shared.node.clone(),
                    what,
                    after: options.hello_timeout,
                })
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(ClientError::Disconnected {
                    node: shared.node.clone(),
                    what,
                    reason: shared.closed_reason(),
                })
            }
        };
        shared.channels().open.remove(&HANDSHAKE_CHANNEL);
        let answer: HelloReply =
            serde_json::from_slice(&answer).map_err(|e| protocol(&shared, &what, e))?;
        match answer {
            HelloReply::Welcome { protocol: v, agent } if options.protocols.contains(&v) => {
                Ok(Client {
                    shared,
                    info: AgentInfo {
                        protocol: v,
                        software: agent,
                    },
                })
            }
            HelloReply::Welcome { protocol: v, agent } => Err(ClientError::VersionMismatch {
                node: shared.node.clone(),
                host: options.protocols,
                agent: vec![v],
                agent_software: agent,
            }),
            HelloReply::Rejected {
                protocols, agent, ..
            } => Err(ClientError::VersionMismatch {
                node: shared.node.clone(),
                host: options.protocols,
                agent: protocols,
                agent_software: agent,
            }),
        }
    }

    /// The agent's protocol version and software, from the handshake.
    pub fn agent_info(&self) -> &AgentInfo {
        &self.info
    }

    /// The node name used in messages.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// Whether the connection has ended (see [`Client::wait_closed`]).
    pub fn is_closed(&self) -> bool {
        self.shared.channels().closed.is_some()
    }

    /// Blocks until the connection ends, and says how. Every request still
    /// waiting has been failed with the same reason by then.
    pub fn wait_closed(&self) -> Closed {
        let mut channels = self.shared.channels();
        loop {
            if let Some(reason) = &channels.closed {
                return Closed {
                    reason: reason.clone(),
                    restarted: channels.restarted,
                };
            }
            channels = self
                .shared
                .ended
                .wait(channels)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn open(&self, request: &Request, what: String) -> Result<Chan, ClientError> {
        let (tx, rx) = mpsc::channel();
        let id = {
            let mut channels = self.shared.channels();
            if let Some(reason) = &channels.closed {
                return Err(ClientError::Disconnected {
                    node: self.shared.node.clone(),
                    what,
                    reason: reason.clone(),
                });
            }
            let mut id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            while id == HANDSHAKE_CHANNEL || channels.open.contains_key(&id) {
                id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            }
            channels.open.insert(id, tx);
            id
        };
        let chan = Chan {
            guard: Arc::new(ChanGuard {
                shared: Arc::clone(&self.shared),
                id,
                what,
                finished: AtomicBool::new(false),
            }),
            rx,
        };
        chan.guard.send_control(request)?;
        Ok(chan)
    }

    /// Starts a command; returns once the agent has spawned it (or failed
    /// to). Output and the exit status arrive through [`Exec`]. If the
    /// request has a timeout, the agent kills the command's process group
    /// when it expires and reports `timed_out` in the status.
    pub fn exec(&self, request: ExecRequest) -> Result<Exec, ClientError> {
        let what = format!("exec {}", request.command);
        let limit = request.timeout_ms.map(Duration::from_millis);
        let chan = self.open(&Request::Exec(request), what)?;
        let mut exec = Exec {
            chan,
            limit,
            deadline: limit.map(|t| Instant::now() + t + GRACE),
            pid: None,
            pending: Vec::new(),
            status: None,
        };
        // Wait for `Started` so that a command that cannot run at all is an
        // error of this call, not an event later.
        loop {
            match exec.chan.recv(exec.deadline, exec.limit)? {
                Event::Reply(Reply::Started { pid }) => {
                    exec.pid = Some(pid);
                    return Ok(exec);
                }
                Event::Reply(Reply::Error(e)) => return Err(exec.chan.remote(e, exec.limit)),
                Event::Reply(Reply::Exited(status)) => {
                    exec.pending.push(ExecEvent::Exit(status));
                    return Ok(exec);
                }
                Event::Data(bytes) => exec.pending.push(ExecEvent::Stdout(bytes)),
                Event::Stderr(bytes) => exec.pending.push(ExecEvent::Stderr(bytes)),
                Event::Eof => {}
                Event::Reply(other) => return Err(exec.chan.unexpected(&other)),
            }
        }
    }

    /// Runs a command to completion and collects its output.
    pub fn exec_output(&self, request: ExecRequest) -> Result<Output, ClientError> {
        self.exec(request)?.wait()
    }

    /// Uploads `contents` to `request.path`, atomically, with the given
    /// mode and owner.
    pub fn put(
        &self,
        request: PutRequest,
        mut contents: impl Read,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let what = format!("put {}", request.path);
        let deadline = Instant::now() + timeout;
        let chan = self.open(&Request::Put(request), what)?;
        let mut buf = vec![0u8; DATA_CHUNK];
        loop {
            let n = match contents.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    // Dropping `chan` cancels the upload on the agent.
                    return Err(ClientError::Write {
                        node: self.shared.node.clone(),
                        what: chan.guard.what.clone(),
                        source,
                    });
                }
            };
            chan.guard.send(FrameKind::Data, &buf[..n])?;
            // An early error (say, a missing directory) ends the upload
            // without sending the rest.
            if let Ok(inbound) = chan.rx.try_recv() {
                return match chan.event(inbound)? {
                    Event::Reply(Reply::Error(e)) => Err(chan.remote(e, Some(timeout))),
                    Event::Reply(other) => Err(chan.unexpected(&other)),
                    _ => Err(chan.protocol("data frame during an upload")),
                };
            }
            if Instant::now() > deadline {
                return Err(chan.timeout(timeout));
            }
        }
        chan.guard.send(FrameKind::Eof, &[])?;
        match chan.finish(Some(deadline), Some(timeout))? {
            Reply::Done => Ok(()),
            other => Err(chan.unexpected(&other)),
        }
    }

    /// Downloads a file into memory.
    pub fn get(&self, path: &str, timeout: Duration) -> Result<(FileInfo, Vec<u8>), ClientError> {
        let mut contents = Vec::new();
        let info = self.get_to(path, &mut contents, timeout)?;
        Ok((info, contents))
    }

    /// Downloads a file into `out`.
    pub fn get_to(
        &self,
        path: &str,
        out: &mut dyn Write,
        timeout: Duration,
    ) -> Result<FileInfo, ClientError> {
        let what = format!("get {path}");
        let deadline = Instant::now() + timeout;
        let chan = self.open(
            &Request::Get(GetRequest {
                path: path.to_owned(),
            }),
            what,
        )?;
        let mut info = None;
        loop {
            match chan.recv(Some(deadline), Some(timeout))? {
                Event::Reply(Reply::FileInfo(i)) => info = Some(i),
                Event::Data(bytes) => {
                    out.write_all(&bytes).map_err(|source| ClientError::Write {
                        node: self.shared.node.clone(),
                        what: format!("{} (local copy)", chan.guard.what),
                        source,
                    })?;
                }
                Event::Eof => {}
                Event::Reply(Reply::Done) => {
                    return info.ok_or_else(|| chan.protocol("no file info before the end"));
                }
                Event::Reply(Reply::Error(e)) => return Err(chan.remote(e, Some(timeout))),
                Event::Reply(other) => return Err(chan.unexpected(&other)),
                Event::Stderr(_) => return Err(chan.protocol("stderr frame in a download")),
            }
        }
    }

    /// Waits until a systemd unit is active. If the unit fails, the error
    /// is [`ClientError::ServiceFailed`] with its journal tail.
    pub fn wait_unit(&self, unit: &str, timeout: Duration) -> Result<(), ClientError> {
        let request = Request::WaitUnit(WaitUnitRequest {
            unit: unit.to_owned(),
            state: "active".to_owned(),
            timeout_ms: millis(timeout),
        });
        self.simple_wait(&request, format!("wait for unit {unit}"), timeout)
    }

    /// Waits until a TCP connection to `127.0.0.1:port` in the guest succeeds.
    pub fn wait_port(&self, port: u16, timeout: Duration) -> Result<(), ClientError> {
        let request = Request::WaitPort(WaitPortRequest {
            port,
            host: "127.0.0.1".to_owned(),
            timeout_ms: millis(timeout),
        });
        self.simple_wait(&request, format!("wait for port {port}"), timeout)
    }

    /// Waits until a path exists in the guest.
    pub fn wait_file(&self, path: &str, timeout: Duration) -> Result<(), ClientError> {
        let request = Request::WaitFile(WaitFileRequest {
            path: path.to_owned(),
            timeout_ms: millis(timeout),
        });
        self.simple_wait(&request, format!("wait for file {path}"), timeout)
    }

    fn simple_wait(
        &self,
        request: &Request,
        what: String,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let chan = self.open(request, what)?;
        match chan.finish(Some(Instant::now() + timeout + GRACE), Some(timeout))? {
            Reply::Done => Ok(()),
            other => Err(chan.unexpected(&other)),
        }
    }

    /// Opens a TCP connection to `127.0.0.1:port` in the guest, relayed
    /// through the agent.
    pub fn forward(&self, port: u16, connect_timeout: Duration) -> Result<Forward, ClientError> {
        let request = Request::Forward(ForwardRequest {
            port,
            host: "127.0.0.1".to_owned(),
            connect_timeout_ms: millis(connect_timeout),
        });
        let chan = self.open(&request, format!("forward to port {port}"))?;
        let deadline = Instant::now() + connect_timeout + GRACE;
        match chan.recv(Some(deadline), Some(connect_timeout))? {
            Event::Reply(Reply::Connected) => {}
            Event::Reply(Reply::Error(e)) => return Err(chan.remote(e, Some(connect_timeout))),
            Event::Reply(other) => return Err(chan.unexpected(&other)),
            _ => return Err(chan.protocol("data before the connection was made")),
        }
        let guard = Arc::clone(&chan.guard);
        Ok(Forward {
            reader: ForwardReader {
                chan,
                buf: Vec::new(),
                pos: 0,
                eof: false,
            },
            writer: ForwardWriter { guard, shut: false },
        })
    }

    /// The guest's state: hostname, uptime, load, activation status.
    pub fn state(&self, timeout: Duration) -> Result<AgentState, ClientError> {
        let chan = self.open(&Request::State, "state".to_owned())?;
        match chan.finish(Some(Instant::now() + timeout), Some(timeout))? {
            Reply::State(state) => Ok(state),
            other => Err(chan.unexpected(&other)),
        }
    }

    /// Applies the node's identity and starts its services; returns once
    /// every service is active. `timeout` covers the whole activation.
    pub fn activate(
        &self,
        activation: &Activation,
        timeout: Duration,
    ) -> Result<ActivationReport, ClientError> {
        let chan = self.open(
            &Request::Activate(Box::new(activation.clone())),
            "activation".to_owned(),
        )?;
        match chan.finish(Some(Instant::now() + timeout), Some(timeout))? {
            Reply::Activated(report) => Ok(report),
            other => Err(chan.unexpected(&other)),
        }
    }
}

fn protocol(shared: &Shared, what: &str, detail: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol {
        node: shared.node.clone(),
        what: what.to_owned(),
        detail: detail.to_string(),
    }
}

fn read_loop<R: Read>(reader: R, node: &str, routes: &Mutex<Channels>, ended: &Condvar) {
    let mut reader = FrameReader::new(reader);
    // Once the agent answered the hello, a preamble means a new agent
    // process: the one this session talked to is gone, with whatever it was
    // doing, and will never answer. (Before that, it is the announcement of
    // the very agent that is about to answer.)
    let mut welcomed = false;
    let mut restarted = false;
    let reason = match reader.sync() {
        Ok(Some(_)) => loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    welcomed |= frame.channel == HANDSHAKE_CHANNEL;
                    let inbound = match frame.kind {
                        FrameKind::Control => Inbound::Control(frame.payload),
                        FrameKind::Data => Inbound::Data(frame.payload),
                        FrameKind::Stderr => Inbound::Stderr(frame.payload),
                        FrameKind::Eof => Inbound::Eof,
                    };
                    // Frames for a channel the caller already dropped (late
                    // output after a cancel) have nowhere to go.
                    if let Some(tx) = lock(routes).open.get(&frame.channel) {
                        let _ = tx.send(inbound);
                    }
                }
                Ok(None) => break "the agent closed the connection".to_owned(),
                Err(FrameError::Preamble) if welcomed => {
                    restarted = true;
                    break format!(
                        "the agent on {node} started again: its previous process ended (killed or crashed) and took the requests it was serving with it"
                    );
                }
                // Unknown frame kinds may come from a newer agent; the
                // stream is still in sync, so skip them.
                Err(e) if !e.is_fatal() => continue,
                Err(e) => break e.to_string(),
            }
        },
        Ok(None) => "the agent closed the connection before the handshake".to_owned(),
        Err(e) => e.to_string(),
    };
    let mut channels = lock(routes);
    channels.closed = Some(reason);
    channels.restarted = restarted;
    // Dropping the senders wakes every waiting caller with `Disconnected`.
    channels.open.clear();
    ended.notify_all();
}

enum Event {
    Reply(Reply),
    Data(Vec<u8>),
    Stderr(Vec<u8>),
    Eof,
}

/// The part of an open channel that both halves of a [`Forward`] share.
/// Dropping the last reference cancels the request if it has not ended.
struct ChanGuard {
    shared: Arc<Shared>,
    id: u32,
    what: String,
    finished: AtomicBool,
}

impl ChanGuard {
    fn send_control<T: Serialize>(&self, message: &T) -> Result<(), ClientError> {
        let payload = serde_json::to_vec(message).map_err(|e| ClientError::Protocol {
            node: self.shared.node.clone(),
            what: self.what.clone(),
            detail: e.to_string(),
        })?;
        self.send(FrameKind::Control, &payload)
    }

    fn send(&self, kind: FrameKind, payload: &[u8]) -> Result<(), ClientError> {
        let mut chunks = payload.chunks(if kind == FrameKind::Control {
            usize::MAX
        } else {
            DATA_CHUNK
        });
        let first = chunks.next().unwrap_or(&[]);
        for chunk in std::iter::once(first).chain(chunks) {
            self.shared
                .write(self.id, kind, chunk)
                .map_err(|source| ClientError::Write {
                    node: self.shared.node.clone(),
                    what: self.what.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

impl Drop for ChanGuard {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::Relaxed) {
            let _ = self.send_control(&Request::Cancel);
        }
        self.shared.channels().open.remove(&self.id);
    }
}

struct Chan {
    guard: Arc<ChanGuard>,
    rx: Receiver<Inbound>,
}

impl Chan {
    fn node(&self) -> String {
        self.guard.shared.node.clone()
    }

    /// The next event; `limit` is the timeout reported if `deadline` passes.
    fn recv(
        &self,
        deadline: Option<Instant>,
        limit: Option<Duration>,
    ) -> Result<Event, ClientError> {
        let inbound = match deadline {
            None => self.rx.recv().map_err(|_| self.disconnected())?,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(left) {
                    Ok(inbound) => inbound,
                    Err(RecvTimeoutError::Timeout) => {
                        return Err(self.timeout(limit.unwrap_or(left)))
                    }
                    Err(RecvTimeoutError::Disconnected) => return Err(self.disconnected()),
                }
            }
        };
        self.event(inbound)
    }

    fn event(&self, inbound: Inbound) -> Result<Event, ClientError> {
        Ok(match inbound {
            Inbound::Control(bytes) => {
                let reply: Reply = serde_json::from_slice(&bytes)
                    .map_err(|e| self.protocol(format!("malformed reply: {e}")))?;
                if reply.is_terminal() {
                    self.guard.finished.store(true, Ordering::Relaxed);
                }
                Event::Reply(reply)
            }
            Inbound::Data(bytes) => Event::Data(bytes),
            Inbound::Stderr(bytes) => Event::Stderr(bytes),
            Inbound::Eof => Event::Eof,
        })
    }

    /// Waits for the terminal reply, turning errors into `ClientError`s.
    fn finish(
        &self,
        deadline: Option<Instant>,
        limit: Option<Duration>,
    ) -> Result<Reply, ClientError> {
        match self.recv(deadline, limit)? {
            Event::Reply(Reply::Error(e)) => Err(self.remote(e, limit)),
            Event::Reply(Reply::ServiceFailed(f)) => Err(ClientError::ServiceFailed {
                node: self.node(),
                unit: f.unit,
                state: f.state,
                journal: f.journal,
            }),
            Event::Reply(reply) if reply.is_terminal() => Ok(reply),
            Event::Reply(other) => Err(self.unexpected(&other)),
            Event::Data(_) | Event::Stderr(_) | Event::Eof => {
                Err(self.protocol("unexpected data frame"))
            }
        }
    }

    fn remote(&self, error: RemoteError, limit: Option<Duration>) -> ClientError {
        match (error.kind, limit) {
            (ErrorKind::TimedOut, Some(after)) => self.timeout(after),
            _ => ClientError::Remote {
                node: self.node(),
                what: self.guard.what.clone(),
                kind: error.kind,
                message: error.message,
            },
        }
    }

    fn timeout(&self, after: Duration) -> ClientError {
        ClientError::Timeout {
            node: self.node(),
            what: self.guard.what.clone(),
            after,
        }
    }

    fn disconnected(&self) -> ClientError {
        ClientError::Disconnected {
            node: self.node(),
            what: self.guard.what.clone(),
            reason: self.guard.shared.closed_reason(),
        }
    }

    fn unexpected(&self, reply: &Reply) -> ClientError {
        self.protocol(format!("{reply:?}"))
    }

    fn protocol(&self, detail: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            node: self.node(),
            what: self.guard.what.clone(),
            detail: detail.into(),
        }
    }
}

/// One piece of a running command's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The last event.
    Exit(ExitStatus),
}

/// The collected result of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A running command. Dropping it before the exit kills the command.
pub struct Exec {
    chan: Chan,
    limit: Option<Duration>,
    deadline: Option<Instant>,
    pid: Option<u32>,
    /// Events that arrived while `Client::exec` waited for `Started`.
    pending: Vec<ExecEvent>,
    status: Option<ExitStatus>,
}

impl std::fmt::Debug for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec")
            .field("what", &self.chan.guard.what)
            .field("pid", &self.pid)
            .field("status", &self.status)
            .finish()
    }
}

impl Exec {
    /// The command's pid inside the guest.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The next chunk of output, or the exit status; `None` after the exit.
    pub fn next_event(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        if !self.pending.is_empty() {
            let event = self.pending.remove(0);
            if let ExecEvent::Exit(status) = event {
                self.status = Some(status);
            }
            return Ok(Some(event));
        }
        if self.status.is_some() {
            return Ok(None);
        }
        loop {
            match self.chan.recv(self.deadline, self.limit)? {
                Event::Data(bytes) => return Ok(Some(ExecEvent::Stdout(bytes))),
                Event::Stderr(bytes) => return Ok(Some(ExecEvent::Stderr(bytes))),
                Event::Eof => {}
                Event::Reply(Reply::Exited(status)) => {
                    self.status = Some(status);
                    return Ok(Some(ExecEvent::Exit(status)));
                }
                Event::Reply(Reply::Error(e)) => return Err(self.chan.remote(e, self.limit)),
                Event::Reply(other) => return Err(self.chan.unexpected(&other)),
            }
        }
    }

    /// Sends bytes to the command's standard input (requires
    /// [`ExecRequest::with_stdin`]).
    pub fn write_stdin(&self, bytes: &[u8]) -> Result<(), ClientError> {
        self.chan.guard.send(FrameKind::Data, bytes)
    }

    /// Closes the command's standard input.
    pub fn close_stdin(&self) -> Result<(), ClientError> {
        self.chan.guard.send(FrameKind::Eof, &[])
    }

    /// A handle that writes the command's standard input from another
    /// thread while this one reads its output (requires
    /// [`ExecRequest::with_stdin`]).
    pub fn stdin(&self) -> ExecStdin {
        ExecStdin {
            guard: Arc::clone(&self.chan.guard),
        }
    }

    /// Kills the command's process group; the exit status still arrives.
    pub fn kill(&self) -> Result<(), ClientError> {
        self.chan.guard.send_control(&Request::Cancel)
    }

    /// Collects the remaining output and the exit status.
    pub fn wait(mut self) -> Result<Output, ClientError> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        while let Some(event) = self.next_event()? {
            match event {
                ExecEvent::Stdout(bytes) => stdout.extend_from_slice(&bytes),
                ExecEvent::Stderr(bytes) => stderr.extend_from_slice(&bytes),
                ExecEvent::Exit(status) => {
                    return Ok(Output {
                        status,
                        stdout,
                        stderr,
                    })
                }
            }
        }
        Err(self.chan.protocol("no exit status"))
    }
}

/// The standard input of a running [`Exec`], usable from another thread.
pub struct ExecStdin {
    guard: Arc<ChanGuard>,
}

impl std::fmt::Debug for ExecStdin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecStdin")
            .field("what", &self.guard.what)
            .finish()
    }
}

impl ExecStdin {
    pub fn write(&self, bytes: &[u8]) -> Result<(), ClientError> {
        self.guard.send(FrameKind::Data, bytes)
    }

    pub fn close(&self) -> Result<(), ClientError> {
        self.guard.send(FrameKind::Eof, &[])
    }
}

/// A TCP connection to a guest port, relayed by the agent. Implements
/// `Read` and `Write`; [`Forward::split`] gives halves for two threads.
#[derive(Debug)]
pub struct Forward {
    reader: ForwardReader,
    writer: ForwardWriter,
}

impl Forward {
    pub fn split(self) -> (ForwardReader, ForwardWriter) {
        (self.reader, self.writer)
    }

    /// Half-closes the connection: the guest side reads end-of-file.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.writer.shutdown_write()
    }
}

impl Read for Forward {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Write for Forward {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// The receiving half of a [`Forward`].
pub struct ForwardReader {
    chan: Chan,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl std::fmt::Debug for ForwardReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardReader")
            .field("what", &self.chan.guard.what)
            .field("eof", &self.eof)
            .finish()
    }
}

impl Read for ForwardReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            if self.eof {
                return Ok(0);
            }
            let event = self.chan.recv(None, None).map_err(io_error)?;
            match event {
                Event::Data(bytes) => {
                    self.buf = bytes;
                    self.pos = 0;
                }
                Event::Eof | Event::Reply(Reply::Closed) => self.eof = true,
                Event::Reply(Reply::Error(e)) => {
                    self.eof = true;
                    return Err(io_error(self.chan.remote(e, None)));
                }
                Event::Reply(other) => return Err(io_error(self.chan.unexpected(&other))),
                Event::Stderr(_) => {
                    return Err(io_error(self.chan.protocol("stderr frame in a forward")))
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The sending half of a [`Forward`]. Dropping it half-closes the
/// connection.
pub struct ForwardWriter {
    guard: Arc<ChanGuard>,
    shut: bool,
}

impl std::fmt::Debug for ForwardWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardWriter")
            .field("what", &self.guard.what)
            .field("shut", &self.shut)
            .finish()
    }
}

impl ForwardWriter {
    /// Half-closes the connection: the guest side reads end-of-file.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if !self.shut {
            self.shut = true;
            self.guard.send(FrameKind::Eof, &[]).map_err(io_error)?;
        }
        Ok(())
    }
}

impl Write for ForwardWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.shut || self.guard.finished.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("{} is closed for writing", self.guard.what),
            ));
        }
        let n = buf.len().min(DATA_CHUNK);
        self.guard
            .send(FrameKind::Data, &buf[..n])
            .map_err(io_error)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ForwardWriter {
    fn drop(&mut self) {
        if !self.guard.finished.load(Ordering::Relaxed) {
            let _ = self.shutdown_write();
        }
    }
}

fn io_error(error: ClientError) -> io::Error {
    let kind = match &error {
        ClientError::Disconnected { .. } | ClientError::Write { .. } => io::ErrorKind::BrokenPipe,
        ClientError::Timeout { .. } => io::ErrorKind::TimedOut,
        ClientError::Remote {
            kind: ErrorKind::ConnectionRefused,
            ..
        } => io::ErrorKind::ConnectionRefused,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, error)
}
