//! The real `testbed-agent --stdio` driven by the real client, on the host.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use testbed_proto::frame::{self, FrameKind, FrameReader};
use testbed_proto::{
    Activation, ActivationStatus, Client, ClientError, ClientOptions, ErrorKind, ExecEvent,
    ExecRequest, FileWrite, Hello, HelloReply, Identity, InterfaceConfig, MacChange, PutRequest,
    Reply, Request, SshConfig, SshHostKey, PROTOCOL_VERSION,
};
use testbed_test_support::{eventually, free_tcp_port, is_alive};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A running agent; killed when dropped so a failing test leaves nothing.
struct Agent {
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str]) -> (Agent, ChildStdout, ChildStdin) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_testbed-agent"))
        .arg("--stdio")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn testbed-agent");
    let stdout = child.stdout.take().unwrap();
    let stdin = child.stdin.take().unwrap();
    (Agent { child }, stdout, stdin)
}

fn connect_with(args: &[&str], options: ClientOptions) -> (Agent, Result<Client, ClientError>) {
    let (agent, stdout, stdin) = spawn(args);
    let client = Client::with_options(stdout, stdin, options);
    (agent, client)
}

fn connect() -> (Agent, Client) {
    let (agent, client) = connect_with(&[], options());
    (agent, client.expect("handshake"))
}

fn options() -> ClientOptions {
    ClientOptions {
        node: "test".to_owned(),
        hello_timeout: TIMEOUT,
        ..ClientOptions::default()
    }
}

#[test]
fn exec_reports_output_and_exit_codes() {
    let (_agent, client) = connect();
    let output = client
        .exec_output(ExecRequest::shell("echo out; echo err >&2; exit 3"))
        .unwrap();
    assert_eq!(output.stdout, b"out\n");
    assert_eq!(output.stderr, b"err\n");
    assert_eq!(output.status.code, Some(3));
    assert!(!output.status.success());

    let output = client
        .exec_output(ExecRequest::argv(["printf", "%s|", "a b", "c"]))
        .unwrap();
    assert_eq!(output.stdout, b"a b|c|");
    assert!(output.status.success());

    let dir = tempfile::tempdir().unwrap();
    let output = client
        .exec_output(
            ExecRequest::shell("echo \"$GREETING\"; pwd")
                .env("GREETING", "hello there")
                .cwd(dir.path().to_str().unwrap()),
        )
        .unwrap();
    let expected = format!("hello there\n{}\n", dir.path().display());
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected);

    let output = client
        .exec_output(ExecRequest::shell("kill -TERM $$"))
        .unwrap();
    assert_eq!(output.status.signal, Some(15));
    assert_eq!(output.status.code, None);

    let err = client
        .exec(ExecRequest::argv(["/nonexistent/program"]))
        .unwrap_err();
    match &err {
        ClientError::Remote { kind, .. } => assert_eq!(*kind, ErrorKind::NotFound),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "node test: exec `/nonexistent/program`: cannot run `/nonexistent/program`: no such file or directory"
    );
}

#[test]
fn exec_streams_output_as_it_comes() {
    let (_agent, client) = connect();
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    // The command prints a line, then waits for the test to have seen it.
    // Without streaming the line would only arrive at exit: the command
    // would give up waiting and say so. No clock is compared.
    let mut exec = client
        .exec(ExecRequest::shell(format!(
            "echo first; for i in $(seq 300); do [ -e {go} ] && break; sleep 0.1; done; \
             if [ -e {go} ]; then echo streamed; else echo not-streamed; fi; echo done >&2",
            go = go.display()
        )))
        .unwrap();
    assert!(exec.pid().is_some());
    let mut seen = Vec::new();
    while let Some(event) = exec.next_event().unwrap() {
        if event == ExecEvent::Stdout(b"first\n".to_vec()) {
            fs::write(&go, b"").unwrap();
        }
        seen.push(event);
    }
    let stdout: Vec<u8> = seen
        .iter()
        .filter_map(|e| match e {
            ExecEvent::Stdout(b) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        "first\nstreamed\n",
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .any(|e| *e == ExecEvent::Stderr(b"done\n".to_vec())));
    assert!(matches!(seen.last(), Some(ExecEvent::Exit(s)) if s.success()));
}

#[test]
fn exec_feeds_stdin() {
    let (_agent, client) = connect();
    let exec = client
        .exec(ExecRequest::argv(["tr", "a-z", "A-Z"]).with_stdin())
        .unwrap();
    exec.write_stdin(b"hello ").unwrap();
    exec.write_stdin(&vec![b'x'; 200_000]).unwrap();
    exec.close_stdin().unwrap();
    let output = exec.wait().unwrap();
    assert!(output.status.success());
    assert_eq!(output.stdout.len(), 6 + 200_000);
    assert!(output.stdout.starts_with(b"HELLO XXX"));
}

#[test]
fn concurrent_execs_share_one_stream() {
    let (_agent, client) = connect();
    let dir = tempfile::tempdir().unwrap();
    let barrier = dir.path().to_path_buf();
    // Each command checks in, then waits until all eight have: that only
    // completes if the agent runs them at the same time. A serialising agent
    // makes each one give up and print "alone" instead.
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let client = client.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                client
                    .exec_output(ExecRequest::shell(format!(
                        "touch {d}/{i}; for t in $(seq 300); do [ $(ls {d} | wc -l) -ge 8 ] && break; sleep 0.1; done; \
                         if [ $(ls {d} | wc -l) -ge 8 ]; then echo together {i}; else echo alone {i}; fi; seq 1 20000 | tail -n1",
                        d = barrier.display()
                    )))
                    .unwrap()
            })
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        let output = thread.join().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("together {i}\n20000\n")
        );
    }
}

