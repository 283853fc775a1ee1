//! The running-cluster verbs: `up`, `status`, `exec`, `cp`, `ssh`,
//! `ssh-config`, `forward`, `console`, `logs`, `down`, and the hidden
//! `supervise` that `up` starts in the background.
//!
//! `up` and `down` call `testbed_cluster` and print what it reports; the
//! other verbs but `supervise` are clients of the supervisor's JSON API
//! (`testbed_runtime::api`); `logs` reads the console log file directly so
//! it also works on a node whose supervisor is gone.

use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use testbed_cluster::{AccelChoice, BackendKind, BackendOptions, Target, UpEvent, UpOptions};
use testbed_model::{Scale, ScaleArg};
use testbed_proto::ExecRequest;
use testbed_runtime::api::{ApiClient, ClusterStatus, Input, NodeState, Reply, Request};
use testbed_runtime::state::StateDir;

use super::image::{lock_note, Reporter};
use crate::output::{Failure, Outcome};

value_enum! {
    /// Which backend runs the nodes.
    pub struct Backend(BackendKind) {
        BackendKind::Qemu => "qemu": "One QEMU process per node; no daemon needed",
        BackendKind::Podman => "podman": "One podman container per node (systemd as PID 1); see docs/containers.md",
        BackendKind::Docker => "docker": "One docker container per node; see docs/containers.md",
        BackendKind::Libvirt => "libvirt": "One transient libvirt domain per node, on one or more hosts; see docs/libvirt.md",
    }
}

value_enum! {
    /// Which accelerator the VMs use.
    pub struct Accel(AccelChoice) {
        AccelChoice::Auto => "auto": "KVM where it works (usable /dev/kvm and vmx/svm), else TCG",
        AccelChoice::Kvm => "kvm",
        AccelChoice::Tcg => "tcg",
    }
}

/// The backend flags of `up`, and of `test` for when it brings the cluster
/// up.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// Virtualization backend
    #[arg(long, value_enum, default_value = "qemu")]
    pub backend: Backend,
    /// libvirt: the URI of the one host [default: $LIBVIRT_DEFAULT_URI, else qemu:///system as root, qemu:///session otherwise]
    #[arg(long, value_name = "URI")]
    pub connect: Option<String>,
    /// libvirt: a host's URI; repeat for several (nodes are placed round-robin, or as their role pins); replaces the composition's [[hosts]]
    #[arg(long = "host", value_name = "URI")]
    pub hosts: Vec<String>,
    /// Accelerator
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// qemu: boot every node instead of starting it from its role's memory snapshot (made on first use; docs/snapshots.md)
    #[arg(long)]
    pub cold: bool,
    /// qemu: start every node from this snapshot of the cluster (`testbed snapshot save NAME`) instead of booting: where it was, services running, faults as saved
    #[arg(long, value_name = "NAME", conflicts_with = "cold")]
    pub from: Option<String>,
}

