//! One function per request. Each runs on its channel's thread, receives
//! the host's frames through `ctx.rx`, and returns the terminal reply.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testbed_proto::frame::{FrameKind, DATA_CHUNK};
use testbed_proto::{
    ActivationStatus, AgentState, Command, ErrorKind, ExecRequest, ExitStatus, FileInfo,
    ForwardRequest, GetRequest, PutRequest, RemoteError, Reply, Request, WaitFileRequest,
    WaitPortRequest, WaitUnitRequest, PROTOCOL_VERSION,
};

use crate::activate::{self, ActivationError};
use crate::fsutil::{self, describe, AtomicFile, FsError};
use crate::log::{error, info, warning};
use crate::session::{software, ChannelOut, Ctx, Inbound};
use crate::system;

type Outcome = Result<Reply, RemoteError>;

/// How long output pumps may run on after a command exits. Output already
/// in the pipes arrives well within this; a background process that keeps
/// the pipes open (`daemon &`) must not hold the reply back forever.
const PUMP_GRACE: Duration = Duration::from_secs(1);

pub fn handle(ctx: Ctx, request: Request) -> Outcome {
    match request {
        Request::Exec(request) => exec(ctx, request),
        Request::Put(request) => put(ctx, request),
        Request::Get(request) => get(ctx, request),
        Request::WaitUnit(request) => wait_unit(ctx, request),
        Request::WaitPort(request) => wait_port(ctx, request),
        Request::WaitFile(request) => wait_file(ctx, request),
        Request::Forward(request) => forward(ctx, request),
        Request::State => Ok(Reply::State(state(&ctx))),
        Request::Activate(activation) => activate(ctx, &activation),
        // Filtered out by the session.
        Request::Cancel => Ok(Reply::Done),
    }
}

fn remote(kind: ErrorKind, message: impl Into<String>) -> RemoteError {
    RemoteError {
        kind,
        message: message.into(),
    }
}

fn io_kind(error: &io::Error) -> ErrorKind {
    match error.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::TimedOut => ErrorKind::TimedOut,
        io::ErrorKind::ConnectionRefused => ErrorKind::ConnectionRefused,
        _ => ErrorKind::Io,
    }
}

fn fs_error(error: FsError) -> RemoteError {
    let kind = match &error {
        FsError::BadPath { .. } => ErrorKind::InvalidRequest,
        FsError::Owner { .. } => ErrorKind::InvalidRequest,
        FsError::Io { source, .. } => io_kind(source),
    };
    remote(kind, error.to_string())
}

fn cancelled() -> RemoteError {
    remote(ErrorKind::Other, "cancelled by the host")
}

