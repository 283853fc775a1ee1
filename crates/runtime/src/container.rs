//! The container backend: each node is a container of a container engine
//! (podman first, docker otherwise) running systemd as PID 1, made from the
//! role's `rootfs.tar.gz` (imported once per image key), on internal networks
//! with the plan's addresses and MACs (layout in `docs/containers.md`).
//!
//! Everything goes through the engine's command-line client, whose argument
//! lists are built by pure functions ([`run_args`], [`network_args`]) and
//! snapshot-tested. What the engine creates carries the labels
//! [`LABEL_CLUSTER`] and [`LABEL_STATE`] (the state directory), so `down`
//! finds it after a supervisor crash and never touches anything else.
//!
//! Faults are applied from the host side, in each container's network
//! namespace (`nsenter --net`): cuts (block, partition, a link down) and
//! loss are `iptables` rules, rates an HTB tree, delays and jitter a netem
//! qdisc when the host's kernel has one ([`FaultProgram`]). The container
//! holds no `CAP_NET_ADMIN`, so it cannot undo them.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::switch::LinkRule;

/// Label naming the cluster on every container, network and image.
pub const LABEL_CLUSTER: &str = "org.testbed.cluster";
/// Label holding the state directory of the cluster that created a thing.
pub const LABEL_STATE: &str = "org.testbed.state";
/// Label naming the node of a container.
pub const LABEL_NODE: &str = "org.testbed.node";
/// Where every image has the agent (installed by the image builder).
pub const AGENT_PATH: &str = "/usr/local/bin/testbed-agent";
/// The agent's VM unit, which waits for a virtio port a container never
/// has; masked in containers (the host starts the agent with `exec -i`).
pub const AGENT_UNIT: &str = "/etc/systemd/system/testbed-agent.service";

#[derive(Debug, Error)]
pub enum ContainerError {
    #[error("no container engine found: install podman (scripts/setup-host.sh does) or docker")]
    NoEngine,
    #[error("{engine} is installed but does not answer: {message}")]
    Unusable { engine: Engine, message: String },
    #[error("cannot run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed: {message}")]
    Failed { command: String, message: String },
    #[error("{what}: {message}")]
    Fault { what: String, message: String },
}

/// The engine's command-line client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Podman,
    Docker,
}

impl Engine {
    pub fn program(self) -> &'static str {
        match self {
            Engine::Podman => "podman",
            Engine::Docker => "docker",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.program())
    }
}

/// A container engine that answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    pub engine: Engine,
    /// Rootless podman: host-side network commands enter the engine's user
    /// namespace first (`podman unshare`).
    pub rootless: bool,
    /// Whether `run` may give a container its MAC addresses. Docker's
    /// client from API 1.44 on sets them per network, which a daemon
    /// before 1.44 refuses ("specify mac-address per network requires API
    /// version 1.44"): then the addresses are set from the host side once
    /// the container runs ([`Containers::set_macs`]).
    #[serde(default = "yes")]
    pub engine_sets_macs: bool,
}

fn yes() -> bool {
    true
}

/// `A.B` API versions as numbers that compare.
fn api_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Whether docker's client of API `client` can set MACs on a daemon of
/// API `server` (see [`EngineInfo::engine_sets_macs`]).
pub fn docker_sets_macs(client: &str, server: &str) -> bool {
    match (api_version(client), api_version(server)) {
        (Some(c), Some(s)) => c < (1, 44) || s >= (1, 44),
        _ => true,
    }
}

/// Whether the host mounts the unified cgroup hierarchy (cgroup v2) at
/// `/sys/fs/cgroup`.
fn host_has_cgroup2() -> bool {
    rustix::fs::statfs("/sys/fs/cgroup").is_ok_and(|s| s.f_type == 0x6367_7270)
}

pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Finds a working engine: `wanted`, or podman first, then docker.
pub fn detect(wanted: Option<Engine>) -> Result<EngineInfo, ContainerError> {
    let candidates = match wanted {
        Some(engine) => vec![engine],
        None => vec![Engine::Podman, Engine::Docker],
    };
    let mut last = None;
    for engine in candidates {
        if !on_path(engine.program()) {
            continue;
        }
        let args: &[&str] = match engine {
            Engine::Podman => &["info", "--format", "{{.Host.Security.Rootless}}"],
            // Fails when no daemon answers, as `info` does.
            Engine::Docker => &[
                "version",
                "--format",
                "{{.Client.DefaultAPIVersion}} {{.Server.APIVersion}}",
            ],
        };
        match output(engine, args) {
            Ok(out) => {
                let mut versions = out.split_whitespace();
                return Ok(EngineInfo {
                    engine,
                    rootless: engine == Engine::Podman && out.trim() == "true",
                    engine_sets_macs: engine == Engine::Podman
                        || docker_sets_macs(
                            versions.next().unwrap_or_default(),
                            versions.next().unwrap_or_default(),
                        ),
                });
            }
            Err(e) => {
                last = Some(ContainerError::Unusable {
                    engine,
                    message: e.to_string(),
                })
            }
        }
    }
    Err(last.unwrap_or(ContainerError::NoEngine))
}