impl BackendArgs {
    /// The library's backend options.
    pub fn options(&self) -> BackendOptions {
        BackendOptions {
            kind: self.backend.0,
            connect: self.connect.clone(),
            hosts: self.hosts.clone(),
            accel: self.accel.0,
            cold: self.cold,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// How long a node may take to boot and activate [default: 120s with KVM, 900s with TCG]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Leave a cluster that failed to come up running, for inspection
    #[arg(long)]
    pub keep_failed: bool,
    /// Print the final status as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub packages: super::image::PackageArgs,
}

/// `30s`, `5m`, `1h`, `250ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    testbed_model::units::parse_duration(s).map_err(|e| e.message)
}

/// The state directory of the composition at `path`, without validating
/// templates (a running cluster's verbs must work even if the file was
/// edited since `up`).
pub(crate) fn state_dir(path: Option<&Path>) -> Result<(String, StateDir), Failure> {
    let located = testbed_cluster::locate(path)?;
    Ok((located.cluster, located.dir))
}

pub(crate) fn connect(cluster: &str, dir: &StateDir) -> Result<ApiClient, Failure> {
    Ok(testbed_cluster::connect(cluster, dir)?)
}

pub(crate) fn reply_error(reply: Reply) -> Failure {
    testbed_cluster::reply_error(reply).into()
}

fn elapsed(start: Instant) -> String {
    format!("{:>6.1}s", start.elapsed().as_secs_f64())
}

/// `testbed up`.
pub fn up(path: Option<&Path>, scale: &[ScaleArg], args: &UpArgs) -> Outcome {
    let scale: Scale = scale.iter().cloned().collect();
    let target = Target::load(path, &scale)?;
    let mut options = up_options(&args.backend, &args.packages)?;
    options.timeout = args.timeout;
    options.keep_failed = args.keep_failed;
    let status = bring_up(&target, &options)?;
    print_status(&status, args.json)
}

/// The options of `up` from its flags (`testbed test` shares these).
pub fn up_options(
    backend: &BackendArgs,
    packages: &super::image::PackageArgs,
) -> Result<UpOptions, Failure> {
    let exe = std::env::current_exe().context("cannot find the testbed executable")?;
    let mut options = UpOptions::new(exe);
    options.backend = backend.options();
    options.packages = packages.options();
    options.from = backend.from.clone();
    Ok(options)
}

/// Brings `target` up with `testbed_cluster::up`, printing its progress on
/// stderr; the status once every node is ready.
pub fn bring_up(target: &Target, options: &UpOptions) -> Result<ClusterStatus, Failure> {
    let start = Instant::now();
    // The builder's spinners (or lines), while images are built.
    let mut reporter: Option<Reporter> = None;
    let result = testbed_cluster::up(target, options, &mut |event| {
        print_up_event(event, start, &mut reporter)
    });
    // Spinners cut short by an error are marked before it is printed.
    drop(reporter);
    Ok(result?)
}

fn print_up_event(event: UpEvent, start: Instant, reporter: &mut Option<Reporter>) {
    match event {
        UpEvent::AlreadyUp { cluster } => errln!("cluster {cluster} is already up"),
        UpEvent::StaleStateRemoved { cluster, killed } => errln!(
            "removed the state of an earlier run of {cluster} whose supervisor is gone{}",
            if killed.is_empty() {
                String::new()
            } else {
                format!(" ({} leftover processes killed)", killed.len())
            }
        ),
        UpEvent::LibvirtHost { uri, nodes } => errln!(
            "{} libvirt host {uri}: {}",
            elapsed(start),
            if nodes.is_empty() {
                "no nodes".to_owned()
            } else {
                nodes.join(", ")
            }
        ),
        UpEvent::ContainerEngine(engine) => errln!(
            "{} container engine: {}{}",
            elapsed(start),
            engine.engine,
            if engine.rootless { " (rootless)" } else { "" }
        ),
        UpEvent::Accelerator(d) => {
            errln!("{} accelerator: {} ({})", elapsed(start), d.accel, d.reason)
        }
        UpEvent::BuildStarted => *reporter = Some(Reporter::new()),
        UpEvent::Image(event) => {
            if let Some(reporter) = reporter {
                testbed_image::Progress::event(reporter, event);
            }
        }
        UpEvent::Lock(note) => lock_note(note),
        UpEvent::ImagesReady { .. } => *reporter = None,
        UpEvent::SupervisorStarted { .. } => {}
        UpEvent::Node(node) => {
            let detail = match node.state {
                NodeState::Ready => format!(
                    " ({:.1}s after its start{})",
                    node.uptime_ms.unwrap_or(0) as f64 / 1000.0,
                    node.snapshot
                        .as_ref()
                        .map(|s| format!(", from snapshot {s}"))
                        .unwrap_or_default()
                ),
                NodeState::Failed => " (details below)".to_owned(),
                _ => String::new(),
            };
            errln!(
                "{} {:<16} {}{}",
                elapsed(start),
                node.name,
                node.state,
                detail
            );
            if let (NodeState::Booting, Some(warning)) = (node.state, &node.warning) {
                errln!("warning: {}: {warning}", node.name);
            }
        }
        UpEvent::Up { cluster, nodes } => errln!(
            "{} cluster {cluster} is up: {} ready",
            elapsed(start),
            match nodes {
                1 => "1 node".to_owned(),
                n => format!("{n} nodes"),
            }
        ),
    }
}

fn fmt_uptime(ms: Option<u64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) => {
            let s = ms / 1000;
            if s >= 3600 {
                format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
            } else if s >= 60 {
                format!("{}m{:02}s", s / 60, s % 60)
            } else {
                format!("{s}s")
            }
        }
    }
}

