//! Arbitrary bytes never panic the frame decoder or the message parser,
//! however the stream cuts them, and well-formed frames survive any cutting.
//! The host's client, facing a guest that sends garbage (arbitrary bytes,
//! a wrong preamble, truncated frames, huge declared lengths, replies that
//! make no sense), fails within its hello timeout, or fails the pending
//! request, and never panics or hangs.
//!
//! Each target records its number of cases in `target/tmp/robustness.txt`;
//! `TESTBED_FUZZ_CASES` runs more (`docs/testing.md`, "Fuzzing").

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use testbed_proto::frame::{self, FrameKind, FrameReader, HANDSHAKE_CHANNEL, MAGIC};
use testbed_proto::{
    Activation, Client, ClientError, ClientOptions, ExecRequest, FileWrite, HelloReply, Reply,
    Request, PROTOCOL_VERSION,
};
use testbed_test_support::Fuzz;

/// A reader that hands out its bytes in the given piece sizes, like a pipe
/// or a serial port with no message boundaries.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl Read for Chunked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.sizes[self.turn % self.sizes.len()].max(1);
        self.turn += 1;
        let n = size.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn chunked(data: Vec<u8>, sizes: Vec<usize>) -> Chunked {
    Chunked {
        data,
        pos: 0,
        sizes,
        turn: 0,
    }
}

/// Reads frames the way both sides do, skipping non-fatal errors.
fn drain(reader: impl Read) -> Vec<frame::Frame> {
    let mut reader = FrameReader::new(reader);
    let mut frames = Vec::new();
    if !matches!(reader.sync(), Ok(Some(_))) {
        return frames;
    }
    loop {
        match reader.next_frame() {
            Ok(Some(frame)) => {
                // What the receivers do with a control payload.
                if frame.kind == FrameKind::Control {
                    let _ = serde_json::from_slice::<Request>(&frame.payload);
                    let _ = serde_json::from_slice::<Reply>(&frame.payload);
                    let _ = serde_json::from_slice::<HelloReply>(&frame.payload);
                }
                frames.push(frame);
            }
            Ok(None) => return frames,
            Err(e) if !e.is_fatal() => continue,
            Err(_) => return frames,
        }
    }
}

fn kind() -> impl Strategy<Value = FrameKind> {
    prop_oneof![
        Just(FrameKind::Control),
        Just(FrameKind::Data),
        Just(FrameKind::Stderr),
        Just(FrameKind::Eof),
    ]
}

const TMP: &str = env!("CARGO_TARGET_TMPDIR");

#[test]
fn arbitrary_bytes_never_panic() {
    let fuzz = Fuzz::new(TMP, "frame decoder (arbitrary bytes)");
    proptest!(ProptestConfig::with_cases(fuzz.cases(256)), |(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        with_magic in any::<bool>(),
        sizes in proptest::collection::vec(1usize..64, 1..8),
    )| {
        fuzz.case();
        let mut stream = if with_magic { MAGIC.to_vec() } else { Vec::new() };
        stream.extend_from_slice(&bytes);
        drain(chunked(stream, sizes));
    });
}

#[test]
fn headers_with_arbitrary_fields_never_panic() {
    let fuzz = Fuzz::new(TMP, "frame decoder (arbitrary headers)");
    proptest!(ProptestConfig::with_cases(fuzz.cases(256)), |(
        len in any::<u32>(),
        channel in any::<u32>(),
        kind in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    )| {
        fuzz.case();
        let mut stream = MAGIC.to_vec();
        stream.extend(header(len, channel, kind));
        stream.extend_from_slice(&payload);
        drain(&stream[..]);
    });
}