fn exec(ctx: Ctx, request: ExecRequest) -> Outcome {
    let mut process = match &request.command {
        Command::Argv(argv) => {
            let Some((program, args)) = argv.split_first() else {
                return Err(remote(ErrorKind::InvalidRequest, "exec with an empty argv"));
            };
            let mut process = Process::new(program);
            process.args(args);
            process
        }
        Command::Shell(script) => {
            let mut process = Process::new("/bin/sh");
            process.arg("-c").arg(script);
            process
        }
    };
    if let Some(cwd) = &request.cwd {
        if !Path::new(cwd).is_dir() {
            return Err(remote(
                ErrorKind::NotFound,
                format!("cannot run {}: no directory {cwd}", request.command),
            ));
        }
        process.current_dir(cwd);
    }
    process
        .envs(&request.env)
        .stdin(if request.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout or cancel kills everything the
        // command started, not just the shell.
        .process_group(0);
    let mut child = process.spawn().map_err(|e| {
        remote(
            io_kind(&e),
            format!("cannot run {}: {}", request.command, describe(&e)),
        )
    })?;
    let pid = child.id();
    ctx.out.reply(&Reply::Started { pid });

    let mut pumps = 0;
    if let Some(stdout) = child.stdout.take() {
        pump(stdout, FrameKind::Data, &ctx);
        pumps += 1;
    }
    if let Some(stderr) = child.stderr.take() {
        pump(stderr, FrameKind::Stderr, &ctx);
        pumps += 1;
    }
    let mut stdin = child.stdin.take().map(stdin_writer);
    wait_in_thread(child, &ctx);

    let mut deadline = request
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut timed_out = false;
    let status = loop {
        let event = match deadline {
            Some(at) => match ctx
                .rx
                .recv_timeout(at.saturating_duration_since(Instant::now()))
            {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => {
                    kill_group(pid);
                    timed_out = true;
                    deadline = None;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break None,
            },
            None => match ctx.rx.recv() {
                Ok(event) => event,
                Err(_) => break None,
            },
        };
        match event {
            Inbound::Data(bytes) => {
                if let Some(tx) = &stdin {
                    let _ = tx.send(bytes);
                }
            }
            Inbound::Eof => stdin = None,
            Inbound::Cancel => kill_group(pid),
            Inbound::Exited(status) => break Some(status),
            Inbound::PumpDone => pumps -= 1,
        }
    };
    drop(stdin);
    let grace = Instant::now() + PUMP_GRACE;
    while pumps > 0 {
        match ctx
            .rx
            .recv_timeout(grace.saturating_duration_since(Instant::now()))
        {
            Ok(Inbound::PumpDone) => pumps -= 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let status = status.ok_or_else(|| remote(ErrorKind::Other, "lost track of the process"))?;
    Ok(Reply::Exited(ExitStatus {
        code: status.code(),
        signal: status.signal(),
        timed_out,
    }))
}

fn kill_group(pid: u32) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    // ESRCH (already gone) is the only expected failure.
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// Copies a pipe into data frames until it ends.
fn pump(mut pipe: impl Read + Send + 'static, kind: FrameKind, ctx: &Ctx) {
    let out = Arc::clone(&ctx.out);
    let tx = ctx.tx.clone();
    let started = std::thread::Builder::new()
        .name(format!("pump-{}", ctx.id))
        .spawn(move || {
            let mut buf = vec![0u8; DATA_CHUNK];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if !out.data(kind, &buf[..n]) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(Inbound::PumpDone);
        });
    if let Err(e) = started {
        warning!("cannot start an output pump: {e}");
        let _ = ctx.tx.send(Inbound::PumpDone);
    }
}

/// Feeds standard input from its own thread, so that a command that does
/// not read its input cannot block the channel's handler.
fn stdin_writer(mut stdin: std::process::ChildStdin) -> mpsc::Sender<Vec<u8>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let _ = std::thread::Builder::new()
        .name("stdin".to_owned())
        .spawn(move || {
            for bytes in rx {
                if stdin.write_all(&bytes).is_err() {
                    break;
                }
            }
        });
    tx
}

fn wait_in_thread(mut child: Child, ctx: &Ctx) {
    let tx = ctx.tx.clone();
    let pid = child.id();
    let started = std::thread::Builder::new()
        .name(format!("wait-{pid}"))
        .spawn(move || match child.wait() {
            Ok(status) => {
                let _ = tx.send(Inbound::Exited(status));
            }
            Err(e) => error!("cannot wait for process {pid}: {e}"),
        });
    if let Err(e) = started {
        error!("cannot start a thread to wait for process {pid}: {e}");
    }
}

fn put(ctx: Ctx, request: PutRequest) -> Outcome {
    let path = fsutil::under_root(Path::new("/"), &request.path).map_err(fs_error)?;
    let owner = request
        .owner
        .as_deref()
        .map(|spec| {
            fsutil::resolve_owner(Path::new("/"), spec).map_err(|message| FsError::Owner {
                path: request.path.clone(),
                message,
            })
        })
        .transpose()
        .map_err(fs_error)?;
    let mut file = AtomicFile::create(&path, request.create_dirs).map_err(fs_error)?;
    loop {
        match ctx.rx.recv() {
            Ok(Inbound::Data(bytes)) => file.write_all(&bytes).map_err(fs_error)?,
            Ok(Inbound::Eof) => break,
            Ok(Inbound::Cancel) | Err(_) => return Err(cancelled()),
            Ok(_) => {}
        }
    }
    file.commit(request.mode, owner).map_err(fs_error)?;
    Ok(Reply::Done)
}

fn get(ctx: Ctx, request: GetRequest) -> Outcome {
    let path = fsutil::under_root(Path::new("/"), &request.path).map_err(fs_error)?;
    let io = |e: io::Error| fs_error(FsError::io(&path, e));
    let mut file = File::open(&path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.is_dir() {
        return Err(remote(
            ErrorKind::InvalidRequest,
            format!("{}: is a directory", request.path),
        ));
    }
    ctx.out.reply(&Reply::FileInfo(FileInfo {
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    }));
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        if let Ok(Inbound::Cancel) = ctx.rx.try_recv() {
            return Err(cancelled());
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        ctx.out.data(FrameKind::Data, &buf[..n]);
    }
    Ok(Reply::Done)
}

/// Polls `check` until it says done, the timeout passes, or the host
/// cancels. `check` returns `Ok(true)` when the condition holds, or an
/// error that ends the wait early.
fn poll(
    ctx: &Ctx,
    timeout_ms: u64,
    interval: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool, Box<Reply>>,
) -> Outcome {
    let timeout = Duration::from_millis(timeout_ms);
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(true) => return Ok(Reply::Done),
            Ok(false) => {}
            Err(reply) => return Ok(*reply),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(remote(
                ErrorKind::TimedOut,
                format!("{what} timed out after {:.1}s", timeout.as_secs_f64()),
            ));
        }
        match ctx.rx.recv_timeout(interval.min(left)) {
            Ok(Inbound::Cancel) | Err(RecvTimeoutError::Disconnected) => return Err(cancelled()),
            _ => {}
        }
    }
}

fn wait_unit(ctx: Ctx, request: WaitUnitRequest) -> Outcome {
    if !system::systemd_running() {
        return Err(remote(
            ErrorKind::InvalidRequest,
            format!(
                "cannot wait for unit {}: systemd is not running",
                request.unit
            ),
        ));
    }
    let what = format!("wait for unit {} to be {}", request.unit, request.state);
    poll(
        &ctx,
        request.timeout_ms,
        Duration::from_millis(200),
        &what,
        || {
            // A busy systemd may not answer on D-Bus in time: ask again
            // at the next poll, until the request's own timeout.
            let Ok(status) = system::unit_status(&request.unit) else {
                return Ok(false);
            };
            if status.active == request.state || (request.state == "active" && status.is_up()) {
                return Ok(true);
            }
            if request.state != "failed" && status.has_failed() {
                return Err(Box::new(Reply::ServiceFailed(activate::failure(
                    &request.unit,
                    &status,
                ))));
            }
            Ok(false)
        },
    )
}

fn wait_port(ctx: Ctx, request: WaitPortRequest) -> Outcome {
    let what = format!("wait for port {} on {}", request.port, request.host);
    poll(
        &ctx,
        request.timeout_ms,
        Duration::from_millis(100),
        &what,
        || {
            let addrs = (request.host.as_str(), request.port)
                .to_socket_addrs()
                .map_err(|e| {
                    Reply::Error(remote(
                        ErrorKind::InvalidRequest,
                        format!("cannot resolve {}: {}", request.host, describe(&e)),
                    ))
                })?;
            Ok(addrs
                .into_iter()
                .any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()))
        },
    )
}

fn wait_file(ctx: Ctx, request: WaitFileRequest) -> Outcome {
    let path = fsutil::under_root(Path::new("/"), &request.path).map_err(fs_error)?;
    let what = format!("wait for file {}", request.path);
    poll(
        &ctx,
        request.timeout_ms,
        Duration::from_millis(100),
        &what,
        || Ok(path.symlink_metadata().is_ok()),
    )
}

fn forward(ctx: Ctx, request: ForwardRequest) -> Outcome {
    let target = format!("{}:{}", request.host, request.port);
    let addr = (request.host.as_str(), request.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            remote(
                ErrorKind::InvalidRequest,
                format!("cannot resolve {target}"),
            )
        })?;
    let timeout = Duration::from_millis(request.connect_timeout_ms.max(1));
    let socket = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        remote(
            io_kind(&e),
            format!("cannot connect to {target}: {}", describe(&e)),
        )
    })?;
    let _ = socket.set_nodelay(true);
    let reader = socket
        .try_clone()
        .map_err(|e| remote(ErrorKind::Io, format!("{target}: {}", describe(&e))))?;
    ctx.out.reply(&Reply::Connected);
    pump_socket(reader, &ctx);

    let mut writer = socket;
    let mut host_done = false;
    let mut guest_done = false;
    while !(host_done && guest_done) {
        match ctx.rx.recv() {
            Ok(Inbound::Data(bytes)) => {
                if !host_done && writer.write_all(&bytes).is_err() {
                    host_done = true;
                }
            }
            Ok(Inbound::Eof) => {
                let _ = writer.shutdown(Shutdown::Write);
                host_done = true;
            }
            Ok(Inbound::Cancel) | Err(_) => {
                // Also wakes the socket reader, which then reports done.
                let _ = writer.shutdown(Shutdown::Both);
                host_done = true;
            }
            Ok(Inbound::PumpDone) => guest_done = true,
            Ok(Inbound::Exited(_)) => {}
        }
    }
    Ok(Reply::Closed)
}

