//! Framing: how messages travel over one byte stream.
//!
//! The channel between host and agent is a plain byte stream (a
//! virtio-serial port, a pipe pair, an SSH session) with no message
//! boundaries, so every message is a length-prefixed frame:
//!
//! ```text
//! +----------------+----------------+--------+------------------+
//! | length: u32 BE | channel: u32 BE | kind: u8 | payload (length) |
//! +----------------+----------------+--------+------------------+
//! ```
//!
//! `length` counts the payload only and is at most [`MAX_PAYLOAD`], so a
//! reader never allocates more than that for one frame. Before the first
//! frame, each side writes the 8-byte [`MAGIC`]; readers skip whatever comes
//! before it (a login banner on SSH, stale bytes left in a virtio-serial port
//! by a previous host connection), up to [`MAX_PREAMBLE_SKIP`] bytes.

use std::io::{self, BufRead, Read, Write};

use thiserror::Error;

/// Written by both sides before their first frame; readers resynchronize on it.
pub const MAGIC: [u8; 8] = *b"\0TESTBED";

/// The largest payload a frame may carry. Control messages can be large (an
/// activation carries every file and secret of a node); data is sent in
/// chunks of at most [`DATA_CHUNK`] bytes.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// The size of the chunks senders cut byte streams into. Small enough that a
/// bulk transfer on one channel never holds the stream for long.
pub const DATA_CHUNK: usize = 64 << 10;

/// How much garbage a reader skips while looking for [`MAGIC`] before giving up.
pub const MAX_PREAMBLE_SKIP: usize = 1 << 20;

/// Size of the fixed header: length, channel, kind.
pub const HEADER_LEN: usize = 9;

/// Channel 0 carries the version handshake; requests use channels 1 and up.
pub const HANDSHAKE_CHANNEL: u32 = 0;

/// What a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A JSON control message (a request, a reply, a cancel).
    Control,
    /// Raw bytes of the channel's main stream (stdout of an exec, file
    /// contents, one direction of a forwarded connection, stdin).
    Data,
    /// Raw bytes of an exec's stderr.
    Stderr,
    /// The sender will send no more `Data` on this channel (a half-close).
    /// Its payload is empty.
    Eof,
}

impl FrameKind {
    fn to_byte(self) -> u8 {
        match self {
            FrameKind::Control => 1,
            FrameKind::Data => 2,
            FrameKind::Stderr => 3,
            FrameKind::Eof => 4,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(FrameKind::Control),
            2 => Some(FrameKind::Data),
            3 => Some(FrameKind::Stderr),
            4 => Some(FrameKind::Eof),
            _ => None,
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub channel: u32,
    pub kind: FrameKind,
    pub payload: Vec<u8>,
}

/// Why a frame could not be read.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error("i/o error on the agent channel: {0}")]
    Io(#[from] io::Error),
    #[error("the agent channel ended inside a frame")]
    Truncated,
    #[error("frame on channel {channel} claims {len} bytes, more than the limit of {MAX_PAYLOAD}")]
    TooLarge { channel: u32, len: u64 },
    #[error("frame on channel {channel} has unknown kind {kind}")]
    UnknownKind { channel: u32, kind: u8 },
    #[error("end-of-stream frame on channel {channel} carries {len} bytes")]
    EofWithPayload { channel: u32, len: usize },
    #[error("no protocol preamble in the first {skipped} bytes of the agent channel (is something else writing to it?)")]
    NoPreamble { skipped: usize },
    /// [`MAGIC`] where a frame should begin: the peer started a new
    /// session on the same stream (an agent that started again announces
    /// itself so). The stream is still at a frame boundary.
    #[error(
        "a protocol preamble in the middle of the agent channel: the other side started again"
    )]
    Preamble,
}

impl FrameError {
    /// Whether the stream is out of sync after this error. Non-fatal errors
    /// consumed exactly one whole frame, so the next read starts at a frame
    /// boundary; after a fatal one the stream cannot be trusted.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            FrameError::UnknownKind { .. }
                | FrameError::EofWithPayload { .. }
                | FrameError::Preamble
        )
    }
}

/// Encodes one frame into a buffer, so that writers can emit it with a
/// single `write_all` while holding their lock.
///
/// Payloads larger than [`MAX_PAYLOAD`] are a bug in the caller (senders cut
/// data into chunks), reported as an `InvalidInput` error rather than a panic.
pub fn encode(channel: u32, kind: FrameKind, payload: &[u8]) -> io::Result<Vec<u8>> {
    if payload.len() > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "message of {} bytes on channel {channel} exceeds the frame limit of {MAX_PAYLOAD}",
                payload.len()
            ),
        ));
    }
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    // The check above keeps the length within u32.
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&channel.to_be_bytes());
    buf.push(kind.to_byte());
    buf.extend_from_slice(payload);
    Ok(buf)
}

/// Writes one frame and flushes, so that a frame never sits in a buffer
/// while the peer waits for it.
pub fn write_frame<W: Write + ?Sized>(
    writer: &mut W,
    channel: u32,
    kind: FrameKind,
    payload: &[u8],
) -> io::Result<()> {
    let buf = encode(channel, kind, payload)?;
    writer.write_all(&buf)?;
    writer.flush()
}

/// Writes the preamble that starts a session.
pub fn write_magic<W: Write + ?Sized>(writer: &mut W) -> io::Result<()> {
    writer.write_all(&MAGIC)?;
    writer.flush()
}

/// Reads frames from a byte stream, in whatever pieces the stream delivers.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: io::BufReader<R>,
}

