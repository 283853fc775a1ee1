//! The running-cluster verbs: `up`, `status`, `exec`, `cp`, `ssh`,
//! `ssh-config`, `forward`, `console`, `logs`, `down`, and the hidden
//! `supervise` that `up` starts in the background.
//!
//! Every verb but `up`'s preparation and `supervise` is a client of the
//! supervisor's JSON API (`testbed_runtime::api`); `logs` reads the console
//! log file directly so it also works on a node whose supervisor is gone.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use testbed_model::{Composition, Plan, Scale, ScaleArg};
use testbed_proto::ExecRequest;
use testbed_runtime::accel::{self, Accel};
use testbed_runtime::api::{
    ApiClient, ApiError, ClusterStatus, Input, NodeState, NodeStatus, Reply, Request,
};
use testbed_runtime::container::{self, Engine};
use testbed_runtime::spec::{self, BackendSpec, ImageFiles, Options};
use testbed_runtime::state::{self, StateDir};

use crate::output::{Failure, Outcome};

/// Which accelerator `up` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM where it works (usable /dev/kvm and vmx/svm), else TCG
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// One QEMU process per node; no daemon needed
    Qemu,
    /// One podman container per node (systemd as PID 1); see docs/containers.md
    Podman,
    /// One docker container per node; see docs/containers.md
    Docker,
    /// One transient libvirt domain per node, on one or more hosts; see docs/libvirt.md
    Libvirt,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
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
    pub accel: AccelChoice,
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

/// The composition a verb acts on and its state directory.
struct Target {
    comp: Composition,
    plan: Plan,
    dir: StateDir,
}

fn target(path: Option<&Path>, scale: &[ScaleArg]) -> Result<Target, Failure> {
    let path = testbed_model::resolve_path(path);
    let scale: Scale = scale.iter().cloned().collect();
    let (comp, plan) = testbed_model::check(&path, &scale)?;
    let dir = StateDir::for_cluster(&plan.cluster, &comp.source.path);
    Ok(Target { comp, plan, dir })
}

/// The state directory of the composition at `path`, without validating
/// templates (a running cluster's verbs must work even if the file was
/// edited since `up`).
pub(crate) fn state_dir(path: Option<&Path>) -> Result<(String, StateDir), Failure> {
    let path = testbed_model::resolve_path(path);
    let comp = testbed_model::load(&path)?;
    let dir = StateDir::for_cluster(&comp.cluster.name, &comp.source.path);
    Ok((comp.cluster.name, dir))
}

pub(crate) fn connect(cluster: &str, dir: &StateDir) -> Result<ApiClient, Failure> {
    ApiClient::connect(&dir.api_socket()).map_err(|e| match e {
        ApiError::NotRunning { .. } => Failure::Runtime(anyhow!(
            "cluster {cluster} is not running (start it with `testbed up`)"
        )),
        other => Failure::Runtime(other.into()),
    })
}

pub(crate) fn reply_error(reply: Reply) -> Failure {
    match reply {
        Reply::Error { message, .. } => Failure::Runtime(anyhow!(message)),
        other => Failure::Runtime(anyhow!("unexpected reply from the supervisor: {other:?}")),
    }
}

fn elapsed(start: Instant) -> String {
    format!("{:>6.1}s", start.elapsed().as_secs_f64())
}

/// `testbed up`.
pub fn up(path: Option<&Path>, scale: &[ScaleArg], args: &UpArgs) -> Outcome {
    let status = bring_up(path, scale, args)?;
    print_status(&status, args.json)
}

