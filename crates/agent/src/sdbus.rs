//! The states of units, asked of systemd itself over its private D-Bus
//! socket (`/run/systemd/private`, root only, no bus daemon involved), in
//! one method call (`ListUnitsByNames`).
//!
//! Why not `systemctl show`: under TCG, starting `systemctl` (a program
//! linked with systemd's 2 MiB shared library) costs about 0.1-0.3 s of the
//! node's only vCPU, and over a second right after activation, when the
//! node's services are starting beside it: that was a fifth of a node's
//! activation from a snapshot. This is one short exchange on a socket.
//!
//! Only what that call needs of the D-Bus wire format (little-endian,
//! strings, object paths, arrays of strings and structs) is here; anything
//! unexpected is an error, and the caller falls back to `systemctl`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a call may go unanswered before systemd is made to read again.
const NUDGE_AFTER: Duration = Duration::from_millis(50);

/// Whether a message (or part of one) is there to read: in the reader's
/// buffer or on the socket.
fn readable(reader: &BufReader<UnixStream>, fd: BorrowedFd<'_>) -> io::Result<bool> {
    if !reader.buffer().is_empty() {
        return Ok(true);
    }
    let mut byte = [0u8; 1];
    match rustix::net::recv(
        fd,
        &mut byte[..],
        rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
    ) {
        // 0 bytes: the end of the stream, which the read then reports.
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::AGAIN) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// systemd's private socket: peer-to-peer D-Bus with PID 1, for root.
pub const PRIVATE_SOCKET: &str = "/run/systemd/private";

/// One unit as `ListUnitsByNames` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    pub name: String,
    pub load: String,
    pub active: String,
    pub sub: String,
}

