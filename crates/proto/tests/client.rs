//! The client against hand-written agents, for what the real agent never
//! does (speak another version, hang up mid-session).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use testbed_proto::frame::{self, FrameKind, FrameReader};
use testbed_proto::{Client, ClientError, ClientOptions, HelloReply};

/// A client on `host` for the node `node`.
fn connect(host: UnixStream, node: &str, hello_timeout: Duration) -> Result<Client, ClientError> {
    Client::with_options(
        host.try_clone().unwrap(),
        host,
        ClientOptions {
            node: node.to_owned(),
            hello_timeout,
            ..ClientOptions::default()
        },
    )
}

/// The agent's side of the hello: the preamble, then `reply`.
fn answer_hello(writer: &mut UnixStream, reply: &HelloReply) {
    frame::write_magic(writer).unwrap();
    let payload = serde_json::to_vec(reply).unwrap();
    frame::write_frame(writer, 0, FrameKind::Control, &payload).unwrap();
}

/// Runs `agent` on the far end of a socket pair after answering the hello
/// with `reply`.
fn fake_agent(
    reply: HelloReply,
    then: impl FnOnce(UnixStream) + Send + 'static,
) -> Result<Client, ClientError> {
    let (host, guest) = UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        let mut reader = FrameReader::new(guest.try_clone().unwrap());
        reader.sync().unwrap();
        let hello = reader.next_frame().unwrap().unwrap();
        assert_eq!(hello.channel, 0);
        let mut writer = guest;
        // A banner before the preamble, as an SSH login might print.
        writer.write_all(b"motd: be nice\n").unwrap();
        answer_hello(&mut writer, &reply);
        then(writer);
    });
    connect(host, "fake", Duration::from_secs(10))
}

#[test]
fn a_newer_agent_is_reported_with_both_versions() {
    let err = fake_agent(
        HelloReply::Welcome {
            protocol: 2,
            agent: "testbed-agent 9.0".to_owned(),
        },
        drop,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "node fake: protocol version mismatch: host speaks 1, agent speaks 2"
    );
}

#[test]
fn an_agent_that_hangs_up_fails_pending_calls() {
    let client = fake_agent(
        HelloReply::Welcome {
            protocol: 1,
            agent: "testbed-agent 0.1.0".to_owned(),
        },
        |stream| {
            // Read the request, then hang up without answering.
            let mut reader = FrameReader::new(stream);
            let _ = reader.next_frame();
        },
    )
    .unwrap();
    let err = client.state(Duration::from_secs(10)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "node fake: agent channel closed during state: the agent closed the connection"
    );
    // Later calls fail at once with the same reason.
    let err = client.wait_file("/x", Duration::from_secs(10)).unwrap_err();
    assert!(matches!(err, ClientError::Disconnected { .. }), "{err:?}");
}

#[test]
fn a_silent_agent_times_out_the_hello() {
    let (host, _guest) = UnixStream::pair().unwrap();
    let err = connect(host, "mute", Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.to_string(), "node mute: hello timed out after 0.2s");
}

/// An agent that starts again writes the preamble on the stream the host
/// still holds: the request the old process was serving fails at once
/// with that reason (it would otherwise wait for a reply that never
/// comes), and `wait_closed` says the agent restarted. The same
/// announcement before the welcome is the new agent saying hello. Nothing
/// more is written on that stream: the cancel of the failed request would
/// reach the new agent (which took it for a session that then ended, and
/// closed its port under the next host's hello).
#[test]
fn an_agent_that_starts_again_fails_the_request_in_flight_and_says_so() {
    let (host, guest) = UnixStream::pair().unwrap();
    let (got_request, request_seen) = std::sync::mpsc::channel();
    let (heard, new_agent_heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut writer = guest.try_clone().unwrap();
        let mut listen = guest.try_clone().unwrap();
        // The agent's announcement, written when it opens its port.
        frame::write_magic(&mut writer).unwrap();
        let mut reader = FrameReader::new(guest);
        reader.sync().unwrap();
        let _hello = reader.next_frame().unwrap().unwrap();
        let welcome = HelloReply::Welcome {
            protocol: 1,
            agent: "testbed-agent 0.1.0".to_owned(),
        };
        answer_hello(&mut writer, &welcome);
        // A request arrives; the process serving it dies, and the next
        // one announces itself on the same stream, which stays open.
        let _request = reader.next_frame().unwrap().unwrap();
        got_request.send(()).unwrap();
        frame::write_magic(&mut writer).unwrap();
        // What the new agent hears from this host within 2 s.
        listen
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 256];
        let _ = heard.send(std::io::Read::read(&mut listen, &mut buf).map_err(|e| e.kind()));
        std::thread::sleep(Duration::from_secs(30));
        drop(writer);
    });
    let client = connect(host, "fake", Duration::from_secs(10))
        .expect("the announcement before the welcome is not an error");
    let started = std::time::Instant::now();
    let err = client.state(Duration::from_secs(20)).unwrap_err();
    request_seen.recv().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed at the announcement, not at a timeout"
    );
    assert_eq!(
        err.to_string(),
        "node fake: agent channel closed during state: the agent on fake started again: its previous process ended (killed or crashed) and took the requests it was serving with it"
    );
    let closed = client.wait_closed();
    assert!(closed.restarted, "{closed:?}");
    assert_eq!(
        new_agent_heard.recv().unwrap(),
        Err(std::io::ErrorKind::WouldBlock),
        "bytes for the dead agent reached the new one"
    );
}

#[test]
fn a_connection_that_ends_is_not_a_restart() {
    let client = fake_agent(
        HelloReply::Welcome {
            protocol: 1,
            agent: "testbed-agent 0.1.0".to_owned(),
        },
        drop,
    )
    .unwrap();
    let closed = client.wait_closed();
    assert!(!closed.restarted);
    assert_eq!(closed.reason, "the agent closed the connection");
}