/// What `up` does short of printing the final status (`testbed test`
/// brings its cluster up this way): the status once every node is ready.
pub fn bring_up(
    path: Option<&Path>,
    scale: &[ScaleArg],
    args: &UpArgs,
) -> Result<ClusterStatus, Failure> {
    let start = Instant::now();
    let t = target(path, scale)?;
    if let Ok(mut client) = ApiClient::connect(&t.dir.api_socket()) {
        if let Ok(Reply::Status(status)) = client.call(&Request::Status) {
            let want: Vec<&str> = t.plan.nodes.iter().map(|n| n.name.as_str()).collect();
            let have: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
            if want != have {
                return Err(Failure::Runtime(anyhow!(
                    "cluster {} is already running with nodes {}; run `testbed down` first to change it",
                    t.plan.cluster,
                    have.join(", ")
                )));
            }
            eprintln!("cluster {} is already up", t.plan.cluster);
            return Ok(status);
        }
    }
    if t.dir.exists() {
        let report = state::teardown(&t.dir).map_err(|e| Failure::Runtime(e.into()))?;
        eprintln!(
            "removed the state of an earlier run of {} whose supervisor is gone{}",
            t.plan.cluster,
            if report.killed.is_empty() {
                String::new()
            } else {
                format!(" ({} leftover processes killed)", report.killed.len())
            }
        );
    }

    if args.backend != Backend::Libvirt && (args.connect.is_some() || !args.hosts.is_empty()) {
        return Err(Failure::Usage(
            "--connect and --host are for --backend libvirt".to_owned(),
        ));
    }
    if args.connect.is_some() && !args.hosts.is_empty() {
        return Err(Failure::Usage(
            "give either --connect URI (one host) or --host URI (repeatable), not both".to_owned(),
        ));
    }
    let backend = match args.backend {
        Backend::Qemu => BackendSpec::Qemu,
        Backend::Libvirt => {
            let (hosts, placement) = libvirt_placement(&t, args)?;
            for (i, uri) in hosts.iter().enumerate() {
                // In plan order, as `status` lists them.
                let nodes: Vec<&str> = t
                    .plan
                    .nodes
                    .iter()
                    .filter(|n| placement.get(&n.name) == Some(&i))
                    .map(|n| n.name.as_str())
                    .collect();
                eprintln!(
                    "{} libvirt host {uri}: {}",
                    elapsed(start),
                    if nodes.is_empty() {
                        "no nodes".to_owned()
                    } else {
                        nodes.join(", ")
                    }
                );
            }
            BackendSpec::Libvirt { hosts, placement }
        }
        Backend::Podman | Backend::Docker => {
            let wanted = match args.backend {
                Backend::Docker => Engine::Docker,
                _ => Engine::Podman,
            };
            let engine = container::detect(Some(wanted)).map_err(|e| Failure::Runtime(e.into()))?;
            eprintln!(
                "{} container engine: {}{}",
                elapsed(start),
                engine.engine,
                if engine.rootless { " (rootless)" } else { "" }
            );
            BackendSpec::Container { engine }
        }
    };
    let accel = match (&backend, args.accel) {
        // Containers run on the host's kernel: nothing to accelerate.
        (BackendSpec::Container { .. }, _) => Accel::Kvm,
        (_, AccelChoice::Kvm) => Accel::Kvm,
        (_, AccelChoice::Tcg) => Accel::Tcg,
        (_, AccelChoice::Auto) => {
            let d = accel::detect();
            eprintln!("{} accelerator: {} ({})", elapsed(start), d.accel, d.reason);
            d.accel
        }
    };
    let (boot_timeout, service_timeout) = match (&backend, accel) {
        (BackendSpec::Container { .. }, _) => (Duration::from_secs(300), Duration::from_secs(300)),
        (_, Accel::Kvm) => (Duration::from_secs(120), Duration::from_secs(60)),
        (_, Accel::Tcg) => (Duration::from_secs(900), Duration::from_secs(300)),
    };
    let boot_timeout = args.timeout.unwrap_or(boot_timeout);

    let built = super::image::build_for_up(&t.comp, &args.packages)?;
    let images: BTreeMap<String, ImageFiles> = built
        .iter()
        .map(|b| {
            (
                b.role.clone(),
                ImageFiles {
                    key: b.key.clone(),
                    kernel: b.output("kernel"),
                    initramfs: b.output("initramfs"),
                    rootfs: b.output("rootfs.erofs"),
                    archive: b.output("rootfs.tar"),
                    cmdline: testbed_image::initramfs::KERNEL_CMDLINE.to_owned(),
                },
            )
        })
        .collect();

    t.dir.create().map_err(|e| Failure::Runtime(e.into()))?;
    let result = launch(&t, &images, backend, accel, boot_timeout, service_timeout);
    let status = match result {
        // With --keep-failed every node gets its chance, to be inspected;
        // otherwise the first failure ends the wait, since the cluster
        // cannot be ready anyway.
        Ok(()) => wait_ready(&t, start, !args.keep_failed),
        Err(e) => Err(e),
    };
    match status {
        Ok(status) => {
            let failed: Vec<&NodeStatus> = status
                .nodes
                .iter()
                .filter(|n| n.state != NodeState::Ready)
                .collect();
            if failed.is_empty() {
                eprintln!(
                    "{} cluster {} is up: {} ready",
                    elapsed(start),
                    status.cluster,
                    match status.nodes.len() {
                        1 => "1 node".to_owned(),
                        n => format!("{n} nodes"),
                    }
                );
                return Ok(status);
            }
            let mut message = String::new();
            for node in &failed {
                if !matches!(node.state, NodeState::Failed | NodeState::Stopped) {
                    message.push_str(&format!(
                        "node {} ({}) was still {} when up gave up\n",
                        node.name, node.role, node.state,
                    ));
                    continue;
                }
                let detail = node.message.as_deref().unwrap_or("no details");
                // Agent errors already start with the node's name.
                let detail = detail
                    .strip_prefix(&format!("node {}: ", node.name))
                    .unwrap_or(detail);
                message.push_str(&format!(
                    "node {} ({}) {}: {detail}\n",
                    node.name, node.role, node.state,
                ));
                message.push_str(&format!("  console log: {}\n", node.console_log.display()));
            }
            if args.keep_failed {
                message.push_str(&format!(
                    "the cluster is left running (--keep-failed); `testbed down` removes it; state in {}",
                    t.dir.path().display()
                ));
            } else {
                stop(&t.plan.cluster, &t.dir);
                message.push_str("the cluster was taken down (use --keep-failed to inspect it)");
            }
            Err(Failure::Runtime(anyhow!(
                "cluster {} did not come up:\n{}",
                t.plan.cluster,
                message.trim_end()
            )))
        }
        Err(e) => {
            if !args.keep_failed {
                stop(&t.plan.cluster, &t.dir);
            }
            Err(e)
        }
    }
}