impl<R: Read> FrameReader<R> {
    pub fn new(reader: R) -> Self {
        FrameReader {
            inner: io::BufReader::with_capacity(DATA_CHUNK + HEADER_LEN, reader),
        }
    }

    /// Skips bytes until just past [`MAGIC`]. Returns how many bytes were
    /// skipped before it, or `None` if the stream ended first.
    pub fn sync(&mut self) -> Result<Option<usize>, FrameError> {
        let mut window = [0u8; MAGIC.len()];
        let mut seen = 0usize;
        loop {
            let byte = match self.read_byte()? {
                Some(byte) => byte,
                None => return Ok(None),
            };
            window.rotate_left(1);
            window[MAGIC.len() - 1] = byte;
            seen += 1;
            if seen >= MAGIC.len() && window == MAGIC {
                return Ok(Some(seen - MAGIC.len()));
            }
            if seen > MAX_PREAMBLE_SKIP + MAGIC.len() {
                return Err(FrameError::NoPreamble {
                    skipped: MAX_PREAMBLE_SKIP,
                });
            }
        }
    }

    fn read_byte(&mut self) -> Result<Option<u8>, FrameError> {
        loop {
            match self.inner.fill_buf() {
                Ok([]) => return Ok(None),
                Ok(buf) => {
                    let byte = buf[0];
                    self.inner.consume(1);
                    return Ok(Some(byte));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads the next frame. `Ok(None)` means the stream ended cleanly at a
    /// frame boundary.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let first = match self.read_byte()? {
            Some(byte) => byte,
            None => return Ok(None),
        };
        let mut header = [0u8; HEADER_LEN];
        header[0] = first;
        // The magic is one byte shorter than a header: read it alone first,
        // so that after a preamble the next frame is untouched. (A real
        // header never looks like it: its channel would be 0x54424544.)
        read_exact(&mut self.inner, &mut header[1..MAGIC.len()])?;
        if header[..MAGIC.len()] == MAGIC {
            return Err(FrameError::Preamble);
        }
        read_exact(&mut self.inner, &mut header[MAGIC.len()..])?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let channel = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let kind_byte = header[8];
        if len as usize > MAX_PAYLOAD {
            return Err(FrameError::TooLarge {
                channel,
                len: len.into(),
            });
        }
        // Read through `take` so that a header claiming a large payload on a
        // short stream does not allocate the claimed size up front.
        let mut payload = Vec::new();
        (&mut self.inner)
            .take(len.into())
            .read_to_end(&mut payload)?;
        if payload.len() != len as usize {
            return Err(FrameError::Truncated);
        }
        let kind = FrameKind::from_byte(kind_byte).ok_or(FrameError::UnknownKind {
            channel,
            kind: kind_byte,
        })?;
        if kind == FrameKind::Eof && !payload.is_empty() {
            return Err(FrameError::EofWithPayload {
                channel,
                len: payload.len(),
            });
        }
        Ok(Some(Frame {
            channel,
            kind,
            payload,
        }))
    }
}

fn read_exact<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    reader.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_after_banner() {
        let mut stream = b"Welcome to host\n".to_vec();
        stream.extend_from_slice(&MAGIC);
        stream.extend(encode(7, FrameKind::Data, b"abc").unwrap());
        stream.extend(encode(7, FrameKind::Eof, b"").unwrap());
        let mut reader = FrameReader::new(&stream[..]);
        assert_eq!(reader.sync().unwrap(), Some(16));
        let frame = reader.next_frame().unwrap().unwrap();
        assert_eq!(frame.channel, 7);
        assert_eq!(frame.kind, FrameKind::Data);
        assert_eq!(frame.payload, b"abc");
        assert_eq!(reader.next_frame().unwrap().unwrap().kind, FrameKind::Eof);
        assert!(reader.next_frame().unwrap().is_none());
    }

    #[test]
    fn a_preamble_between_frames_is_reported_and_the_next_frame_is_whole() {
        let mut stream = MAGIC.to_vec();
        stream.extend(encode(1, FrameKind::Data, b"before").unwrap());
        stream.extend_from_slice(&MAGIC);
        stream.extend(encode(2, FrameKind::Data, b"after").unwrap());
        let mut reader = FrameReader::new(&stream[..]);
        assert_eq!(reader.sync().unwrap(), Some(0));
        assert_eq!(reader.next_frame().unwrap().unwrap().payload, b"before");
        let err = reader.next_frame().unwrap_err();
        assert!(matches!(err, FrameError::Preamble), "{err}");
        assert!(!err.is_fatal());
        let frame = reader.next_frame().unwrap().unwrap();
        assert_eq!((frame.channel, frame.payload), (2, b"after".to_vec()));
        assert!(reader.next_frame().unwrap().is_none());
    }

    #[test]
    fn oversized_and_unknown_frames_are_errors() {
        let mut stream = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1];
        let err = FrameReader::new(&stream[..]).next_frame().unwrap_err();
        assert!(err.is_fatal(), "{err}");
        stream = encode(3, FrameKind::Data, b"xy").unwrap();
        stream[8] = 99;
        stream.extend(encode(3, FrameKind::Data, b"z").unwrap());
        let mut reader = FrameReader::new(&stream[..]);
        let err = reader.next_frame().unwrap_err();
        assert!(!err.is_fatal());
        assert_eq!(err.to_string(), "frame on channel 3 has unknown kind 99");
        assert_eq!(reader.next_frame().unwrap().unwrap().payload, b"z");
    }
}