#[test]
fn timeout_kills_the_process_group() {
    let (_agent, client) = connect();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let output = client
        .exec_output(
            ExecRequest::shell(format!(
                "sleep 60 & echo $! > {}; echo started; sleep 60",
                pidfile.display()
            ))
            .timeout(Duration::from_millis(700)),
        )
        .unwrap();
    assert!(output.status.timed_out, "{:?}", output.status);
    assert_eq!(output.status.signal, Some(9));
    assert_eq!(output.stdout, b"started\n");
    let background: u32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !is_alive(background)),
        "background process {background} survived the timeout"
    );
}

#[test]
fn dropping_an_exec_kills_it_and_the_agent_goes_on() {
    let (_agent, client) = connect();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut exec = client
        .exec(ExecRequest::shell(format!(
            "echo $$ > {}; echo ready; exec sleep 60",
            pidfile.display()
        )))
        .unwrap();
    assert_eq!(
        exec.next_event().unwrap(),
        Some(ExecEvent::Stdout(b"ready\n".to_vec()))
    );
    let pid: u32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(is_alive(pid));
    drop(exec);
    assert!(eventually(Duration::from_secs(5), || !is_alive(pid)));
    let output = client.exec_output(ExecRequest::argv(["true"])).unwrap();
    assert!(output.status.success());
}

#[test]
fn put_and_get_keep_contents_and_mode() {
    let (_agent, client) = connect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/sub/file.bin");
    let guest = path.to_str().unwrap();
    let contents: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    client
        .put(
            PutRequest::new(guest, 0o640).owner("root:root"),
            &contents[..],
            TIMEOUT,
        )
        .unwrap();
    assert_eq!(fs::read(&path).unwrap(), contents);
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    // No temporary file is left beside it.
    assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);

    let (info, fetched) = client.get(guest, TIMEOUT).unwrap();
    assert_eq!(fetched, contents);
    assert_eq!(info.size, contents.len() as u64);
    assert_eq!(info.mode, 0o640);

    // Replacing keeps the operation atomic and applies the new mode.
    client
        .put(PutRequest::new(guest, 0o600), &b"short"[..], TIMEOUT)
        .unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"short");
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o600
    );

    let missing = dir.path().join("missing");
    let err = client.get(missing.to_str().unwrap(), TIMEOUT).unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Remote {
                kind: ErrorKind::NotFound,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .contains(&format!("{}: no such file", missing.display())));

    let err = client
        .put(PutRequest::new("relative/path", 0o644), &b""[..], TIMEOUT)
        .unwrap_err();
    assert!(err.to_string().contains("relative/path"), "{err}");
}

#[test]
fn wait_file_sees_a_file_appear_and_times_out_otherwise() {
    let (_agent, client) = connect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flag");
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            fs::write(path, b"").unwrap();
        })
    };
    client.wait_file(path.to_str().unwrap(), TIMEOUT).unwrap();
    writer.join().unwrap();

    let never = dir.path().join("never");
    let start = Instant::now();
    let err = client
        .wait_file(never.to_str().unwrap(), Duration::from_millis(300))
        .unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "node test: wait for file {} timed out after 0.3s",
            never.display()
        )
    );
}

