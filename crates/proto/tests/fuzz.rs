//! Arbitrary bytes never panic the frame decoder or the message parser,
//! however the stream cuts them, and well-formed frames survive any cutting.

use std::io::{self, Read};

use proptest::prelude::*;
use testbed_proto::frame::{self, FrameKind, FrameReader, MAGIC};
use testbed_proto::{Activation, FileWrite, HelloReply, Reply, Request};

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

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        with_magic in any::<bool>(),
        sizes in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let mut stream = if with_magic { MAGIC.to_vec() } else { Vec::new() };
        stream.extend_from_slice(&bytes);
        drain(chunked(stream, sizes));
    }

    #[test]
    fn headers_with_arbitrary_fields_never_panic(
        len in any::<u32>(),
        channel in any::<u32>(),
        kind in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut stream = MAGIC.to_vec();
        stream.extend_from_slice(&len.to_be_bytes());
        stream.extend_from_slice(&channel.to_be_bytes());
        stream.push(kind);
        stream.extend_from_slice(&payload);
        drain(&stream[..]);
    }

    #[test]
    fn frames_survive_any_cutting(
        frames in proptest::collection::vec(
            (any::<u32>(), kind(), proptest::collection::vec(any::<u8>(), 0..300)),
            0..12,
        ),
        banner in proptest::collection::vec(any::<u8>(), 0..64),
        sizes in proptest::collection::vec(1usize..100, 1..8),
    ) {
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
    }

    #[test]
    fn file_contents_round_trip_through_json(contents in proptest::collection::vec(any::<u8>(), 0..512)) {
        let file = FileWrite { path: "/x".into(), contents, owner: "root".into(), mode: 0o600 };
        let json = serde_json::to_vec(&file).unwrap();
        prop_assert_eq!(serde_json::from_slice::<FileWrite>(&json).unwrap(), file);
    }

    #[test]
    fn arbitrary_json_text_never_panics(text in ".{0,200}") {
        let _ = serde_json::from_str::<Request>(&text);
        let _ = serde_json::from_str::<Activation>(&text);
        let _ = serde_json::from_str::<FileWrite>(&format!(
            r#"{{"path":"/x","contents":{},"mode":1}}"#,
            serde_json::to_string(&text).unwrap()
        ));
    }
}