/// What this host lacks for rootless podman to run testbed's containers
/// (systemd as PID 1 on internal networks), each with its fix; empty when
/// nothing is known to be missing (docs/rootless.md, "Rootless podman").
pub fn rootless_limits() -> Vec<(String, String)> {
    let mut limits = Vec::new();
    // systemd in the container creates its own cgroups: it needs a cgroup
    // delegated to the user, in the unified hierarchy (cgroup v2) or, on
    // a cgroup v1 host, in the `name=systemd` one (the container's
    // systemd makes its cgroups below the user's; podman binds that
    // hierarchy in).
    if !host_has_cgroup2() {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.split_once(":name=systemd:")
                        .map(|(_, path)| path.to_owned())
                })
            });
        let writable = own.as_ref().is_some_and(|own| {
            let dir = Path::new(SYSTEMD_CGROUP_V1).join(own.trim_start_matches('/'));
            rustix::fs::access(&dir, rustix::fs::Access::WRITE_OK).is_ok()
        });
        if !writable {
            limits.push((
                format!(
                    "the host mounts cgroup v1 and your cgroup in its name=systemd hierarchy ({}) is not yours: systemd in a rootless container cannot make its cgroups (\"Failed to create /init.scope control group: Permission denied\") and exits",
                    match &own {
                        Some(own) => format!("{SYSTEMD_CGROUP_V1}{own}"),
                        None => "none: the hierarchy is not mounted".to_owned(),
                    }
                ),
                format!(
                    "run testbed from a cgroup delegated to you, as systemd's `user@.service` gives a login session (`Delegate=yes`); by hand, as root: `mkdir {SYSTEMD_CGROUP_V1}/USER && chown -R USER {SYSTEMD_CGROUP_V1}/USER`, then as the user `echo $$ > {SYSTEMD_CGROUP_V1}/USER/cgroup.procs` in the shell that runs testbed; or boot the host with the unified cgroup hierarchy (Debian 12's default); or run podman as root"
                ),
            ));
        }
    } else {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
            })
            .unwrap_or_default();
        let dir = std::path::Path::new("/sys/fs/cgroup").join(own.trim_start_matches('/'));
        if rustix::fs::access(&dir, rustix::fs::Access::WRITE_OK).is_err() {
            limits.push((
                format!(
                    "your cgroup ({}) is not delegated to you: systemd in a rootless container cannot make its cgroups",
                    dir.display()
                ),
                "log in through a session manager that delegates one (systemd's `user@.service` with `Delegate=yes`; `loginctl enable-linger USER` for services), or run podman as root".to_owned(),
            ));
        }
    }
    // slirp4netns gives the rootless network namespace its link.
    if rustix::fs::access(
        "/dev/net/tun",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_err()
    {
        limits.push((
            "/dev/net/tun is not readable and writable for you: slirp4netns cannot set up rootless podman's network namespace".to_owned(),
            "as root: `chmod 0666 /dev/net/tun` (the mode the kernel and udev give it; opening it grants nothing without a network namespace of one's own)".to_owned(),
        ));
    }
    // podman binds the runtime folder into its rootless network namespace;
    // a folder other than the session's /run/user/UID fails there.
    let uid = rustix::process::getuid().as_raw();
    let session = format!("/run/user/{uid}");
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if dir == std::ffi::OsStr::new(&session) => {}
        other => limits.push((
            format!(
                "XDG_RUNTIME_DIR is {}, not {session}: podman's rootless networks fail (\"failed to mount runtime directory for rootless netns\")",
                other.map_or("unset".to_owned(), |d| d.to_string_lossy().into_owned())
            ),
            format!("run in a login session (pam_systemd makes {session}), or as root: `install -d -m 0700 -o USER {session}` and set XDG_RUNTIME_DIR={session}"),
        )),
    }
    limits
}

/// Where a cgroup v1 host mounts its `name=systemd` hierarchy (which has
/// no controllers): bound read-write into docker's nodes, and where a
/// rootless podman user's cgroup must be its own.
pub const SYSTEMD_CGROUP_V1: &str = "/sys/fs/cgroup/systemd";

/// What stops systemd in a docker container on this host, with its fix;
/// None when nothing does. Docker mounts the cgroup file systems
/// read-only in containers that are not privileged. On cgroup v1 the
/// host's `name=systemd` hierarchy is bound read-write instead
/// ([`SYSTEMD_CGROUP_V1`]; it must be mounted). On cgroup v2 there is
/// no such way short of `--privileged` or the host's whole cgroup tree
/// (moby/moby#46763), which testbed does not do.
pub fn docker_cgroup_problem() -> Option<(String, String)> {
    if host_has_cgroup2() {
        return Some((
            "the host has cgroup v2, where docker mounts /sys/fs/cgroup read-only in containers that are not privileged (moby/moby#46763): systemd in a node cannot make its cgroups".to_owned(),
            "use --backend podman, whose systemd mode gives each container a cgroup of its own to write".to_owned(),
        ));
    }
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines().any(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            fields.get(4) == Some(&SYSTEMD_CGROUP_V1)
                && l.split(" - ").nth(1).is_some_and(|rest| {
                    rest.starts_with("cgroup ") && rest.contains("name=systemd")
                })
        })
    });
    if mounted {
        None
    } else {
        Some((
            format!("the host has cgroup v1 but no name=systemd hierarchy at {SYSTEMD_CGROUP_V1}, which systemd in a docker container needs"),
            format!("as root: `mkdir -p {SYSTEMD_CGROUP_V1} && mount -t cgroup -o none,name=systemd cgroup {SYSTEMD_CGROUP_V1}` (scripts/setup-docker.sh does it)"),
        ))
    }
}