#[test]
fn frames_survive_any_cutting() {
    let fuzz = Fuzz::new(TMP, "frame decoder (frames cut anywhere)");
    proptest!(ProptestConfig::with_cases(fuzz.cases(256)), |(
        frames in proptest::collection::vec(
            (any::<u32>(), kind(), proptest::collection::vec(any::<u8>(), 0..300)),
            0..12,
        ),
        banner in proptest::collection::vec(any::<u8>(), 0..64),
        sizes in proptest::collection::vec(1usize..100, 1..8),
    )| {
        fuzz.case();
        let mut stream = banner;
        stream.extend_from_slice(&MAGIC);
        let mut expected = Vec::new();
        for (channel, kind, mut payload) in frames {
            if kind == FrameKind::Eof {
                payload.clear();
            }
            stream.extend(frame::encode(channel, kind, &payload).unwrap());
            expected.push(frame::Frame { channel, kind, payload });
        }
        let decoded = drain(chunked(stream, sizes));
        prop_assert_eq!(decoded, expected);
    });
}

#[test]
fn file_contents_round_trip_through_json() {
    let fuzz = Fuzz::new(TMP, "file message (round trip)");
    proptest!(ProptestConfig::with_cases(fuzz.cases(256)), |(
        contents in proptest::collection::vec(any::<u8>(), 0..512),
    )| {
        fuzz.case();
        let file = FileWrite { path: "/x".into(), contents, owner: "root".into(), mode: 0o600 };
        let json = serde_json::to_vec(&file).unwrap();
        prop_assert_eq!(serde_json::from_slice::<FileWrite>(&json).unwrap(), file);
    });
}

#[test]
fn arbitrary_json_text_never_panics() {
    let fuzz = Fuzz::new(TMP, "protocol messages (arbitrary text)");
    proptest!(ProptestConfig::with_cases(fuzz.cases(256)), |(text in ".{0,200}")| {
        fuzz.case();
        let _ = serde_json::from_str::<Request>(&text);
        let _ = serde_json::from_str::<Activation>(&text);
        let _ = serde_json::from_str::<FileWrite>(&format!(
            r#"{{"path":"/x","contents":{},"mode":1}}"#,
            serde_json::to_string(&text).unwrap()
        ));
    });
}

/// A frame header as sent: the declared payload length, the channel and
/// the kind's byte, whatever they are.
fn header(len: u32, channel: u32, kind: u8) -> Vec<u8> {
    let mut h = len.to_be_bytes().to_vec();
    h.extend_from_slice(&channel.to_be_bytes());
    h.push(kind);
    h
}

/// The far end of a client's socket pair, writing `bytes` from its own
/// thread (the client may stop reading at any point), then hanging up or
/// not.
struct Guest {
    stream: UnixStream,
    writer: JoinHandle<()>,
}

impl Guest {
    /// The client's end, and the guest: `script` runs on the guest's end.
    fn start(script: impl FnOnce(UnixStream) + Send + 'static) -> (UnixStream, Guest) {
        let (host, guest) = UnixStream::pair().unwrap();
        let stream = guest.try_clone().unwrap();
        let writer = std::thread::spawn(move || script(guest));
        (host, Guest { stream, writer })
    }

    /// Ends the guest: its end is shut, so the client's reader and the
    /// guest's thread both end.
    fn end(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        self.writer.join().unwrap();
    }
}

fn options(hello_timeout: Duration) -> ClientOptions {
    ClientOptions {
        node: "guest".to_owned(),
        hello_timeout,
        ..ClientOptions::default()
    }
}

/// Generous: a call that should fail at once must not take this long.
const HANG: Duration = Duration::from_secs(5);

fn welcome() -> Vec<u8> {
    let reply = HelloReply::Welcome {
        protocol: PROTOCOL_VERSION,
        agent: "testbed-agent fuzz".to_owned(),
    };
    frame::encode(
        HANDSHAKE_CHANNEL,
        FrameKind::Control,
        &serde_json::to_vec(&reply).unwrap(),
    )
    .unwrap()
}

