//! One session: the handshake, then frames routed to per-channel handler
//! threads until the stream ends.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use testbed_proto::frame::{self, FrameKind, FrameReader, DATA_CHUNK, HANDSHAKE_CHANNEL};
use testbed_proto::{ErrorKind, Hello, HelloReply, RemoteError, Reply, Request, PROTOCOL_VERSION};

use crate::handlers;
use crate::log::{info, warning};
use crate::Agent;

/// What a handler thread receives on its channel.
#[derive(Debug)]
pub(crate) enum Inbound {
    Data(Vec<u8>),
    Eof,
    Cancel,
    /// Internal: an exec's process exited.
    Exited(std::process::ExitStatus),
    /// Internal: an output pump (exec) or socket reader (forward) finished.
    PumpDone,
}

/// The write half of the stream, shared by every handler.
pub(crate) struct Out {
    /// `None` once the session has ended: handlers and output pumps that
    /// outlive it must not write into the next session on the same port,
    /// whose channel ids mean other requests.
    writer: Mutex<Option<Box<dyn Write + Send>>>,
}

impl Out {
    fn writer(&self) -> MutexGuard<'_, Option<Box<dyn Write + Send>>> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, channel: u32, kind: FrameKind, payload: &[u8]) {
        if let Some(writer) = self.writer().as_mut() {
            // A failed write means the host is gone; the reader sees the end
            // of the stream and tears the session down, so nothing to do.
            let _ = frame::write_frame(&mut **writer, channel, kind, payload);
        }
    }
}

/// A handler's view of its channel's outgoing side. Once the terminal reply
/// is sent nothing more goes out, so output pumps that outlive a command
/// cannot write into a closed (or reused) channel.
pub(crate) struct ChannelOut {
    out: Arc<Out>,
    id: u32,
    done: Mutex<bool>,
}

impl ChannelOut {
    fn done(&self) -> MutexGuard<'_, bool> {
        self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends bytes in chunks; returns false once the channel has ended.
    pub fn data(&self, kind: FrameKind, bytes: &[u8]) -> bool {
        let done = self.done();
        if *done {
            return false;
        }
        if bytes.is_empty() {
            self.out.write(self.id, kind, bytes);
        }
        for chunk in bytes.chunks(DATA_CHUNK) {
            self.out.write(self.id, kind, chunk);
        }
        true
    }

    pub fn reply(&self, reply: &Reply) {
        let mut done = self.done();
        if *done {
            return;
        }
        if reply.is_terminal() {
            *done = true;
        }
        send_control(&self.out, self.id, reply);
    }
}

fn send_control<T: serde::Serialize>(out: &Out, channel: u32, message: &T) {
    match serde_json::to_vec(message) {
        Ok(payload) => out.write(channel, FrameKind::Control, &payload),
        Err(e) => warning!("cannot encode a reply on channel {channel}: {e}"),
    }
}

/// Everything a handler needs.
pub(crate) struct Ctx {
    pub id: u32,
    pub out: Arc<ChannelOut>,
    pub rx: mpsc::Receiver<Inbound>,
    /// For handlers' own helper threads to post internal events.
    pub tx: Sender<Inbound>,
    pub agent: Arc<Agent>,
}

type Channels = Arc<Mutex<HashMap<u32, Sender<Inbound>>>>;

fn lock(channels: &Channels) -> MutexGuard<'_, HashMap<u32, Sender<Inbound>>> {
    channels.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a session ended.
#[derive(Debug)]
pub enum End {
    /// The host closed the stream.
    Closed,
    /// The stream ended before any session began: bytes that were no
    /// preamble (frames a host sent to an earlier agent process on the same
    /// port, such as the cancel of a request that process was serving),
    /// then end-of-file. Nobody was talking to this agent.
    Idle,
    /// The stream broke or desynchronized; the message says how.
    Broken(String),
}

/// Serves one session until the stream ends. On the way out every running
/// request is cancelled (commands killed, connections closed).
pub fn serve<R: Read, W: Write + Send + 'static>(agent: &Arc<Agent>, reader: R, writer: W) -> End {
    let out = Arc::new(Out {
        writer: Mutex::new(Some(Box::new(writer))),
    });
    let hello = AtomicBool::new(false);
    let channels: Channels = Arc::new(Mutex::new(HashMap::new()));
    let mut reader = FrameReader::new(reader);
    let end = match reader.sync() {
        Ok(Some(skipped)) => {
            if skipped > 0 {
                warning!("skipped {skipped} bytes before the protocol preamble");
            }
            if let Some(writer) = out.writer().as_mut() {
                let _ = frame::write_magic(&mut **writer);
            }
            loop {
                match reader.next_frame() {
                    Ok(Some(frame)) => {
                        dispatch(agent, &out, &channels, &hello, frame);
                    }
                    Ok(None) => break End::Closed,
                    Err(e) if !e.is_fatal() => warning!("ignoring a frame: {e}"),
                    Err(e) => break End::Broken(e.to_string()),
                }
            }
        }
        Ok(None) => End::Idle,
        Err(e) => End::Broken(e.to_string()),
    };
    let open: Vec<Sender<Inbound>> = lock(&channels).values().cloned().collect();
    for tx in open {
        let _ = tx.send(Inbound::Cancel);
    }
    // Give handlers a moment to kill their process groups before the caller
    // (possibly) exits the process.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !lock(&channels).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    out.writer().take();
    end
}