fn print_status(status: &ClusterStatus, json: bool) -> Outcome {
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(status).context("status as JSON")?
        );
        return Ok(());
    }
    outln!(
        "cluster {} ({} backend, {}), supervisor pid {}",
        status.cluster,
        status.backend,
        status.accel,
        status.supervisor_pid
    );
    outln!(
        "{:<16} {:<12} {:<11} {:<8} ADDRESSES",
        "NODE",
        "ROLE",
        "STATE",
        "UPTIME"
    );
    for n in &status.nodes {
        outln!(
            "{:<16} {:<12} {:<11} {:<8} {}",
            n.name,
            n.role,
            n.state.to_string(),
            fmt_uptime(n.uptime_ms),
            n.addresses.join(", ")
        );
        if let (Some(message), NodeState::Failed | NodeState::Stopped) = (&n.message, n.state) {
            let first = message.lines().next().unwrap_or_default();
            outln!("{:<16} {first}", "");
        }
    }
    Ok(())
}

/// The running cluster's status, from its supervisor.
pub(crate) fn fetch_status(cluster: &str, dir: &StateDir) -> Result<ClusterStatus, Failure> {
    Ok(testbed_cluster::status(cluster, dir)?)
}

/// `testbed status`.
pub fn status(path: Option<&Path>, json: bool) -> Outcome {
    let (cluster, dir) = state_dir(path)?;
    print_status(&fetch_status(&cluster, &dir)?, json)
}