/// The libvirt URI used when none is given: `$LIBVIRT_DEFAULT_URI`, else
/// the system daemon for root and the user's session daemon otherwise.
pub(crate) fn default_libvirt_uri() -> String {
    match std::env::var("LIBVIRT_DEFAULT_URI") {
        Ok(uri) if !uri.is_empty() => uri,
        _ if rustix::process::geteuid().is_root() => "qemu:///system".to_owned(),
        _ => "qemu:///session".to_owned(),
    }
}

/// The libvirt hosts (`--host`, else `--connect`, else the default) and
/// each node's host: round-robin in plan order.
fn libvirt_placement(
    t: &Target,
    args: &UpArgs,
) -> Result<(Vec<String>, BTreeMap<String, usize>), Failure> {
    let listed: Vec<String> = t.comp.hosts.iter().map(|h| h.uri.clone()).collect();
    let hosts: Vec<String> = if !args.hosts.is_empty() {
        args.hosts.clone()
    } else if let Some(uri) = &args.connect {
        vec![uri.clone()]
    } else if !listed.is_empty() {
        listed
    } else {
        vec![default_libvirt_uri()]
    };
    // Unpinned nodes go round-robin, in plan order; a pinned role's nodes
    // go to its host, found by the URI its `[[hosts]]` entry names.
    let mut placement = BTreeMap::new();
    let mut next = 0;
    for node in &t.plan.nodes {
        let index = match &node.host {
            Some(name) => {
                let uri = t
                    .comp
                    .hosts
                    .iter()
                    .find(|h| &h.name == name)
                    .map(|h| h.uri.as_str())
                    .unwrap_or_default();
                hosts.iter().position(|h| h == uri).ok_or_else(|| {
                    Failure::Usage(format!(
                        "node {} is pinned to host {name} ({uri}), which is not among the hosts given: {}",
                        node.name,
                        hosts.join(", ")
                    ))
                })?
            }
            None => {
                next += 1;
                (next - 1) % hosts.len()
            }
        };
        placement.insert(node.name.clone(), index);
    }
    Ok((hosts, placement))
}