#[test]
fn wait_port_sees_a_listener() {
    let (_agent, client) = connect();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    client.wait_port(port, TIMEOUT).unwrap();
    drop(listener);
    let err = client
        .wait_port(port, Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("node test: wait for port {port} timed out after 0.3s")
    );
}

#[test]
fn forward_relays_a_tcp_connection_both_ways() {
    let (_agent, client) = connect();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // An echo server that reports what it saw, then half-closes.
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut socket, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                socket.write_all(&buf[..n]).unwrap();
            }
            socket.write_all(b"|bye").unwrap();
        }
    });

    let mut stream = client.forward(port, TIMEOUT).unwrap();
    stream.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
    // Half-close: the server sees EOF and still answers.
    stream.shutdown_write().unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"|bye");

    // A bulk transfer with the halves on two threads.
    let (mut reader, mut writer) = client.forward(port, TIMEOUT).unwrap().split();
    let payload: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
    let sent = payload.clone();
    let sender = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown_write().unwrap();
    });
    let mut received = Vec::new();
    reader.read_to_end(&mut received).unwrap();
    sender.join().unwrap();
    assert_eq!(received.len(), payload.len() + 4);
    assert_eq!(&received[..payload.len()], &payload[..]);
    server.join().unwrap();

    let closed_port = free_tcp_port();
    let err = client.forward(closed_port, TIMEOUT).unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Remote {
                kind: ErrorKind::ConnectionRefused,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("connection refused"), "{err}");
}

#[test]
fn state_reports_the_guest() {
    let (_agent, client) = connect();
    let state = client.state(TIMEOUT).unwrap();
    assert_eq!(state.protocol, PROTOCOL_VERSION);
    assert_eq!(
        state.hostname,
        fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
    );
    assert!(state.uptime_secs > 0.0);
    assert_eq!(state.activation, ActivationStatus::Pending);
    assert_eq!(client.agent_info().protocol, PROTOCOL_VERSION);
    assert!(client.agent_info().software.starts_with("testbed-agent "));
}

#[test]
fn a_version_mismatch_names_both_versions() {
    let (_agent, client) = connect_with(
        &[],
        ClientOptions {
            protocols: vec![99],
            ..options()
        },
    );
    let err = client.unwrap_err();
    assert!(
        matches!(err, ClientError::VersionMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "node test: protocol version mismatch: host speaks 99, agent speaks {PROTOCOL_VERSION}"
        )
    );
}

/// Raw frames, to send what the client never would.
struct Raw {
    reader: FrameReader<ChildStdout>,
    writer: ChildStdin,
}

impl Raw {
    fn send(&mut self, channel: u32, kind: FrameKind, payload: &[u8]) {
        frame::write_frame(&mut self.writer, channel, kind, payload).unwrap();
    }

    fn control(&mut self, channel: u32, message: &impl serde::Serialize) {
        self.send(
            channel,
            FrameKind::Control,
            &serde_json::to_vec(message).unwrap(),
        );
    }

    fn reply(&mut self) -> (u32, Reply) {
        let frame = self.reader.next_frame().unwrap().expect("a frame");
        assert_eq!(frame.kind, FrameKind::Control);
        (
            frame.channel,
            serde_json::from_slice(&frame.payload).unwrap(),
        )
    }
}