/// What a broken or hostile guest sends in place of the hello's answer.
fn hello_garbage() -> impl Strategy<Value = Vec<u8>> {
    let text = prop_oneof![
        ".{0,100}".prop_map(String::into_bytes),
        Just(br#"{"welcome":{"protocol":"one","agent":7}}"#.to_vec()),
        (any::<u32>(), ".{0,20}")
            .prop_map(|(protocol, agent)| {
                serde_json::to_vec(&HelloReply::Welcome { protocol, agent }).unwrap()
            })
            .prop_filter("a good answer", |b| {
                !matches!(
                    serde_json::from_slice(b),
                    Ok(HelloReply::Welcome {
                        protocol: PROTOCOL_VERSION,
                        ..
                    })
                )
            }),
        Just(
            serde_json::to_vec(&HelloReply::Rejected {
                protocols: vec![],
                agent: String::new(),
                message: "no".to_owned(),
            })
            .unwrap()
        ),
    ];
    prop_oneof![
        // Anything, short of the preamble's skip limit.
        5 => proptest::collection::vec(any::<u8>(), 0..4096),
        // More than the preamble's skip limit (rarely: the decoder takes
        // a tenth of a second per MiB unoptimized).
        1 => (any::<u8>(), 0usize..64).prop_map(|(b, extra)| vec![
            b;
            frame::MAX_PREAMBLE_SKIP
                + MAGIC.len()
                + extra
        ]),
        // The preamble, then anything.
        5 => proptest::collection::vec(any::<u8>(), 0..512).prop_map(|b| [&MAGIC[..], &b].concat()),
        // A header with any fields (huge lengths, unknown kinds).
        5 => (
            any::<u32>(),
            prop_oneof![Just(0u32), any::<u32>()],
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..256)
        )
            .prop_map(|(len, channel, kind, payload)| {
                [&MAGIC[..], &header(len, channel, kind), &payload].concat()
            }),
        // The good answer, cut short.
        5 => any::<proptest::sample::Index>().prop_map(|cut| {
            let good = [&MAGIC[..], &welcome()].concat();
            good[..cut.index(good.len())].to_vec()
        }),
        // The good answer after a wrong preamble.
        5 => (0..MAGIC.len(), 1u8..).prop_map(|(at, mask)| {
            let mut magic = MAGIC;
            magic[at] ^= mask;
            [&magic[..], &welcome()].concat()
        }),
        // A well-framed answer that is not a welcome in this version, or
        // a data frame.
        5 => (
            text,
            prop_oneof![Just(FrameKind::Control), Just(FrameKind::Data)]
        )
            .prop_map(|(payload, kind)| {
                let f = frame::encode(HANDSHAKE_CHANNEL, kind, &payload).unwrap();
                [&MAGIC[..], &f].concat()
            }),
    ]
}

#[test]
fn a_guest_sending_garbage_for_the_hello_fails_the_client_in_time() {
    let fuzz = Fuzz::new(TMP, "agent client hello (garbage from the guest)");
    proptest!(ProptestConfig::with_cases(fuzz.cases(256)), |(
        garbage in hello_garbage(),
        stays in proptest::bool::weighted(0.25),
    )| {
        fuzz.case();
        let (host, guest) = Guest::start(move |mut stream| {
            let _ = stream.write_all(&garbage);
            if !stays {
                let _ = stream.shutdown(Shutdown::Write);
            }
        });
        // A guest that stays silent after its garbage is a timeout; one
        // that hangs up, or garbage the client cannot get past, is an
        // error at once.
        let timeout = if stays { Duration::from_millis(20) } else { HANG };
        let started = Instant::now();
        let result = Client::with_options(host.try_clone().unwrap(), host, options(timeout));
        let took = started.elapsed();
        guest.end();
        let err = match result {
            Ok(client) => return Err(TestCaseError::fail(format!("connected: {client:?}"))),
            Err(e) => e,
        };
        prop_assert!(took < timeout + HANG, "{:?}: {}", took, err);
        if !stays {
            prop_assert!(!matches!(err, ClientError::Timeout { .. }), "{}", err);
        }
        prop_assert!(err.to_string().starts_with("node guest: "), "{}", err);
    });
}

/// A piece of what a hostile guest sends after a good hello, in place of
/// the replies to a request.
#[derive(Debug, Clone)]
enum Piece {
    Bytes(Vec<u8>),
    /// A frame on the request's channel (`None`) or another, of any kind,
    /// declaring its true length or any.
    Frame {
        channel: Option<u32>,
        kind: u8,
        declared: Option<u32>,
        payload: Vec<u8>,
    },
    /// A reply, well-formed but not what the request expects (no file
    /// info), on the request's channel.
    Reply(Reply),
}