/// `testbed down`.
pub fn down(path: Option<&Path>) -> Outcome {
    let (cluster, dir) = state_dir(path)?;
    let message = testbed_cluster::down(&dir, &cluster);
    if dir.exists() {
        return Err(Failure::Runtime(anyhow!(
            "{message}; {} could not be removed",
            dir.path().display()
        )));
    }
    errln!("{message}");
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The node
    pub node: String,
    /// The command and its arguments
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Forward standard input to the command
    #[arg(short, long)]
    pub interactive: bool,
    /// Working directory in the guest
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Environment variable for the command (repeatable)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Kill the command after this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

/// `testbed exec`: the exit status is the command's (128+N for a signal,
/// 124 for a timeout, like `timeout(1)`).
pub fn exec(file: Option<&Path>, args: &ExecArgs) -> Outcome {
    let (cluster, dir) = state_dir(file)?;
    let mut request = ExecRequest::argv(args.command.iter().cloned());
    for pair in &args.env {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Failure::Usage(format!("--env expects KEY=VALUE, got {pair:?}")))?;
        request = request.env(k, v);
    }
    if let Some(cwd) = &args.cwd {
        request = request.cwd(cwd.clone());
    }
    if let Some(t) = args.timeout {
        request = request.timeout(t);
    }
    if args.interactive {
        request = request.with_stdin();
    }
    let mut client = connect(&cluster, &dir)?;
    client
        .send(&Request::Exec {
            node: args.node.clone(),
            exec: request,
        })
        .map_err(|e| Failure::Runtime(e.into()))?;
    if args.interactive {
        let mut input = client_input(&client)?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            let mut stdin = io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = testbed_runtime::api::write_line(&mut input, &Input::Eof);
                        return;
                    }
                    Ok(n) => {
                        let line = Input::Stdin {
                            data: buf[..n].to_vec(),
                        };
                        if testbed_runtime::api::write_line(&mut input, &line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    let mut stdout = io::stdout().lock();
    let mut stderr = io::stderr().lock();
    loop {
        match client.recv().map_err(|e| Failure::Runtime(e.into()))? {
            Reply::Stdout { data } => {
                let _ = stdout.write_all(&data);
                let _ = stdout.flush();
            }
            Reply::Stderr { data } => {
                let _ = stderr.write_all(&data);
                let _ = stderr.flush();
            }
            Reply::Exited { status } => {
                let code = match (status.timed_out, status.code, status.signal) {
                    (true, _, _) => 124,
                    (false, Some(c), _) => c.clamp(0, 255) as u8,
                    (false, None, Some(s)) => (128 + s).clamp(0, 255) as u8,
                    _ => 1,
                };
                if status.timed_out {
                    let _ = writeln!(
                        stderr,
                        "testbed: {} on {} was killed after its timeout",
                        args.command.join(" "),
                        args.node
                    );
                }
                return if code == 0 {
                    Ok(())
                } else {
                    Err(Failure::Reported(code))
                };
            }
            other => return Err(reply_error(other)),
        }
    }
}

/// A second handle on the API connection for writing input lines.
fn client_input(client: &ApiClient) -> Result<UnixStream, Failure> {
    client
        .writer()
        .try_clone()
        .map_err(|e| Failure::Runtime(e.into()))
}

/// `NODE:PATH` or a host path.
enum Place {
    Guest(String, String),
    Host(PathBuf),
}

fn place(s: &str) -> Place {
    match s.split_once(':') {
        Some((node, path)) if !node.is_empty() && !node.contains('/') && path.starts_with('/') => {
            Place::Guest(node.to_owned(), path.to_owned())
        }
        _ => Place::Host(PathBuf::from(s)),
    }
}

/// `testbed cp SRC DST`, one side `NODE:/path`.
pub fn cp(file: Option<&Path>, src: &str, dst: &str) -> Outcome {
    let (cluster, dir) = state_dir(file)?;
    let mut client = connect(&cluster, &dir)?;
    match (place(src), place(dst)) {
        (Place::Host(from), Place::Guest(node, path)) => {
            let meta =
                fs::metadata(&from).with_context(|| format!("cannot read {}", from.display()))?;
            if meta.is_dir() {
                return Err(Failure::Usage(format!(
                    "{} is a directory; cp copies single files (use `tar` through `testbed exec -i`)",
                    from.display()
                )));
            }
            let data =
                fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
            let path = if path.ends_with('/') {
                format!(
                    "{path}{}",
                    from.file_name().unwrap_or_default().to_string_lossy()
                )
            } else {
                path
            };
            match client
                .call(&Request::Put {
                    node,
                    path,
                    mode: meta.permissions().mode() & 0o7777,
                    owner: None,
                    data,
                })
                .map_err(|e| Failure::Runtime(e.into()))?
            {
                Reply::Ok => Ok(()),
                other => Err(reply_error(other)),
            }
        }
        (Place::Guest(node, path), Place::Host(to)) => {
            match client
                .call(&Request::Get {
                    node,
                    path: path.clone(),
                })
                .map_err(|e| Failure::Runtime(e.into()))?
            {
                Reply::File { mode, data } => {
                    let to = if to.is_dir() {
                        to.join(Path::new(&path).file_name().unwrap_or_default())
                    } else {
                        to
                    };
                    fs::write(&to, data)
                        .with_context(|| format!("cannot write {}", to.display()))?;
                    fs::set_permissions(&to, fs::Permissions::from_mode(mode & 0o777))
                        .with_context(|| format!("cannot set the mode of {}", to.display()))?;
                    Ok(())
                }
                other => Err(reply_error(other)),
            }
        }
        _ => Err(Failure::Usage(
            "exactly one of SRC and DST must be NODE:/absolute/path".to_owned(),
        )),
    }
}

/// `testbed forward NODE PORT`: standard input and output become a TCP
/// connection to the node's port (an `ssh` ProxyCommand).
pub fn forward(file: Option<&Path>, node: &str, port: u16) -> Outcome {
    let (cluster, dir) = state_dir(file)?;
    let mut client = connect(&cluster, &dir)?;
    match client
        .call(&Request::Forward {
            node: node.to_owned(),
            port,
        })
        .map_err(|e| Failure::Runtime(e.into()))?
    {
        Reply::Ok => {}
        other => return Err(reply_error(other)),
    }
    let (buffered, stream) = client.into_stream();
    let mut to_guest = stream.try_clone().context("forward connection")?;
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut to_guest);
        let _ = to_guest.shutdown(std::net::Shutdown::Write);
    });
    let mut out = io::stdout().lock();
    out.write_all(&buffered).context("stdout")?;
    out.flush().context("stdout")?;
    let mut from_guest = stream;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from_guest.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::Runtime(e.into())),
        }
    }
}

fn ssh_config_path(cluster: &str, dir: &StateDir) -> Result<PathBuf, Failure> {
    let path = dir.ssh_dir().join("config");
    if !path.exists() {
        return Err(Failure::Runtime(anyhow!(
            "cluster {cluster} is not running (start it with `testbed up`)"
        )));
    }
    Ok(path)
}

