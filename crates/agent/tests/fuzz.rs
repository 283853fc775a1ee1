//! The agent's session (`testbed_agent::session::serve`, in this process,
//! on a socket pair) against arbitrary frames from the host, with a good
//! hello before them or none: frames of any kind, on any channel, with
//! arbitrary, textual or JSON payloads, and bytes that desynchronize the
//! stream (garbage, headers declaring any length). It never panics, what it
//! sends is well-framed, it ends when the host hangs up, and after
//! well-framed garbage it still answers a request (or refuses it, before a
//! hello).
//!
//! Requests that would act on this host (exec, put, get, forward, waits,
//! activation) are never sent. The agent logs to stderr, which this test
//! binary sends to `target/tmp/agent-fuzz.log`: thousands of warnings about
//! ignored frames would drown the suite's output.
//!
//! The target records its number of cases in `target/tmp/robustness.txt`;
//! `TESTBED_FUZZ_CASES` runs more (`docs/testing.md`, "Fuzzing").

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Once};
use std::time::Duration;

use proptest::prelude::*;
use testbed_agent::session::{self, End};
use testbed_agent::Agent;
use testbed_proto::frame::{self, Frame, FrameKind, FrameReader, HANDSHAKE_CHANNEL, MAGIC};
use testbed_proto::{ErrorKind, Hello, Reply, Request, PROTOCOL_VERSION};
use testbed_test_support::Fuzz;

const TMP: &str = env!("CARGO_TARGET_TMPDIR");

/// The channel of the request sent after the garbage.
const PROBE: u32 = 0xffff_ff00;

/// Generous: what should take milliseconds must not take this long.
const HANG: Duration = Duration::from_secs(10);

fn quiet() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let log = std::fs::File::create(Path::new(TMP).join("agent-fuzz.log")).unwrap();
        rustix::stdio::dup2_stderr(&log).unwrap();
    });
}

/// Raw header bytes: declared length, channel, kind byte.
fn header(len: u32, channel: u32, kind: u8) -> Vec<u8> {
    let mut h = len.to_be_bytes().to_vec();
    h.extend_from_slice(&channel.to_be_bytes());
    h.push(kind);
    h
}

#[derive(Debug, Clone)]
enum Piece {
    /// A whole frame (of a known kind or not): the stream stays in sync.
    Frame {
        channel: u32,
        kind: u8,
        payload: Vec<u8>,
    },
    /// Bytes that may desynchronize the stream.
    Raw(Vec<u8>),
}

impl Piece {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Piece::Frame {
                channel,
                kind,
                payload,
            } => [&header(payload.len() as u32, *channel, *kind)[..], payload].concat(),
            Piece::Raw(bytes) => bytes.clone(),
        }
    }

    /// Whether it is a hello the agent welcomes.
    fn is_good_hello(&self) -> bool {
        matches!(self, Piece::Frame { channel: HANDSHAKE_CHANNEL, kind: 1, payload }
            if serde_json::from_slice::<Hello>(payload)
                .is_ok_and(|h| h.protocols.contains(&PROTOCOL_VERSION)))
    }

    /// Whether it is a request that would act on this host.
    fn acts(&self) -> bool {
        match self {
            Piece::Frame {
                channel,
                kind: 1,
                payload,
            } if *channel != HANDSHAKE_CHANNEL => !matches!(
                serde_json::from_slice::<Request>(payload),
                Err(_) | Ok(Request::State | Request::Cancel)
            ),
            _ => false,
        }
    }
}