fn piece() -> impl Strategy<Value = Piece> {
    let reply = prop_oneof![
        any::<u32>().prop_map(|pid| Reply::Started { pid }),
        Just(Reply::Exited(testbed_proto::ExitStatus {
            code: Some(0),
            signal: None,
            timed_out: false,
        })),
        Just(Reply::Connected),
        Just(Reply::Done),
        Just(Reply::Closed),
        ".{0,40}".prop_map(|message| Reply::Error(testbed_proto::RemoteError {
            kind: testbed_proto::ErrorKind::Other,
            message,
        })),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(Piece::Bytes),
        (
            Just(None::<u32>),
            prop_oneof![1u8..=4, any::<u8>()],
            proptest::option::weighted(0.2, any::<u32>()),
            prop_oneof![
                ".{0,80}".prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..256),
            ],
        )
            .prop_map(|(channel, kind, declared, payload)| Piece::Frame {
                channel,
                kind,
                declared,
                payload,
            }),
        (
            any::<u32>(),
            prop_oneof![1u8..=4, any::<u8>()],
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(channel, kind, payload)| Piece::Frame {
                channel: Some(channel),
                kind,
                declared: None,
                payload,
            }),
        reply.prop_map(Piece::Reply),
    ]
}

impl Piece {
    fn bytes(&self, request: u32) -> Vec<u8> {
        match self {
            Piece::Bytes(b) => b.clone(),
            Piece::Frame {
                channel,
                kind,
                declared,
                payload,
            } => {
                let len = declared.unwrap_or(payload.len() as u32);
                [&header(len, channel.unwrap_or(request), *kind)[..], payload].concat()
            }
            Piece::Reply(reply) => frame::encode(
                request,
                FrameKind::Control,
                &serde_json::to_vec(reply).unwrap(),
            )
            .unwrap(),
        }
    }
}

#[test]
fn garbage_in_place_of_replies_fails_the_pending_request_in_time() {
    let fuzz = Fuzz::new(TMP, "agent client requests (garbage replies)");
    proptest!(ProptestConfig::with_cases(fuzz.cases(256)), |(
        pieces in proptest::collection::vec(piece(), 1..6),
        stays in proptest::bool::weighted(0.25),
        exec in any::<bool>(),
    )| {
        fuzz.case();
        let (host, guest) = Guest::start(move |stream| {
            let mut reader = FrameReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            // A good hello, then the request's channel.
            if !matches!(reader.sync(), Ok(Some(_))) || reader.next_frame().is_err() {
                return;
            }
            let _ = frame::write_magic(&mut writer);
            let _ = writer.write_all(&welcome());
            let Ok(Some(request)) = reader.next_frame() else { return };
            for piece in &pieces {
                if writer.write_all(&piece.bytes(request.channel)).is_err() {
                    return;
                }
            }
            if !stays {
                let _ = writer.shutdown(Shutdown::Write);
            }
        });
        let client = Client::with_options(host.try_clone().unwrap(), host, options(HANG)).unwrap();
        let started = Instant::now();
        // An exec without a timeout waits for as long as the guest keeps
        // the channel open: only once it hangs up.
        let (result, limit) = if exec && !stays {
            (client.exec_output(ExecRequest::argv(["true"])).map(drop), Duration::ZERO)
        } else {
            let limit = Duration::from_millis(20);
            (client.get("/x", limit).map(drop), limit)
        };
        let took = started.elapsed();
        guest.end();
        prop_assert!(took < limit + HANG, "{:?}: {:?}", took, result);
        // A get has no file info among the pieces: it cannot succeed. (An
        // exec may: `started` and `exited` are its replies.)
        if limit > Duration::ZERO {
            let err = result.unwrap_err();
            prop_assert!(err.to_string().starts_with("node guest: "), "{}", err);
        }
    });
}