/// The load, active and sub states of `units` (full names, with their
/// type suffix), in their order, asked of systemd over `socket`.
pub fn list_units_by_names(
    socket: &Path,
    units: &[String],
    timeout: Duration,
) -> io::Result<Vec<UnitState>> {
    let deadline = Instant::now() + timeout;
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let uid = rustix::process::geteuid().as_raw();
    authenticate(&mut reader, &mut writer, uid)?;
    let call = method_call(
        1,
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "ListUnitsByNames",
        Some(units),
    );
    writer.write_all(&call)?;
    // systemd (252) reads the first 256 bytes of a connection at once; a
    // call that arrived whole in them, with the end of the authentication,
    // waits there until more bytes come (seen with calls of one or two
    // units). So when nothing comes back for a while, a `Ping` (answered,
    // and its answer skipped) makes it read again.
    let mut serial = 1;
    let mut nudged = Instant::now();
    let reply = loop {
        if readable(&reader, writer.as_fd())? {
            let msg = read_message(&mut reader)?;
            if msg.reply_serial() == Some(1) {
                break msg;
            }
            continue;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "systemd did not answer",
            ));
        }
        if now - nudged >= NUDGE_AFTER {
            serial += 1;
            writer.write_all(&method_call(
                serial,
                "/org/freedesktop/systemd1",
                "org.freedesktop.DBus.Peer",
                "Ping",
                None,
            ))?;
            nudged = now;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let body = reply_body(&reply, 1)?;
    let states = parse_unit_list(body)?;
    if states.len() != units.len() {
        return Err(invalid(format!(
            "{} units asked, {} described",
            units.len(),
            states.len()
        )));
    }
    Ok(states)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The SASL exchange of D-Bus: `EXTERNAL` (the kernel tells systemd who
/// is calling), then the binary protocol.
fn authenticate(reader: &mut impl BufRead, writer: &mut impl Write, uid: u32) -> io::Result<()> {
    let hex: String = uid
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    writer.write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
    let mut line = String::new();
    reader.take(512).read_line(&mut line)?;
    if !line.starts_with("OK ") {
        return Err(invalid(format!(
            "authentication refused: {:?}",
            line.trim_end()
        )));
    }
    writer.write_all(b"BEGIN\r\n")
}

/// Appends zero bytes until `buf`'s length is a multiple of `n`.
fn pad(buf: &mut Vec<u8>, n: usize) {
    while buf.len() % n != 0 {
        buf.push(0);
    }
}

fn put_u32(buf: &mut Vec<u8>, value: u32) {
    pad(buf, 4);
    buf.extend_from_slice(&value.to_le_bytes());
}

/// A string or an object path: length, bytes, NUL.
fn put_str(buf: &mut Vec<u8>, text: &str) {
    put_u32(buf, u32::try_from(text.len()).unwrap_or(u32::MAX));
    buf.extend_from_slice(text.as_bytes());
    buf.push(0);
}

/// A signature: one-byte length, bytes, NUL.
fn put_sig(buf: &mut Vec<u8>, sig: &str) {
    buf.push(u8::try_from(sig.len()).unwrap_or(u8::MAX));
    buf.extend_from_slice(sig.as_bytes());
    buf.push(0);
}

/// A header field whose value is a string-like variant.
fn put_field(buf: &mut Vec<u8>, code: u8, sig: &str, value: &str) {
    pad(buf, 8);
    buf.push(code);
    put_sig(buf, sig);
    if sig == "g" {
        put_sig(buf, value);
    } else {
        put_str(buf, value);
    }
}

/// A method call whose one argument is an array of strings (`as`), or
/// that has none.
fn method_call(
    serial: u32,
    path: &str,
    interface: &str,
    member: &str,
    args: Option<&[String]>,
) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(args) = args {
        put_u32(&mut body, 0);
        for arg in args {
            put_str(&mut body, arg);
        }
        let len = u32::try_from(body.len() - 4).unwrap_or(u32::MAX);
        body[..4].copy_from_slice(&len.to_le_bytes());
    }

    let mut fields = Vec::new();
    put_field(&mut fields, 1, "o", path);
    put_field(&mut fields, 2, "s", interface);
    put_field(&mut fields, 3, "s", member);
    put_field(&mut fields, 6, "s", "org.freedesktop.systemd1");
    if args.is_some() {
        put_field(&mut fields, 8, "g", "as");
    }

    let mut msg = vec![b'l', 1, 0, 1];
    msg.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    msg.extend_from_slice(&serial.to_le_bytes());
    // The fields' array starts at offset 16, already 8-aligned, so their
    // alignment in `fields` (from 0) is their alignment in the message.
    msg.extend_from_slice(
        &u32::try_from(fields.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    msg.extend_from_slice(&fields);
    pad(&mut msg, 8);
    msg.extend_from_slice(&body);
    msg
}

/// A whole message as read off the socket: its fixed header, header
/// fields and body, each kept apart.
#[derive(Debug)]
struct Message {
    kind: u8,
    /// (code, value) of the string-like and `u` fields.
    fields: Vec<(u8, Field)>,
    body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Text(String),
    Number(u32),
}

/// The largest message accepted: a unit list of a few units is a few
/// hundred bytes.
const MAX_MESSAGE: usize = 1 << 20;

fn read_message(reader: &mut impl Read) -> io::Result<Message> {
    let mut fixed = [0u8; 16];
    reader.read_exact(&mut fixed)?;
    if fixed[0] != b'l' {
        return Err(invalid("a big-endian message".to_owned()));
    }
    let word = |i: usize| u32::from_le_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
    let body_len = word(4) as usize;
    let fields_len = word(12) as usize;
    if body_len > MAX_MESSAGE || fields_len > MAX_MESSAGE {
        return Err(invalid("a message too large".to_owned()));
    }
    let padded = (16 + fields_len).div_ceil(8) * 8 - 16;
    let mut rest = vec![0u8; padded + body_len];
    reader.read_exact(&mut rest)?;
    let body = rest.split_off(padded);
    // Offsets within `rest` are message offsets minus 16: same alignment.
    let mut cursor = Cursor {
        buf: &rest[..fields_len],
        pos: 0,
    };
    let mut fields = Vec::new();
    while cursor.pos < fields_len {
        cursor.align(8)?;
        let code = cursor.byte()?;
        let sig = cursor.sig()?;
        let value = match sig.as_str() {
            "s" | "o" => Field::Text(cursor.str()?),
            "g" => Field::Text(cursor.sig()?),
            "u" => Field::Number(cursor.u32()?),
            other => return Err(invalid(format!("a header field of type {other:?}"))),
        };
        fields.push((code, value));
    }
    Ok(Message {
        kind: fixed[1],
        fields,
        body,
    })
}

impl Message {
    /// The value of header field `code`, if the message has it.
    fn field(&self, code: u8) -> Option<&Field> {
        self.fields.iter().find(|(c, _)| *c == code).map(|(_, v)| v)
    }

    /// The serial of the call this message answers, if it is an answer.
    fn reply_serial(&self) -> Option<u32> {
        match self.field(5) {
            Some(Field::Number(n)) => Some(*n),
            _ => None,
        }
    }
}

/// The body of the reply to call `serial`, or the error systemd sent.
fn reply_body(msg: &Message, serial: u32) -> io::Result<&[u8]> {
    let field = |code| msg.field(code);
    if msg.reply_serial() != Some(serial) {
        return Err(invalid("a reply to another call".to_owned()));
    }
    match msg.kind {
        2 => {
            if field(8) != Some(&Field::Text("a(ssssssouso)".to_owned())) {
                return Err(invalid(format!("a reply of signature {:?}", field(8))));
            }
            Ok(&msg.body)
        }
        3 => {
            let name = match field(4) {
                Some(Field::Text(name)) => name.clone(),
                _ => "an unnamed error".to_owned(),
            };
            let mut cursor = Cursor {
                buf: &msg.body,
                pos: 0,
            };
            let text = cursor.str().unwrap_or_default();
            Err(io::Error::other(format!("{name}: {text}")))
        }
        other => Err(invalid(format!("a message of type {other}"))),
    }
}

/// `a(ssssssouso)`: name, description, load state, active state, sub
/// state, followed unit, object path, job id, job type, job path.
fn parse_unit_list(body: &[u8]) -> io::Result<Vec<UnitState>> {
    let mut cursor = Cursor { buf: body, pos: 0 };
    let len = cursor.u32()? as usize;
    cursor.align(8)?;
    let end = cursor.pos + len;
    if end > body.len() {
        return Err(invalid("a truncated unit list".to_owned()));
    }
    let mut units = Vec::new();
    while cursor.pos < end {
        cursor.align(8)?;
        let name = cursor.str()?;
        let _description = cursor.str()?;
        let load = cursor.str()?;
        let active = cursor.str()?;
        let sub = cursor.str()?;
        let _following = cursor.str()?;
        let _path = cursor.str()?;
        let _job_id = cursor.u32()?;
        let _job_type = cursor.str()?;
        let _job_path = cursor.str()?;
        units.push(UnitState {
            name,
            load,
            active,
            sub,
        });
    }
    Ok(units)
}

/// Reads D-Bus values out of a buffer whose offset 0 is 8-aligned in its
/// message.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn truncated() -> io::Error {
        invalid("a truncated message".to_owned())
    }

    fn align(&mut self, n: usize) -> io::Result<()> {
        let aligned = self.pos.div_ceil(n) * n;
        if aligned > self.buf.len() {
            return Err(Self::truncated());
        }
        self.pos = aligned;
        Ok(())
    }

    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        let end = self.pos.checked_add(n).ok_or_else(Self::truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or_else(Self::truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> io::Result<u32> {
        self.align(4)?;
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn text(&mut self, len: usize) -> io::Result<String> {
        let bytes = self.take(len)?.to_vec();
        if self.byte()? != 0 {
            return Err(invalid("a string without its NUL".to_owned()));
        }
        String::from_utf8(bytes).map_err(|_| invalid("a string that is not UTF-8".to_owned()))
    }

    fn str(&mut self) -> io::Result<String> {
        let len = self.u32()? as usize;
        self.text(len)
    }

    fn sig(&mut self) -> io::Result<String> {
        let len = usize::from(self.byte()?);
        self.text(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply as systemd would send it: the fields and body given.
    fn reply(serial: u32, signature: &str, body: &[u8]) -> Vec<u8> {
        let mut fields = Vec::new();
        pad(&mut fields, 8);
        fields.push(5);
        put_sig(&mut fields, "u");
        put_u32(&mut fields, serial);
        put_field(&mut fields, 8, "g", signature);
        put_field(&mut fields, 7, "s", ":1.0");
        let mut msg = vec![b'l', 2, 1, 1];
        msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
        msg.extend_from_slice(&7u32.to_le_bytes());
        msg.extend_from_slice(&(fields.len() as u32).to_le_bytes());
        msg.extend_from_slice(&fields);
        pad(&mut msg, 8);
        msg.extend_from_slice(body);
        msg
    }

    fn unit_list(units: &[(&str, &str, &str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        put_u32(&mut body, 0);
        pad(&mut body, 8);
        let start = body.len();
        for (name, load, active, sub) in units {
            pad(&mut body, 8);
            for text in [*name, "a unit", load, active, sub, ""] {
                put_str(&mut body, text);
            }
            put_str(&mut body, "/org/freedesktop/systemd1/unit/x");
            put_u32(&mut body, 0);
            put_str(&mut body, "");
            put_str(&mut body, "/");
        }
        let len = (body.len() - start) as u32;
        body[..4].copy_from_slice(&len.to_le_bytes());
        body
    }

    #[test]
    fn a_call_is_laid_out_as_the_specification_says() {
        let msg = method_call(
            1,
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "ListUnitsByNames",
            Some(&["ssh.service".to_owned(), "munge.service".to_owned()]),
        );
        assert_eq!(&msg[..4], &[b'l', 1, 0, 1]);
        let body_len = u32::from_le_bytes(msg[4..8].try_into().unwrap()) as usize;
        let fields_len = u32::from_le_bytes(msg[12..16].try_into().unwrap()) as usize;
        let body_start = (16 + fields_len).div_ceil(8) * 8;
        assert_eq!(msg.len(), body_start + body_len);
        // The body: the array's byte length, then each string.
        let mut cursor = Cursor {
            buf: &msg[body_start..],
            pos: 0,
        };
        let array_len = cursor.u32().unwrap() as usize;
        assert_eq!(array_len, body_len - 4);
        assert_eq!(cursor.str().unwrap(), "ssh.service");
        assert_eq!(cursor.str().unwrap(), "munge.service");
        // Read back as a message: the fields are where they belong.
        let parsed = read_message(&mut &msg[..]).unwrap();
        assert_eq!(parsed.kind, 1);
        let text = |code| {
            parsed
                .fields
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(text(3), Some(Field::Text("ListUnitsByNames".to_owned())));
        assert_eq!(text(8), Some(Field::Text("as".to_owned())));
        assert_eq!(
            text(1),
            Some(Field::Text("/org/freedesktop/systemd1".to_owned()))
        );
    }

    #[test]
    fn a_unit_list_is_read_in_its_order() {
        let body = unit_list(&[
            ("ssh.service", "loaded", "active", "running"),
            ("home.automount", "loaded", "active", "waiting"),
            ("nfs-server.service", "loaded", "inactive", "dead"),
        ]);
        let msg = reply(1, "a(ssssssouso)", &body);
        let parsed = read_message(&mut &msg[..]).unwrap();
        let states = parse_unit_list(reply_body(&parsed, 1).unwrap()).unwrap();
        let seen: Vec<(&str, &str, &str)> = states
            .iter()
            .map(|s| (s.name.as_str(), s.active.as_str(), s.sub.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("ssh.service", "active", "running"),
                ("home.automount", "active", "waiting"),
                ("nfs-server.service", "inactive", "dead"),
            ]
        );
        assert_eq!(states[0].load, "loaded");
    }

    #[test]
    fn an_error_a_foreign_reply_and_a_truncated_one_are_errors() {
        // An error reply: its name and text.
        let mut body = Vec::new();
        put_str(&mut body, "Unit x.service not found.");
        let mut msg = reply(1, "s", &body);
        msg[1] = 3;
        // ERROR_NAME goes with an error; added as the last field.
        let parsed = {
            let mut m = read_message(&mut &msg[..]).unwrap();
            m.fields.push((
                4,
                Field::Text("org.freedesktop.systemd1.NoSuchUnit".to_owned()),
            ));
            m
        };
        let err = reply_body(&parsed, 1).unwrap_err().to_string();
        assert!(
            err.contains("NoSuchUnit") && err.contains("not found"),
            "{err}"
        );
        // The reply to another call.
        let msg = reply(9, "a(ssssssouso)", &unit_list(&[]));
        let parsed = read_message(&mut &msg[..]).unwrap();
        assert!(reply_body(&parsed, 1).is_err());
        // Every truncation of a valid reply is an error, never a panic.
        let msg = reply(
            1,
            "a(ssssssouso)",
            &unit_list(&[("a.service", "loaded", "active", "running")]),
        );
        for cut in 0..msg.len() {
            let parsed = read_message(&mut &msg[..cut]);
            if let Ok(parsed) = parsed {
                let _ = reply_body(&parsed, 1).and_then(parse_unit_list);
            }
        }
        // A body that claims more than it has.
        let mut body = unit_list(&[("a.service", "loaded", "active", "running")]);
        body[..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(parse_unit_list(&body).is_err());
    }

    /// A socket in a temporary folder whose first connection `serve`
    /// answers on a thread of its own: the folder (kept while the test
    /// runs), the socket's path and the thread.
    fn fake_systemd(
        serve: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::thread::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || serve(listener.accept().unwrap().0));
        (dir, path, server)
    }

    /// A fake systemd on a socket that, like systemd 252 with a call
    /// that arrived with the end of the authentication, answers the call
    /// only once more bytes come (the `Ping`), and answers the ping first.
    #[test]
    fn a_call_systemd_sits_on_is_answered_after_a_ping() {
        let (_dir, path, server) = fake_systemd(|stream| {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut nul = [0u8; 1];
            reader.read_exact(&mut nul).unwrap();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(line.starts_with("AUTH EXTERNAL "), "{line:?}");
            writer.write_all(b"OK 0123456789abcdef\r\n").unwrap();
            line.clear();
            reader.read_line(&mut line).unwrap();
            assert_eq!(line, "BEGIN\r\n");
            let call = read_message(&mut reader).unwrap();
            assert_eq!(call.kind, 1);
            let ping = read_message(&mut reader).unwrap();
            assert_eq!(ping.field(3), Some(&Field::Text("Ping".to_owned())));
            assert!(ping.body.is_empty());
            writer.write_all(&reply(2, "", &[])).unwrap();
            let body = unit_list(&[("ssh.service", "loaded", "active", "running")]);
            writer.write_all(&reply(1, "a(ssssssouso)", &body)).unwrap();
        });
        let states =
            list_units_by_names(&path, &["ssh.service".to_owned()], Duration::from_secs(10))
                .unwrap();
        assert_eq!(states.len(), 1);
        assert_eq!(states[0].active, "active");
        server.join().unwrap();
    }

    #[test]
    fn a_socket_that_never_answers_is_an_error_in_time() {
        let (_dir, path, server) = fake_systemd(|mut stream| {
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf);
            stream.write_all(b"OK 0123456789abcdef\r\n").unwrap();
            // Reads everything, answers nothing, until the client leaves.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
        });
        let start = Instant::now();
        let err = list_units_by_names(&path, &["a.service".to_owned()], Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        server.join().unwrap();
    }

    #[test]
    fn authentication_sends_the_uid_in_hex_and_wants_ok() {
        let mut sent = Vec::new();
        let mut answer = &b"OK 1234deadbeef\r\n"[..];
        authenticate(&mut answer, &mut sent, 0).unwrap();
        assert_eq!(sent, b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n");
        let mut sent = Vec::new();
        let mut answer = &b"REJECTED EXTERNAL\r\n"[..];
        let err = authenticate(&mut answer, &mut sent, 1000).unwrap_err();
        assert!(err.to_string().contains("REJECTED"), "{err}");
        assert_eq!(sent, b"\0AUTH EXTERNAL 31303030\r\n");
    }
}