fn dispatch(
    agent: &Arc<Agent>,
    out: &Arc<Out>,
    channels: &Channels,
    hello: &AtomicBool,
    frame: frame::Frame,
) {
    let id = frame.channel;
    if id == HANDSHAKE_CHANNEL {
        if frame.kind == FrameKind::Control {
            handshake(out, hello, &frame.payload);
        }
        return;
    }
    let existing = lock(channels).get(&id).cloned();
    match (frame.kind, existing) {
        (FrameKind::Control, Some(tx)) => match serde_json::from_slice::<Request>(&frame.payload) {
            Ok(Request::Cancel) => {
                let _ = tx.send(Inbound::Cancel);
            }
            Ok(_) => warning!("ignoring a second request on open channel {id}"),
            Err(e) => warning!("ignoring a malformed message on channel {id}: {e}"),
        },
        (FrameKind::Control, None) => {
            if hello.load(Ordering::Relaxed) {
                open(agent, out, channels, id, &frame.payload);
            } else {
                refuse(out, id);
            }
        }
        (FrameKind::Data, Some(tx)) => {
            let _ = tx.send(Inbound::Data(frame.payload));
        }
        (FrameKind::Eof, Some(tx)) => {
            let _ = tx.send(Inbound::Eof);
        }
        // Data for a channel that has ended (a late chunk after an early
        // error) or never existed: nobody wants it.
        (FrameKind::Data | FrameKind::Eof | FrameKind::Stderr, _) => {}
    }
}

fn handshake(out: &Out, hello_done: &AtomicBool, payload: &[u8]) {
    let reply = match serde_json::from_slice::<Hello>(payload) {
        Ok(hello) if hello.protocols.contains(&PROTOCOL_VERSION) => {
            info!(
                "session with {} (protocol {PROTOCOL_VERSION})",
                hello.software
            );
            hello_done.store(true, Ordering::Relaxed);
            HelloReply::Welcome {
                protocol: PROTOCOL_VERSION,
                agent: software(),
            }
        }
        Ok(hello) => {
            let message = format!(
                "protocol version mismatch: host {} offers {:?}, agent speaks {PROTOCOL_VERSION}",
                hello.software, hello.protocols
            );
            warning!("{message}");
            HelloReply::Rejected {
                protocols: vec![PROTOCOL_VERSION],
                agent: software(),
                message,
            }
        }
        Err(e) => HelloReply::Rejected {
            protocols: vec![PROTOCOL_VERSION],
            agent: software(),
            message: format!("malformed hello: {e}"),
        },
    };
    send_control(out, HANDSHAKE_CHANNEL, &reply);
}

pub(crate) fn software() -> String {
    format!("testbed-agent {}", env!("CARGO_PKG_VERSION"))
}

fn refuse(out: &Out, id: u32) {
    send_control(
        out,
        id,
        &error(
            ErrorKind::InvalidRequest,
            "a hello with a common protocol version must come before requests",
        ),
    );
}

fn open(agent: &Arc<Agent>, out: &Arc<Out>, channels: &Channels, id: u32, payload: &[u8]) {
    let channel_out = Arc::new(ChannelOut {
        out: Arc::clone(out),
        id,
        done: Mutex::new(false),
    });
    let request = match serde_json::from_slice::<Request>(payload) {
        Ok(Request::Cancel) => return,
        Ok(request) => request,
        Err(e) => {
            channel_out.reply(&error(
                ErrorKind::InvalidRequest,
                format!("malformed request: {e}"),
            ));
            return;
        }
    };
    let (tx, rx) = mpsc::channel();
    lock(channels).insert(id, tx.clone());
    let ctx = Ctx {
        id,
        out: Arc::clone(&channel_out),
        rx,
        tx,
        agent: Arc::clone(agent),
    };
    let channels_for_thread = Arc::clone(channels);
    let failed_out = Arc::clone(&channel_out);
    let spawned = std::thread::Builder::new()
        .name(format!("channel-{id}"))
        .spawn(move || {
            let reply = handlers::handle(ctx, request).unwrap_or_else(Reply::Error);
            channel_out.reply(&reply);
            lock(&channels_for_thread).remove(&id);
        });
    if let Err(e) = spawned {
        lock(channels).remove(&id);
        failed_out.reply(&error(
            ErrorKind::Other,
            format!("cannot start a thread for the request: {e}"),
        ));
    }
}

pub(crate) fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
    Reply::Error(RemoteError {
        kind,
        message: message.into(),
    })
}