fn describe(program: &OsStr, args: &[String]) -> String {
    let mut text = program.to_string_lossy().into_owned();
    for a in args.iter().take(4) {
        text.push(' ');
        text.push_str(a);
    }
    if args.len() > 4 {
        text.push_str(" ...");
    }
    text
}

/// Runs a command and returns its standard output, or its standard error
/// as the failure.
fn run_command(mut cmd: Command, stdin: Option<&[u8]>) -> Result<String, ContainerError> {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let command = describe(cmd.get_program(), &args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| ContainerError::Spawn {
        command: command.clone(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(input);
    }
    let out = child
        .wait_with_output()
        .map_err(|source| ContainerError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(ContainerError::Failed {
            command,
            message: if message.is_empty() {
                out.status.to_string()
            } else {
                message.join("\n")
            },
        })
    }
}

fn output(engine: Engine, args: &[&str]) -> Result<String, ContainerError> {
    let mut cmd = Command::new(engine.program());
    cmd.args(args);
    run_command(cmd, None)
}

/// One node's container, as [`run_args`] creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    pub name: String,
    pub hostname: String,
    pub image: String,
    pub memory_mib: u64,
    pub cpus: u32,
    pub nics: Vec<ContainerNic>,
    /// Cluster, state directory and node labels.
    pub labels: BTreeMap<String, String>,
    /// Where the engine writes the container's output (systemd's status
    /// lines): the node's console log.
    pub console_log: PathBuf,
    /// Whether `run` gives the NICs their MACs ([`EngineInfo::engine_sets_macs`]).
    pub engine_sets_macs: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerNic {
    /// The engine's network.
    pub network: String,
    pub ip: String,
    pub mac: String,
}

/// The engine's bridge address on an internal network of `subnet`
/// (`A.B.C.D/N`): its first host address, which podman and docker give
/// the bridge by default (testbed reserves .1-.10 for such uses).
pub fn gateway(subnet: &str) -> Option<String> {
    let (addr, _) = subnet.split_once('/')?;
    let ip: std::net::Ipv4Addr = addr.parse().ok()?;
    Some(std::net::Ipv4Addr::from(u32::from(ip).checked_add(1)?).to_string())
}

/// The engine's name of a cluster's network.
pub fn network_name(cluster: &str, network: &str) -> String {
    format!("testbed-{cluster}-{network}")
}

/// The engine's name of a node's container.
pub fn container_name(cluster: &str, node: &str) -> String {
    format!("testbed-{cluster}-{node}")
}

/// The image tags of a store entry start with this: one image per key,
/// shared by the clusters that use it.
pub fn image_tag_prefix(key: &str) -> String {
    let short: String = key.chars().take(20).collect();
    format!("localhost/testbed-image:{short}")
}

/// The tag by which the cluster `owner` (its state directory's short id)
/// holds a store entry's image. Every cluster holds the image by a tag of
/// its own, so that one cluster's `down` (which removes its tag) never
/// pulls the image from under another cluster still starting from it:
/// the engine deletes an image only with its last tag.
pub fn image_tag(key: &str, owner: &str) -> String {
    format!("{}-{owner}", image_tag_prefix(key))
}

fn label_args(labels: &BTreeMap<String, String>, out: &mut Vec<String>) {
    for (k, v) in labels {
        out.push("--label".to_owned());
        out.push(format!("{k}={v}"));
    }
}

/// `network create` arguments: an internal network (no route out; no DNS
/// on podman: names come from the node's `/etc/hosts`; docker has no such
/// flag, and its resolver inside the container answers only the
/// network's container names), the composition's subnet.
pub fn network_args(
    engine: Engine,
    name: &str,
    subnet: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut args = vec![
        "network".to_owned(),
        "create".to_owned(),
        "--internal".to_owned(),
    ];
    if engine == Engine::Podman {
        args.push("--disable-dns".to_owned());
    }
    args.push("--subnet".to_owned());
    args.push(subnet.to_owned());
    label_args(labels, &mut args);
    args.push(name.to_owned());
    args
}

/// `run` arguments of one node (pure; snapshot-tested).
pub fn run_args(engine: Engine, c: &ContainerConfig) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--detach", "--pull", "never", "--name"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.push(c.name.clone());
    args.push("--hostname".to_owned());
    args.push(c.hostname.clone());
    label_args(&c.labels, &mut args);
    args.push("--memory".to_owned());
    args.push(format!("{}m", c.memory_mib));
    args.push("--cpus".to_owned());
    args.push(c.cpus.to_string());
    match engine {
        Engine::Podman => {
            // systemd mode: /run, /tmp tmpfs, cgroups, the stop signal.
            args.push("--systemd=always".to_owned());
            for nic in &c.nics {
                args.push("--network".to_owned());
                args.push(format!("{}:ip={},mac={}", nic.network, nic.ip, nic.mac));
            }
            args.push("--log-driver".to_owned());
            args.push("k8s-file".to_owned());
            args.push("--log-opt".to_owned());
            args.push(format!("path={}", c.console_log.display()));
        }
        Engine::Docker => {
            // What podman's systemd mode does, by hand: tmpfs where systemd
            // wants them, its stop signal, a writable cgroup (cgroup v1:
            // see `docker_cgroup_problem`), and a terminal, without which
            // systemd has no console to print its status lines on (the
            // engine's log of it is the node's console log).
            for flag in ["--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp"] {
                args.push(flag.to_owned());
            }
            args.push("--stop-signal".to_owned());
            args.push("SIGRTMIN+3".to_owned());
            args.push("--volume".to_owned());
            args.push(format!("{SYSTEMD_CGROUP_V1}:{SYSTEMD_CGROUP_V1}:rw"));
            args.push("--tty".to_owned());
            // Docker connects one network at `run`; `connect` adds the rest.
            if let Some(nic) = c.nics.first() {
                args.push("--network".to_owned());
                args.push(nic.network.clone());
                args.push("--ip".to_owned());
                args.push(nic.ip.clone());
                if c.engine_sets_macs {
                    args.push("--mac-address".to_owned());
                    args.push(nic.mac.clone());
                }
            }
        }
    }
    if c.nics.is_empty() {
        args.push("--network".to_owned());
        args.push("none".to_owned());
    }
    args.push("--volume".to_owned());
    args.push(format!("/dev/null:{AGENT_UNIT}:ro"));
    args.push(c.image.clone());
    args.push("/sbin/init".to_owned());
    args.push("--show-status=1".to_owned());
    args
}

/// The file in the state directory listing the cluster's own image tags
/// (one per line, see [`image_tag`]), which `down` removes again.
pub const IMPORTED_FILE: &str = "imported-images";

/// Removes everything the cluster whose state directory is `state` made in
/// the engine: its containers and networks (found by label, so a crashed
/// supervisor's leftovers too) and its own image tags (listed in
/// [`IMPORTED_FILE`]; the engine deletes an image with its last tag only).
/// Returns what it did and what it could not do, one line each.
pub fn remove_cluster(engine: &Containers, state: &Path) -> Vec<String> {
    let mut report = Vec::new();
    let value = state.to_string_lossy();
    match engine.containers_with(LABEL_STATE, &value) {
        Ok(names) => {
            for name in names {
                match engine.remove(&name) {
                    Ok(()) => report.push(format!("removed container {name}")),
                    Err(e) => report.push(e.to_string()),
                }
            }
        }
        Err(e) => report.push(e.to_string()),
    }
    match engine.networks_with(LABEL_STATE, &value) {
        Ok(names) => {
            for name in names {
                match engine.remove_network(&name) {
                    Ok(()) => report.push(format!("removed network {name}")),
                    Err(e) => report.push(e.to_string()),
                }
            }
        }
        Err(e) => report.push(e.to_string()),
    }
    let imported = std::fs::read_to_string(state.join(IMPORTED_FILE)).unwrap_or_default();
    for tag in lines(&imported) {
        match engine.remove_image(&tag) {
            Ok(()) => report.push(format!("removed image {tag}")),
            Err(e) => report.push(format!("kept image {tag}: {e}")),
        }
    }
    report
}

/// The engine of a running cluster.
#[derive(Debug, Clone)]
pub struct Containers {
    pub info: EngineInfo,
    /// Docker as a member of the `docker` group, not root: host-side
    /// network commands run in a helper container of this image, with
    /// these labels ([`Containers::in_netns`]).
    helper: Option<(String, BTreeMap<String, String>)>,
}

impl Containers {
    pub fn new(info: EngineInfo) -> Containers {
        Containers { info, helper: None }
    }

    /// Where host-side network commands need a helper container (docker,
    /// not root), it is made from `image` (any node image: it needs only
    /// `nsenter`, which every Debian system has) with `labels`, so that
    /// `down` finds one a crash left.
    pub fn with_helper(mut self, image: &str, labels: &BTreeMap<String, String>) -> Containers {
        if self.engine() == Engine::Docker && !rustix::process::geteuid().is_root() {
            self.helper = Some((image.to_owned(), labels.clone()));
        }
        self
    }

    fn engine(&self) -> Engine {
        self.info.engine
    }

    pub fn command(&self) -> Command {
        Command::new(self.engine().program())
    }

    fn run(&self, args: &[String]) -> Result<String, ContainerError> {
        let mut cmd = self.command();
        cmd.args(args);
        run_command(cmd, None)
    }

    fn run_str(&self, args: &[&str]) -> Result<String, ContainerError> {
        let owned: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        self.run(&owned)
    }

    pub fn image_exists(&self, tag: &str) -> bool {
        self.run_str(&["image", "inspect", "--format", "{{.Id}}", tag])
            .is_ok()
    }

    /// Gives the image of `tar` the tag `tag`: by tagging an image the
    /// engine has under another tag starting with `shared_prefix` (another
    /// cluster's, or one of an earlier run), else by importing `tar`.
    /// Returns the tag it was found under, or None if imported.
    pub fn provide(
        &self,
        tar: &Path,
        shared_prefix: &str,
        tag: &str,
    ) -> Result<Option<String>, ContainerError> {
        if self.image_exists(tag) {
            return Ok(Some(tag.to_owned()));
        }
        let listed = self.run_str(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?;
        for other in lines(&listed) {
            // A failure means the image went (its last tag was removed)
            // between the listing and here: try the next, or import.
            if other.starts_with(shared_prefix) && self.run_str(&["tag", &other, tag]).is_ok() {
                return Ok(Some(other));
            }
        }
        let tar = tar.to_string_lossy();
        if self.engine() == Engine::Podman {
            self.run_str(&["import", "--quiet", &tar, tag])?;
        } else {
            self.run_str(&["import", &tar, tag])?;
        }
        Ok(None)
    }

    pub fn remove_image(&self, tag: &str) -> Result<(), ContainerError> {
        self.run_str(&["image", "rm", tag]).map(drop)
    }

    pub fn create_network(
        &self,
        name: &str,
        subnet: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ContainerError> {
        self.run(&network_args(self.engine(), name, subnet, labels))
            .map(drop)
    }

    pub fn remove_network(&self, name: &str) -> Result<(), ContainerError> {
        self.run_str(&["network", "rm", name]).map(drop)
    }

    /// Creates and starts a node's container; returns its id.
    pub fn start(&self, c: &ContainerConfig) -> Result<String, ContainerError> {
        let id = self.run(&run_args(self.engine(), c))?.trim().to_owned();
        if self.engine() == Engine::Docker {
            self.follow_log(&c.name, &c.console_log);
            for nic in c.nics.iter().skip(1) {
                self.run_str(&["network", "connect", "--ip", &nic.ip, &nic.network, &c.name])?;
            }
            if !c.engine_sets_macs && !c.nics.is_empty() {
                self.set_macs(&c.name, &c.nics)?;
            }
        }
        Ok(id)
    }

    /// Docker keeps a container's output in its own folder, which only
    /// root may read: `logs --follow` copies it to the node's console log
    /// as it comes, until the container is removed.
    fn follow_log(&self, name: &str, console_log: &Path) {
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(console_log)
        else {
            return;
        };
        let Ok(err) = file.try_clone() else { return };
        let mut cmd = self.command();
        cmd.args(["logs", "--follow", name])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        if let Ok(mut child) = cmd.spawn() {
            // Reaped when it ends (with the container), on a thread that
            // holds nothing else.
            let _ = std::thread::Builder::new()
                .name("console-log".into())
                .spawn(move || {
                    let _ = child.wait();
                });
        }
    }

    /// Gives a running container's NICs the plan's MACs from the host
    /// side, each found by its address (where the engine could not:
    /// [`EngineInfo::engine_sets_macs`]). The container has no
    /// `CAP_NET_ADMIN` and cannot do it itself.
    pub fn set_macs(&self, name: &str, nics: &[ContainerNic]) -> Result<(), ContainerError> {
        let pid = self.pid(name)?;
        let mut script = String::from("set -e\n");
        for nic in nics {
            let _ = writeln!(
                script,
                "dev=$(ip -o -4 addr show to {ip} | awk '{{print $2}}' | head -n1)\n\
                 [ -n \"$dev\" ] || {{ echo \"no interface has {ip}\" >&2; exit 1; }}\n\
                 ip link set dev \"$dev\" address {mac}",
                ip = nic.ip,
                mac = nic.mac,
            );
        }
        self.in_netns(pid, "sh", &["-c", &script], None)
            .map(drop)
            .map_err(|e| ContainerError::Failed {
                command: format!("setting the MACs of {name}"),
                message: e.to_string(),
            })
    }

    /// Removes a container at once (SIGKILL), running or not.
    pub fn remove(&self, name: &str) -> Result<(), ContainerError> {
        match self.engine() {
            Engine::Podman => self.run_str(&["rm", "--force", "--time", "0", name]),
            Engine::Docker => self.run_str(&["rm", "--force", name]),
        }
        .map(drop)
    }

    pub fn kill(&self, name: &str) -> Result<(), ContainerError> {
        self.run_str(&["kill", "--signal", "KILL", name]).map(drop)
    }

    pub fn pause(&self, name: &str) -> Result<(), ContainerError> {
        self.run_str(&["pause", name]).map(drop)
    }

    pub fn unpause(&self, name: &str) -> Result<(), ContainerError> {
        self.run_str(&["unpause", name]).map(drop)
    }

    /// The container's init process as the host sees it (0 when stopped).
    pub fn pid(&self, name: &str) -> Result<u32, ContainerError> {
        let out = self.run_str(&["inspect", "--format", "{{.State.Pid}}", name])?;
        out.trim().parse().map_err(|_| ContainerError::Failed {
            command: format!("{} inspect {name}", self.engine()),
            message: format!("unexpected pid {out:?}"),
        })
    }

    /// Whether the container is running.
    pub fn running(&self, name: &str) -> bool {
        self.run_str(&["inspect", "--format", "{{.State.Running}}", name])
            .is_ok_and(|o| o.trim() == "true")
    }

    /// The command that starts the agent's session on its standard streams.
    pub fn agent_command(&self, name: &str) -> Command {
        let mut cmd = self.command();
        cmd.args(["exec", "--interactive", name, AGENT_PATH, "--stdio"]);
        cmd
    }

    /// Names of the containers (all, running or not) with `label=value`.
    pub fn containers_with(&self, label: &str, value: &str) -> Result<Vec<String>, ContainerError> {
        let filter = format!("label={label}={value}");
        let out = self.run_str(&["ps", "--all", "--filter", &filter, "--format", "{{.Names}}"])?;
        Ok(lines(&out))
    }

    /// Names of the networks with `label=value`.
    pub fn networks_with(&self, label: &str, value: &str) -> Result<Vec<String>, ContainerError> {
        let filter = format!("label={label}={value}");
        let out = self.run_str(&[
            "network",
            "ls",
            "--filter",
            &filter,
            "--format",
            "{{.Name}}",
        ])?;
        Ok(lines(&out))
    }

    /// Runs `program args` in the network namespace of the process `pid`,
    /// from the host side (inside the engine's user namespace when
    /// rootless), with `stdin` as its input.
    pub fn in_netns(
        &self,
        pid: u32,
        program: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<String, ContainerError> {
        let netns = format!("--net=/proc/{pid}/ns/net");
        let mut cmd = if let Some((image, labels)) = &self.helper {
            // A member of the docker group may not enter a namespace, but
            // the daemon may: a helper container in the host's PID
            // namespace (to find the node's network namespace), with the
            // capabilities to enter it and to change its rules, runs the
            // host's program (the host's root, read-only, with a /run of
            // its own for iptables' lock) in the node's network namespace.
            // (Membership of that group is root in all but name;
            // docs/rootless.md.)
            let mut c = self.command();
            c.args(["run", "--rm", "--interactive", "--pid", "host"]);
            for cap in ["SYS_ADMIN", "NET_ADMIN", "NET_RAW"] {
                c.args(["--cap-add", cap]);
            }
            c.args(["--network", "none", "--log-driver", "none"]);
            c.args(["--volume", "/:/host:ro", "--tmpfs", "/host/run"]);
            let mut label = Vec::new();
            label_args(labels, &mut label);
            c.args(label);
            c.args(["--entrypoint", "nsenter", image, netns.as_str()]);
            c.args(["--", "chroot", "/host", program]);
            c
        } else if self.info.rootless {
            let mut c = Command::new("podman");
            c.args(["unshare", "nsenter", &netns, program]);
            c
        } else {
            let mut c = Command::new("nsenter");
            c.args([netns.as_str(), program]);
            c
        };
        cmd.args(args);
        run_command(cmd, stdin)
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What one node's network namespace must look like for the faults in
/// force: an `iptables-restore` input for cuts and loss, and `tc` commands
/// per interface for rates and delays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultProgram {
    pub iptables: String,
    /// `(interface, tc batch)`; an empty batch means "no shaping".
    pub tc: Vec<(String, String)>,
    /// Whether any delay or jitter needs the kernel's netem qdisc.
    pub needs_netem: bool,
}

/// One peer address as seen from a node: which of the node's interfaces
/// reaches it, and the fault verdict between the two nodes (`None`: cut).
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub node: String,
    pub ip: String,
    pub interface: String,
    pub verdict: Option<LinkRule>,
}

/// The program of a node whose peers are `peers` on `interfaces` (pure).
///
/// `gateways` are the engine's bridge addresses on the node's networks:
/// the host's side of an internal network, outside the cluster, which a
/// node must not reach (a VM has no such address at all).
pub fn fault_program(interfaces: &[String], peers: &[Peer], gateways: &[String]) -> FaultProgram {
    let mut ipt =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for gw in gateways {
        let _ = writeln!(ipt, "-A INPUT -s {gw}/32 -j DROP");
        let _ = writeln!(ipt, "-A OUTPUT -d {gw}/32 -j DROP");
    }
    let mut needs_netem = false;
    for p in peers {
        match &p.verdict {
            None => {
                let _ = writeln!(ipt, "-A INPUT -s {}/32 -j DROP", p.ip);
                let _ = writeln!(ipt, "-A OUTPUT -d {}/32 -j DROP", p.ip);
            }
            Some(rule) if rule.loss > 0.0 => {
                // Each side drops its own sends: loss per direction, as the
                // switch does it for VMs.
                let _ = writeln!(
                    ipt,
                    "-A OUTPUT -d {}/32 -m statistic --mode random --probability {} -j DROP",
                    p.ip, rule.loss
                );
            }
            Some(_) => {}
        }
    }
    ipt.push_str("COMMIT\n");
    let mut tc = Vec::new();
    for dev in interfaces {
        let shaped: Vec<(&Peer, &LinkRule)> = peers
            .iter()
            .filter(|p| &p.interface == dev)
            .filter_map(|p| p.verdict.as_ref().map(|r| (p, r)))
            .filter(|(_, r)| r.rate_bps.is_some() || !r.delay.is_zero())
            .collect();
        if shaped.is_empty() {
            tc.push((dev.clone(), String::new()));
            continue;
        }
        let mut batch = String::new();
        let _ = writeln!(
            batch,
            "qdisc add dev {dev} root handle 1: htb default 1 r2q 1000"
        );
        let _ = writeln!(
            batch,
            "class add dev {dev} parent 1: classid 1:1 htb rate 10gbit"
        );
        for (i, (peer, rule)) in shaped.iter().enumerate() {
            let class = 10 + i;
            let rate = rule
                .rate_bps
                .map_or_else(|| "10gbit".to_owned(), |r| format!("{r}bit"));
            let _ = writeln!(
                batch,
                "class add dev {dev} parent 1: classid 1:{class} htb rate {rate}"
            );
            if !rule.delay.is_zero() {
                needs_netem = true;
                let mut netem = format!(
                    "qdisc add dev {dev} parent 1:{class} handle {class}: netem delay {}us",
                    rule.delay.as_micros()
                );
                if !rule.jitter.is_zero() {
                    let _ = write!(netem, " {}us", rule.jitter.as_micros());
                }
                let _ = writeln!(batch, "{netem}");
            }
            let _ = writeln!(
                batch,
                "filter add dev {dev} parent 1: protocol ip prio 1 u32 match ip dst {}/32 flowid 1:{class}",
                peer.ip
            );
        }
        tc.push((dev.clone(), batch));
    }
    FaultProgram {
        iptables: ipt,
        tc,
        needs_netem,
    }
}

/// Applies `program` in the network namespace of `pid`: the whole filter
/// table is replaced at once; each interface's qdisc is replaced.
pub fn apply_program(
    engine: &Containers,
    node: &str,
    pid: u32,
    program: &FaultProgram,
) -> Result<(), ContainerError> {
    let fail = |message: String| ContainerError::Fault {
        what: format!("node {node}"),
        message,
    };
    engine
        .in_netns(
            pid,
            "iptables-restore",
            &[],
            Some(program.iptables.as_bytes()),
        )
        .map_err(|e| fail(e.to_string()))?;
    for (dev, batch) in &program.tc {
        // No root qdisc yet is not an error worth reporting.
        let _ = engine.in_netns(pid, "tc", &["qdisc", "del", "dev", dev, "root"], None);
        if batch.is_empty() {
            continue;
        }
        if let Err(e) = engine.in_netns(pid, "tc", &["-batch", "-"], Some(batch.as_bytes())) {
            let text = e.to_string();
            let _ = engine.in_netns(pid, "tc", &["qdisc", "del", "dev", dev, "root"], None);
            if program.needs_netem && text.contains("qdisc kind is unknown") {
                return Err(fail(
                    "delay and jitter need the kernel's netem qdisc (sch_netem), which this host's kernel does not have; the container backend applies link faults in the containers' network namespaces, so use a VM backend (qemu, libvirt) for delays".to_owned(),
                ));
            }
            return Err(fail(text));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> ContainerConfig {
        ContainerConfig {
            name: "testbed-slurm-compute1".to_owned(),
            hostname: "compute1".to_owned(),
            image: image_tag("3f1c0a9e2b7d4c5e6f708192a3b4c5d6e7f8091a2b3c", "0a1b2c3d"),
            memory_mib: 512,
            cpus: 1,
            nics: vec![ContainerNic {
                network: network_name("slurm", "lan"),
                ip: "10.44.0.12".to_owned(),
                mac: "52:54:00:00:00:0c".to_owned(),
            }],
            labels: [
                (LABEL_CLUSTER.to_owned(), "slurm".to_owned()),
                (LABEL_NODE.to_owned(), "compute1".to_owned()),
            ]
            .into_iter()
            .collect(),
            console_log: PathBuf::from("/run/testbed/slurm-1/nodes/compute1/console.log"),
            engine_sets_macs: true,
        }
    }

    #[test]
    fn a_docker_node_gets_by_hand_what_podmans_systemd_mode_gives() {
        let mut c = config();
        c.nics.push(ContainerNic {
            network: network_name("slurm", "ib"),
            ip: "10.45.0.12".to_owned(),
            mac: "52:54:00:00:01:0c".to_owned(),
        });
        let list = run_args(Engine::Docker, &c);
        let args = list.join(" ");
        assert_eq!(
            args,
            "run --detach --pull never --name testbed-slurm-compute1 --hostname compute1 \
             --label org.testbed.cluster=slurm --label org.testbed.node=compute1 \
             --memory 512m --cpus 1 --tmpfs /run --tmpfs /run/lock --tmpfs /tmp \
             --stop-signal SIGRTMIN+3 --volume /sys/fs/cgroup/systemd:/sys/fs/cgroup/systemd:rw \
             --tty --network testbed-slurm-lan --ip 10.44.0.12 --mac-address 52:54:00:00:00:0c \
             --volume /dev/null:/etc/systemd/system/testbed-agent.service:ro \
             localhost/testbed-image:3f1c0a9e2b7d4c5e6f70-0a1b2c3d /sbin/init --show-status=1"
        );
        for forbidden in ["--privileged", "--cap-add", "--publish", "--network=host"] {
            assert!(!args.contains(forbidden), "{forbidden} in {args}");
        }
        // The second network is connected after `run`; a client that
        // cannot set MACs on this daemon leaves them to the host side.
        c.engine_sets_macs = false;
        let args = run_args(Engine::Docker, &c).join(" ");
        assert!(!args.contains("--mac-address"), "{args}");
        assert!(!args.contains("testbed-slurm-ib"), "{args}");
    }

    #[test]
    fn a_newer_docker_client_cannot_set_macs_on_an_older_daemon() {
        assert!(docker_sets_macs("1.41", "1.41"));
        assert!(docker_sets_macs("1.50", "1.47"));
        assert!(!docker_sets_macs("1.50", "1.41"));
        assert!(docker_sets_macs("1.43", "1.41"));
        // Unreadable versions: let the engine say what it thinks.
        assert!(docker_sets_macs("", "1.41"));
    }

    #[test]
    fn a_podman_node_runs_systemd_on_its_internal_network_with_the_plan_address() {
        let list = run_args(Engine::Podman, &config());
        let args = list.join(" ");
        assert_eq!(
            args,
            "run --detach --pull never --name testbed-slurm-compute1 --hostname compute1 \
             --label org.testbed.cluster=slurm --label org.testbed.node=compute1 \
             --memory 512m --cpus 1 --systemd=always \
             --network testbed-slurm-lan:ip=10.44.0.12,mac=52:54:00:00:00:0c \
             --log-driver k8s-file --log-opt path=/run/testbed/slurm-1/nodes/compute1/console.log \
             --volume /dev/null:/etc/systemd/system/testbed-agent.service:ro \
             localhost/testbed-image:3f1c0a9e2b7d4c5e6f70-0a1b2c3d /sbin/init --show-status=1"
        );
        // Never privileged, never given the host's network or extra
        // capabilities.
        for forbidden in ["--privileged", "--cap-add", "--publish", "--network=host"] {
            assert!(!args.contains(forbidden), "{forbidden} in {args}");
        }
        assert!(!list.iter().any(|a| a == "host"), "{args}");
    }

    #[test]
    fn the_bridge_is_the_first_address_of_the_subnet() {
        assert_eq!(gateway("10.44.0.0/24").as_deref(), Some("10.44.0.1"));
        assert_eq!(gateway("nonsense"), None);
    }

    #[test]
    fn networks_are_internal() {
        let args = network_args(
            Engine::Podman,
            "testbed-slurm-lan",
            "10.44.0.0/24",
            &BTreeMap::new(),
        );
        assert_eq!(
            args.join(" "),
            "network create --internal --disable-dns --subnet 10.44.0.0/24 testbed-slurm-lan"
        );
        // Docker has no --disable-dns.
        let args = network_args(
            Engine::Docker,
            "testbed-slurm-lan",
            "10.44.0.0/24",
            &BTreeMap::new(),
        );
        assert_eq!(
            args.join(" "),
            "network create --internal --subnet 10.44.0.0/24 testbed-slurm-lan"
        );
    }

    fn peer(node: &str, ip: &str, verdict: Option<LinkRule>) -> Peer {
        Peer {
            node: node.to_owned(),
            ip: ip.to_owned(),
            interface: "eth0".to_owned(),
            verdict,
        }
    }

    #[test]
    fn no_fault_is_an_empty_table_and_no_shaping() {
        let p = fault_program(
            &["eth0".to_owned()],
            &[peer("b", "10.0.0.12", Some(LinkRule::default()))],
            &[],
        );
        assert_eq!(
            p.iptables,
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
        );
        assert_eq!(p.tc, vec![("eth0".to_owned(), String::new())]);
        assert!(!p.needs_netem);
    }

    #[test]
    fn cuts_drop_both_ways_loss_drops_sends_and_rates_shape_per_peer() {
        let slow = LinkRule {
            rate_bps: Some(1_000_000),
            delay: Duration::from_millis(100),
            jitter: Duration::from_millis(10),
            ..LinkRule::default()
        };
        let lossy = LinkRule {
            loss: 0.25,
            ..LinkRule::default()
        };
        let p = fault_program(
            &["eth0".to_owned()],
            &[
                peer("b", "10.0.0.12", None),
                peer("c", "10.0.0.13", Some(lossy)),
                peer("d", "10.0.0.14", Some(slow)),
            ],
            &["10.0.0.1".to_owned()],
        );
        // The engine's bridge (the host's side) is unreachable, both ways.
        assert!(p.iptables.contains("-A INPUT -s 10.0.0.1/32 -j DROP\n"));
        assert!(p.iptables.contains("-A OUTPUT -d 10.0.0.1/32 -j DROP\n"));
        assert!(p.iptables.contains("-A INPUT -s 10.0.0.12/32 -j DROP\n"));
        assert!(p.iptables.contains("-A OUTPUT -d 10.0.0.12/32 -j DROP\n"));
        assert!(p.iptables.contains(
            "-A OUTPUT -d 10.0.0.13/32 -m statistic --mode random --probability 0.25 -j DROP\n"
        ));
        assert!(!p.iptables.contains("10.0.0.14"));
        assert_eq!(
            p.tc[0].1,
            "qdisc add dev eth0 root handle 1: htb default 1 r2q 1000\n\
             class add dev eth0 parent 1: classid 1:1 htb rate 10gbit\n\
             class add dev eth0 parent 1: classid 1:10 htb rate 1000000bit\n\
             qdisc add dev eth0 parent 1:10 handle 10: netem delay 100000us 10000us\n\
             filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst 10.0.0.14/32 flowid 1:10\n"
        );
        assert!(p.needs_netem);
    }
}