fn hello(protocols: Vec<u32>) -> Vec<u8> {
    serde_json::to_vec(&Hello {
        protocols,
        software: "fuzz".to_owned(),
    })
    .unwrap()
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        ".{0,64}".prop_map(String::into_bytes),
        Just(serde_json::to_vec(&Request::State).unwrap()),
        Just(serde_json::to_vec(&Request::Cancel).unwrap()),
        prop::collection::vec(any::<u32>(), 0..3).prop_map(hello),
        Just(hello(vec![PROTOCOL_VERSION])),
        Just(br#"{"op":"exec","command":12}"#.to_vec()),
        Just(br#"{"op":"put","path":7}"#.to_vec()),
        Just(br#"{"op":"state","extra":[1,2,{}]}"#.to_vec()),
    ]
}

fn piece() -> impl Strategy<Value = Piece> {
    let channel = prop_oneof![Just(HANDSHAKE_CHANNEL), 1u32..8, any::<u32>()].prop_map(|c| {
        if c == PROBE {
            c - 1
        } else {
            c
        }
    });
    let kind = prop_oneof![1u8..=4, any::<u8>()];
    prop_oneof![
        14 => (channel, kind, payload()).prop_map(|(channel, kind, payload)| Piece::Frame {
            channel,
            kind,
            payload,
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Piece::Raw),
        1 => (any::<u32>(), any::<u32>(), any::<u8>(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(len, channel, kind, payload)| {
                Piece::Raw([&header(len, channel, kind)[..], &payload].concat())
            }),
    ]
}

#[test]
fn arbitrary_frames_never_panic_the_agent_and_it_still_answers() {
    quiet();
    let fuzz = Fuzz::new(TMP, "agent session (arbitrary frames from the host)");
    let root = tempfile::tempdir().unwrap();
    let agent = Arc::new(Agent::new(root.path().to_path_buf()));
    let case = (
        prop::collection::vec(any::<u8>(), 0..16),
        any::<bool>(),
        prop::collection::vec(piece(), 0..12),
    )
        .prop_filter("a request that acts on this host", |(_, _, pieces)| {
            !pieces.iter().any(Piece::acts)
        });
    proptest!(ProptestConfig::with_cases(fuzz.cases(512)), |((banner, greet, pieces) in case)| {
        fuzz.case();
        let (mut host, guest) = UnixStream::pair().unwrap();
        let (ended_tx, ended) = mpsc::channel();
        let session = {
            let agent = Arc::clone(&agent);
            std::thread::spawn(move || {
                let end = session::serve(&agent, guest.try_clone().unwrap(), guest);
                let _ = ended_tx.send(());
                end
            })
        };
        // Every frame the agent sends, and how its stream ended.
        let (frames_tx, frames) = mpsc::channel::<Frame>();
        let reader = {
            let stream = host.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut reader = FrameReader::new(stream);
                reader.sync()?;
                while let Some(frame) = reader.next_frame()? {
                    let _ = frames_tx.send(frame);
                }
                Ok::<(), frame::FrameError>(())
            })
        };
        let mut stream = banner;
        stream.extend_from_slice(&MAGIC);
        if greet {
            stream.extend(frame::encode(HANDSHAKE_CHANNEL, FrameKind::Control, &hello(vec![PROTOCOL_VERSION])).unwrap());
        }
        for piece in &pieces {
            stream.extend(piece.bytes());
        }
        stream.extend(frame::encode(PROBE, FrameKind::Control, &serde_json::to_vec(&Request::State).unwrap()).unwrap());
        // The agent may stop reading (a desynchronized stream ends it).
        let _ = host.write_all(&stream);

        let synced = pieces.iter().all(|p| matches!(p, Piece::Frame { .. }));
        if synced {
            let welcomed = greet || pieces.iter().any(Piece::is_good_hello);
            let answer = loop {
                match frames.recv_timeout(HANG) {
                    Ok(frame) if frame.channel == PROBE => break frame,
                    Ok(_) => continue,
                    Err(e) => return Err(TestCaseError::fail(format!("no answer on the probe: {e}"))),
                }
            };
            let reply: Reply = serde_json::from_slice(&answer.payload).unwrap();
            if welcomed {
                prop_assert!(matches!(reply, Reply::State(_)), "{:?}", reply);
            } else {
                prop_assert!(
                    matches!(&reply, Reply::Error(e) if e.kind == ErrorKind::InvalidRequest),
                    "{:?}",
                    reply
                );
            }
        }
        host.shutdown(Shutdown::Write).unwrap();
        // The session ends once the host has hung up (at once, or after
        // its handlers: a few milliseconds here).
        let ended_in_time = ended.recv_timeout(HANG).is_ok();
        let end = session.join();
        prop_assert!(end.is_ok(), "the session panicked");
        prop_assert!(ended_in_time, "the session did not end");
        if synced {
            prop_assert!(matches!(end, Ok(End::Closed)), "{:?}", end);
        }
        // What it sent decodes, up to a clean end.
        drop(host);
        let sent = reader.join().unwrap();
        prop_assert!(sent.is_ok(), "{:?}", sent);
    });
}