/// `testbed ssh-config`.
pub fn ssh_config(path: Option<&Path>) -> Outcome {
    let (cluster, dir) = state_dir(path)?;
    let config = ssh_config_path(&cluster, &dir)?;
    let text = fs::read_to_string(&config).context("cannot read the ssh config")?;
    out!("{text}");
    Ok(())
}

/// `testbed ssh NODE [-- ARGS]`: runs OpenSSH with the cluster's config.
pub fn ssh(file: Option<&Path>, node: &str, args: &[String]) -> Outcome {
    let (cluster, dir) = state_dir(file)?;
    let config = ssh_config_path(&cluster, &dir)?;
    let err = Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .arg(node)
        .args(args)
        .exec();
    Err(Failure::Runtime(anyhow!(
        "cannot run ssh ({err}); it is in the Debian package openssh-client"
    )))
}

/// `testbed logs NODE [--follow]`: the node's serial console log.
pub fn logs(file: Option<&Path>, node: &str, follow: bool) -> Outcome {
    let (cluster, dir) = state_dir(file)?;
    let path = dir.node(node).console_log();
    let mut f = fs::File::open(&path).map_err(|_| {
        Failure::Runtime(anyhow!(
            "no console log for node {node} of cluster {cluster} (is it up? is {node} one of its nodes?)"
        ))
    })?;
    let mut out = io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf).context("console log")? {
            0 if follow && dir.exists() => std::thread::sleep(Duration::from_millis(200)),
            0 => return Ok(()),
            n => {
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// `testbed console NODE`: the serial console, interactively; `Ctrl-]`
/// leaves.
pub fn console(file: Option<&Path>, node: &str) -> Outcome {
    let (cluster, dir) = state_dir(file)?;
    let status = fetch_status(&cluster, &dir)?;
    if !status.console {
        return Err(Failure::Runtime(anyhow!(
            "the {} backend gives nodes no interactive console; `testbed logs {node}` shows what {node} wrote to its console, `testbed ssh {node}` or `testbed exec {node} -- COMMAND` reach it",
            status.backend
        )));
    }
    if !status.nodes.iter().any(|n| n.name == node) {
        let names: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(Failure::Runtime(anyhow!(
            "no node {node} in cluster {cluster} (nodes: {})",
            names.join(", ")
        )));
    }
    let socket = dir.node(node).console_socket();
    let stream = UnixStream::connect(&socket).map_err(|e| {
        Failure::Runtime(anyhow!(
            "cannot attach to the console of {node} in cluster {cluster}: {e} (is the node running?)"
        ))
    })?;
    let stdin = io::stdin();
    let raw = if stdin.is_terminal() {
        let saved = rustix::termios::tcgetattr(&stdin).context("terminal")?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw)
            .context("terminal")?;
        Some(saved)
    } else {
        None
    };
    err!("connected to the console of {node}; Ctrl-] leaves\r\n");
    let mut from_guest = stream.try_clone().context("console")?;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = Arc::clone(&done);
    std::thread::spawn(move || {
        let mut out = io::stdout();
        let mut buf = [0u8; 4096];
        while let Ok(n) = from_guest.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
        done2.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let mut to_guest = stream;
    let mut buf = [0u8; 1024];
    let mut input = stdin.lock();
    let result = loop {
        if done.load(std::sync::atomic::Ordering::SeqCst) {
            break Ok(());
        }
        match input.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                // Ctrl-] (0x1d) ends the session, as in telnet.
                if let Some(i) = buf[..n].iter().position(|b| *b == 0x1d) {
                    let _ = to_guest.write_all(&buf[..i]);
                    break Ok(());
                }
                if to_guest.write_all(&buf[..n]).is_err() {
                    break Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    if let Some(saved) = raw {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved);
    }
    errln!("\r\ndisconnected from the console of {node}");
    result.context("console").map_err(Failure::Runtime)
}

/// `testbed supervise DIR` (hidden): the background process `up` starts.
pub fn supervise(dir: &Path) -> Outcome {
    let start = Instant::now();
    let log: testbed_runtime::supervisor::Log = Arc::new(move |line: &str| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        errln!("{stamp:.3} +{:.1}s {line}", start.elapsed().as_secs_f64());
    });
    // The error is reported on stderr, which is the supervisor's log.
    testbed_runtime::supervisor::run(&StateDir::at(dir), log)
        .map_err(|e| Failure::Runtime(e.into()))
}