#[test]
fn the_agent_survives_malformed_frames() {
    let (mut agent, stdout, stdin) = spawn(&[]);
    let mut raw = Raw {
        reader: FrameReader::new(stdout),
        writer: stdin,
    };
    // Garbage before the preamble is skipped (think of a login banner).
    raw.writer.write_all(b"Last login: yesterday\n").unwrap();
    frame::write_magic(&mut raw.writer).unwrap();
    // A request before the hello is refused.
    raw.control(3, &Request::State);
    assert_eq!(raw.reader.sync().unwrap(), Some(0));
    let (channel, reply) = raw.reply();
    assert_eq!(channel, 3);
    assert!(matches!(reply, Reply::Error(e) if e.kind == ErrorKind::InvalidRequest));

    raw.control(
        0,
        &Hello {
            protocols: vec![PROTOCOL_VERSION],
            software: "test".to_owned(),
        },
    );
    let frame = raw.reader.next_frame().unwrap().unwrap();
    assert!(matches!(
        serde_json::from_slice(&frame.payload).unwrap(),
        HelloReply::Welcome { .. }
    ));

    // Malformed JSON: an error on that channel, nothing else.
    raw.send(5, FrameKind::Control, b"{\"op\": \"exec\", \"command\": 12");
    let (channel, reply) = raw.reply();
    assert_eq!(channel, 5);
    match reply {
        Reply::Error(e) => {
            assert_eq!(e.kind, ErrorKind::InvalidRequest);
            assert!(e.message.starts_with("malformed request"), "{}", e.message);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Unknown kinds, stray data and cancels for closed channels are dropped.
    let mut unknown = frame::encode(6, FrameKind::Data, b"xyz").unwrap();
    unknown[8] = 42;
    raw.writer.write_all(&unknown).unwrap();
    raw.send(77, FrameKind::Data, b"nobody listens");
    raw.send(77, FrameKind::Eof, b"");
    raw.control(78, &Request::Cancel);
    // A control frame on a channel that has ended opens a new request.
    raw.send(5, FrameKind::Control, b"");
    let (channel, reply) = raw.reply();
    assert_eq!(channel, 5);
    assert!(matches!(reply, Reply::Error(e) if e.kind == ErrorKind::InvalidRequest));

    // The agent still serves requests.
    raw.control(8, &Request::State);
    let (channel, reply) = raw.reply();
    assert_eq!(channel, 8);
    assert!(matches!(reply, Reply::State(_)), "{reply:?}");

    // A frame claiming more than the limit desynchronizes the stream: the
    // agent ends the session with an error, without panicking.
    raw.writer
        .write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 9, 1])
        .unwrap();
    let status = agent.child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    agent
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("more than the limit"), "{stderr}");
}

#[test]
fn closing_the_stream_ends_the_agent_cleanly() {
    let (mut agent, client) = connect();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut exec = client
        .exec(ExecRequest::shell(format!(
            "echo $$ > {}; echo ready; exec sleep 60",
            pidfile.display()
        )))
        .unwrap();
    exec.next_event().unwrap();
    let pid: u32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The client owns the agent's stdin; closing it is closing the channel.
    drop(exec);
    drop(client);
    let mut status = None;
    assert!(eventually(Duration::from_secs(10), || {
        status = agent.child.try_wait().unwrap();
        status.is_some()
    }));
    assert_eq!(status.unwrap().code(), Some(0));
    assert!(eventually(Duration::from_secs(5), || !is_alive(pid)));
}

fn file(path: &str, contents: &[u8], owner: &str, mode: u32) -> FileWrite {
    FileWrite {
        path: path.to_owned(),
        contents: contents.to_vec(),
        owner: owner.to_owned(),
        mode,
    }
}

fn check_file(root: &Path, path: &str, contents: &[u8], ids: (u32, u32), mode: u32) {
    let host = root.join(path.trim_start_matches('/'));
    assert_eq!(fs::read(&host).unwrap(), contents, "{path}");
    let meta = fs::metadata(&host).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path}");
    assert_eq!((meta.uid(), meta.gid()), ids, "{path}");
}