/// Prepares the spec and starts the supervisor.
fn launch(
    t: &Target,
    images: &BTreeMap<String, ImageFiles>,
    backend: BackendSpec,
    accel: Accel,
    boot_timeout: Duration,
    service_timeout: Duration,
) -> Outcome {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let options = Options {
        backend,
        accel,
        boot_timeout,
        activation_timeout: service_timeout,
        seed,
    };
    let (spec, ssh) = spec::prepare(&t.comp, &t.plan, images, &options, t.dir.path())
        .map_err(|e| Failure::Runtime(e.into()))?;
    spec.write(&t.dir.spec())
        .map_err(|e| Failure::Runtime(e.into()))?;
    let exe = std::env::current_exe().context("cannot find the testbed executable")?;
    let proxy = vec![
        exe.to_string_lossy().into_owned(),
        "forward".to_owned(),
        "--file".to_owned(),
        spec.composition.to_string_lossy().into_owned(),
        "%n".to_owned(),
        "22".to_owned(),
    ];
    spec::write_ssh(&t.dir, &ssh, &proxy).map_err(|e| Failure::Runtime(e.into()))?;

    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(t.dir.supervisor_log())
        .context("cannot create the supervisor log")?;
    let mut child = Command::new(&exe)
        .arg("supervise")
        .arg(t.dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("supervisor log")?)
        .stderr(log)
        // Its own process group: Ctrl-C on `up` must not take the cluster
        // down with it.
        .process_group(0)
        .spawn()
        .context("cannot start the supervisor")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ApiClient::connect(&t.dir.api_socket()).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(t.dir.supervisor_log()).unwrap_or_default();
            return Err(Failure::Runtime(anyhow!(
                "the supervisor exited at start ({status}):\n{}",
                log.trim_end()
            )));
        }
        if Instant::now() > deadline {
            return Err(Failure::Runtime(anyhow!(
                "the supervisor did not open its API socket within 30s; see {}",
                t.dir.supervisor_log().display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Follows the supervisor's `watch` stream, printing each change, until
/// every node is settled or, with `fail_fast`, one has failed.
fn wait_ready(t: &Target, start: Instant, fail_fast: bool) -> Result<ClusterStatus, Failure> {
    let mut client = connect(&t.plan.cluster, &t.dir)?;
    client
        .send(&Request::Watch)
        .map_err(|e| Failure::Runtime(e.into()))?;
    loop {
        match client.recv().map_err(|e| Failure::Runtime(e.into()))? {
            Reply::Node(node) => {
                let detail = match node.state {
                    NodeState::Ready => format!(
                        " ({:.1}s after its start)",
                        node.uptime_ms.unwrap_or(0) as f64 / 1000.0
                    ),
                    NodeState::Failed => " (details below)".to_owned(),
                    _ => String::new(),
                };
                eprintln!(
                    "{} {:<16} {}{}",
                    elapsed(start),
                    node.name,
                    node.state,
                    detail
                );
                if node.state == NodeState::Failed && fail_fast {
                    return fetch_status(&t.plan.cluster, &t.dir);
                }
            }
            Reply::Settled(status) => return Ok(status),
            other => return Err(reply_error(other)),
        }
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
        println!(
            "{}",
            serde_json::to_string_pretty(status).context("status as JSON")?
        );
        return Ok(());
    }
    println!(
        "cluster {} ({} backend, {}), supervisor pid {}",
        status.cluster, status.backend, status.accel, status.supervisor_pid
    );
    println!(
        "{:<16} {:<12} {:<11} {:<8} ADDRESSES",
        "NODE", "ROLE", "STATE", "UPTIME"
    );
    for n in &status.nodes {
        println!(
            "{:<16} {:<12} {:<11} {:<8} {}",
            n.name,
            n.role,
            n.state.to_string(),
            fmt_uptime(n.uptime_ms),
            n.addresses.join(", ")
        );
        if let (Some(message), NodeState::Failed | NodeState::Stopped) = (&n.message, n.state) {
            let first = message.lines().next().unwrap_or_default();
            println!("{:<16} {first}", "");
        }
    }
    Ok(())
}

/// The running cluster's status, from its supervisor.
pub(crate) fn fetch_status(cluster: &str, dir: &StateDir) -> Result<ClusterStatus, Failure> {
    let mut client = connect(cluster, dir)?;
    match client
        .call(&Request::Status)
        .map_err(|e| Failure::Runtime(e.into()))?
    {
        Reply::Status(status) => Ok(status),
        other => Err(reply_error(other)),
    }
}

/// `testbed status`.
pub fn status(path: Option<&Path>, json: bool) -> Outcome {
    let (cluster, dir) = state_dir(path)?;
    print_status(&fetch_status(&cluster, &dir)?, json)
}

/// Asks the supervisor to stop; tears the state down by hand when it does
/// not answer. Returns what happened, for the message.
pub fn stop(cluster: &str, dir: &StateDir) -> String {
    if let Ok(mut client) = ApiClient::connect(&dir.api_socket()) {
        let supervisor = fs::read_to_string(dir.supervisor_pid())
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let _ = client.set_read_timeout(Some(Duration::from_secs(90)));
        if let Ok(Reply::Ok) = client.call(&Request::Down) {
            // The supervisor removed the directory before answering and
            // exits right after; `down` returns once it is gone, so that
            // nothing of the cluster outlives the command.
            if let Some(pid) = supervisor {
                wait_gone(pid, Duration::from_secs(10));
            }
            if !dir.exists() {
                return format!("cluster {cluster} is down");
            }
        }
    }
    match state::teardown(dir) {
        Ok(report) if report.removed => {
            let killed: Vec<String> = report
                .killed
                .iter()
                .map(|(what, pid)| format!("{what} (pid {pid})"))
                .collect();
            // Containers outlive their supervisor; what the engine removed.
            let removed = if report.engine.is_empty() {
                String::new()
            } else {
                format!("; {}", report.engine.join(", "))
            };
            if killed.is_empty() {
                format!(
                    "cluster {cluster} is down (its supervisor was gone; state removed{removed})"
                )
            } else {
                format!(
                    "cluster {cluster} is down (its supervisor did not answer; killed {}{removed})",
                    killed.join(", ")
                )
            }
        }
        Ok(_) => format!("cluster {cluster} is not running"),
        Err(e) => format!("cluster {cluster}: {e}"),
    }
}

/// Waits until process `pid` has exited (a zombie counts as exited: only
/// its parent can reap it).
fn wait_gone(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            // "PID (comm) STATE ...": the state follows the last ')'.
            Ok(stat)
                if !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z') =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => return,
        }
    }
}

/// `testbed down`.
pub fn down(path: Option<&Path>) -> Outcome {
    let (cluster, dir) = state_dir(path)?;
    let message = stop(&cluster, &dir);
    if dir.exists() {
        return Err(Failure::Runtime(anyhow!(
            "{message}; {} could not be removed",
            dir.path().display()
        )));
    }
    eprintln!("{message}");
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
    print!("{text}");
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
    eprint!("connected to the console of {node}; Ctrl-] leaves\r\n");
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
    eprintln!("\r\ndisconnected from the console of {node}");
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
        eprintln!("{stamp:.3} +{:.1}s {line}", start.elapsed().as_secs_f64());
    });
    // The error is reported on stderr, which is the supervisor's log.
    testbed_runtime::supervisor::run(&StateDir::at(dir), log)
        .map_err(|e| Failure::Runtime(e.into()))
}