/// Copies the guest socket into data frames, then sends `Eof`.
fn pump_socket(mut socket: TcpStream, ctx: &Ctx) {
    let out: Arc<ChannelOut> = Arc::clone(&ctx.out);
    let tx = ctx.tx.clone();
    let started = std::thread::Builder::new()
        .name(format!("forward-{}", ctx.id))
        .spawn(move || {
            let mut buf = vec![0u8; DATA_CHUNK];
            loop {
                match socket.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if !out.data(FrameKind::Data, &buf[..n]) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            out.data(FrameKind::Eof, &[]);
            let _ = tx.send(Inbound::PumpDone);
        });
    if let Err(e) = started {
        warning!("cannot start a socket reader: {e}");
        let _ = ctx.tx.send(Inbound::PumpDone);
    }
}

fn state(ctx: &Ctx) -> AgentState {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let uptime = read("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let loadavg = read("/proc/loadavg");
    let mut load = [0.0; 3];
    for (slot, value) in load.iter_mut().zip(loadavg.split_whitespace()) {
        *slot = value.parse().unwrap_or(0.0);
    }
    AgentState {
        agent: software(),
        protocol: PROTOCOL_VERSION,
        hostname: read("/proc/sys/kernel/hostname").trim().to_owned(),
        uptime_secs: uptime,
        load,
        activation: ctx.agent.activation_status(),
        system: system::system_state(),
    }
}

fn activate(ctx: Ctx, activation: &testbed_proto::Activation) -> Outcome {
    info!("activating as {}", activation.hostname);
    ctx.agent
        .set_activation_status(ActivationStatus::Activating);
    let mut cancelled = |wait: Duration| {
        matches!(
            ctx.rx.recv_timeout(wait),
            Ok(Inbound::Cancel) | Err(RecvTimeoutError::Disconnected)
        )
    };
    let result = activate::apply(
        &ctx.agent.root,
        ctx.agent.mutate_system,
        activation,
        &mut cancelled,
    );
    match result {
        Ok(report) => {
            info!(
                "{} is ready ({} files, {} services, {} ms)",
                activation.hostname,
                report.files.len(),
                report.services.len(),
                report.elapsed_ms
            );
            ctx.agent.set_activation_status(ActivationStatus::Ready);
            Ok(Reply::Activated(report))
        }
        Err(e) => {
            error!("{e}");
            ctx.agent.set_activation_status(ActivationStatus::Failed {
                message: e.to_string(),
            });
            match e {
                ActivationError::Service { failure, .. } => Ok(Reply::ServiceFailed(failure)),
                ActivationError::File { source, .. } => {
                    let mut error = fs_error(source);
                    error.message =
                        format!("activation of {}: {}", activation.hostname, error.message);
                    Err(error)
                }
                other => Err(remote(ErrorKind::Other, other.to_string())),
            }
        }
    }
}