#[test]
fn activation_writes_the_node_files_under_a_root_prefix() {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    fs::create_dir_all(etc.join("ssh")).unwrap();
    fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/bash\nmunge:x:1234:1235::/nonexistent:/usr/sbin/nologin\n",
    )
    .unwrap();
    fs::write(etc.join("group"), "root:x:0:\nmunge:x:1235:\n").unwrap();
    let (_agent, client) = connect_with(&["--root", root.path().to_str().unwrap()], options());
    let client = client.unwrap();

    let key: Vec<u8> = (0..=255u8).collect();
    let hosts = "127.0.0.1 localhost\n10.44.0.2 ctl\n10.44.0.3 compute1\n";
    let activation = Activation {
        hostname: "compute1".to_owned(),
        interfaces: vec![InterfaceConfig {
            mac: "52:54:00:00:00:03".to_owned(),
            addresses: vec!["10.44.0.3/24".to_owned()],
            mtu: None,
            network: Some("lan".to_owned()),
        }],
        hosts: hosts.to_owned(),
        files: vec![file(
            "/etc/slurm/slurm.conf",
            b"SlurmctldHost=ctl\n",
            "root:root",
            0o644,
        )],
        secrets: vec![file("/etc/munge/munge.key", &key, "munge:munge", 0o400)],
        ssh: Some(SshConfig {
            host_keys: vec![SshHostKey {
                algorithm: "ed25519".to_owned(),
                private_key:
                    "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----"
                        .to_owned(),
                public_key: "ssh-ed25519 AAAAC3 root@compute1".to_owned(),
            }],
            authorized_keys: vec!["ssh-ed25519 AAAAC3Nza testbed".to_owned()],
        }),
        services: vec!["munge".to_owned(), "slurmd".to_owned()],
        service_timeout_ms: 1000,
        identity: None,
    };
    let report = client.activate(&activation, TIMEOUT).unwrap();
    assert_eq!(
        report.files,
        [
            "/etc/hostname",
            "/etc/hosts",
            "/etc/munge/munge.key",
            "/etc/slurm/slurm.conf",
            "/etc/ssh/ssh_host_ed25519_key",
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "/root/.ssh/authorized_keys",
        ]
    );
    assert_eq!(report.skipped, ["hostname", "addresses", "services"]);
    assert!(report.services.is_empty());

    let r = root.path();
    check_file(r, "/etc/hostname", b"compute1\n", (0, 0), 0o644);
    check_file(r, "/etc/hosts", hosts.as_bytes(), (0, 0), 0o644);
    check_file(r, "/etc/munge/munge.key", &key, (1234, 1235), 0o400);
    check_file(
        r,
        "/etc/slurm/slurm.conf",
        b"SlurmctldHost=ctl\n",
        (0, 0),
        0o644,
    );
    check_file(
        r,
        "/etc/ssh/ssh_host_ed25519_key",
        b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        (0, 0),
        0o600,
    );
    check_file(
        r,
        "/etc/ssh/ssh_host_ed25519_key.pub",
        b"ssh-ed25519 AAAAC3 root@compute1\n",
        (0, 0),
        0o644,
    );
    check_file(
        r,
        "/root/.ssh/authorized_keys",
        b"ssh-ed25519 AAAAC3Nza testbed\n",
        (0, 0),
        0o600,
    );
    assert_eq!(
        fs::metadata(r.join("root/.ssh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(
        client.state(TIMEOUT).unwrap().activation,
        ActivationStatus::Ready
    );

    // Activation is idempotent: a second one (after an agent restart, say)
    // rewrites the same files.
    client.activate(&activation, TIMEOUT).unwrap();
    check_file(r, "/etc/munge/munge.key", &key, (1234, 1235), 0o400);

    // An unknown owner fails, naming the node, the file and the user.
    let mut broken = activation.clone();
    broken.secrets[0].owner = "slurm:slurm".to_owned();
    let err = client.activate(&broken, TIMEOUT).unwrap_err();
    assert_eq!(
        err.to_string(),
        "node test: activation: activation of compute1: /etc/munge/munge.key: unknown user slurm in /etc/passwd"
    );
    assert!(matches!(
        client.state(TIMEOUT).unwrap().activation,
        ActivationStatus::Failed { .. }
    ));

    // Paths cannot escape the root.
    let mut escaping = activation.clone();
    escaping.files[0].path = "/etc/../../outside".to_owned();
    let err = client.activate(&escaping, TIMEOUT).unwrap_err();
    assert!(err.to_string().contains("/etc/../../outside"), "{err}");
    assert!(!root.path().parent().unwrap().join("outside").exists());

    // A clone restored from a snapshot gets its identity first: the
    // machine id is written (in place); the system steps are skipped
    // under a root prefix and named.
    let mut restored = activation.clone();
    restored.identity = Some(Identity {
        machine_id: "0123456789abcdef0123456789abcdef".to_owned(),
        macs: vec![MacChange {
            from: "02:74:62:00:00:00".to_owned(),
            to: "52:54:00:00:00:03".to_owned(),
        }],
        entropy: vec![7; 64],
        clock_unix_ms: 1_700_000_000_000,
    });
    fs::write(r.join("etc/machine-id"), "").unwrap();
    let report = client.activate(&restored, TIMEOUT).unwrap();
    assert_eq!(
        report.skipped,
        [
            "clock",
            "entropy",
            "macs",
            "hostname",
            "addresses",
            "services"
        ]
    );
    assert_eq!(
        fs::read_to_string(r.join("etc/machine-id")).unwrap(),
        "0123456789abcdef0123456789abcdef\n"
    );
    let mut bad = restored.clone();
    bad.identity.as_mut().unwrap().machine_id = "../../etc/shadow".to_owned();
    let err = client.activate(&bad, TIMEOUT).unwrap_err();
    assert!(err.to_string().contains("invalid machine id"), "{err}");
}
