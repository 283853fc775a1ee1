//! The container backend (podman or docker): the engine owns the node
//! processes. `prepare` imports the images and creates the networks; a
//! watcher thread follows the engine's `died` events of this cluster's
//! containers; the switch only keeps the fault table, whose verdicts are
//! applied in each container's network namespace ([`crate::container`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::{lock, Backend, BackendError, Caps, Channel, Events, Opened, Started, Stop};
use super::{CheckLevel, HostCheck};
use crate::container::{
    self, ContainerConfig, ContainerNic, Containers, EngineInfo, FaultProgram, Peer,
};
use crate::spec::{ClusterSpec, NodeSpec};
use crate::state::{self, StateDir};
use crate::supervisor::console_tail;
use crate::switch::Switch;

/// One boot's container.
#[derive(Debug, Clone)]
struct Running {
    generation: u64,
    id: String,
    pid: u32,
    /// The fault rules last applied in its network namespace.
    applied: Option<FaultProgram>,
}

pub struct ContainerBackend {
    caps: Caps,
    engine: Containers,
    spec: ClusterSpec,
    dir: StateDir,
    switch: super::SharedSwitch,
    running: Arc<Mutex<BTreeMap<String, Running>>>,
    events: Arc<dyn Events>,
    /// Ends the watcher.
    stopping: Arc<AtomicBool>,
}

pub fn open(
    spec: &ClusterSpec,
    dir: &StateDir,
    engine: &EngineInfo,
    events: Arc<dyn Events>,
) -> Result<Opened, BackendError> {
    let engine = Containers::new(engine.clone());
    let names: Vec<String> = spec.nodes.iter().map(|n| n.name.clone()).collect();
    let switch = Switch::fault_table(&names, spec.seed)
        .map_err(|e| BackendError::Failed(format!("cannot start the fault table: {e}")))?;
    let switch = Arc::new(Mutex::new(switch));
    let mut backend = ContainerBackend {
        caps: Caps {
            name: engine.info.engine.to_string(),
            accel: false,
            freeze: true,
            console: false,
            agent_poll: Duration::from_millis(200),
        },
        engine,
        spec: spec.clone(),
        dir: dir.clone(),
        switch: Arc::clone(&switch),
        running: Arc::new(Mutex::new(BTreeMap::new())),
        events,
        stopping: Arc::new(AtomicBool::new(false)),
    };
    if let Some(node) = spec.nodes.first() {
        let image = backend.image_tag(&node.image.key);
        let labels = backend.labels(None);
        backend.engine = backend.engine.clone().with_helper(&image, &labels);
    }
    backend.watch()?;
    Ok(Opened {
        backend: Box::new(backend),
        switch,
    })
}

/// What [`crate::state::teardown`] does for containers: removes every
/// container, network and imported image tag labelled with `dir`.
pub fn reap(engine: &EngineInfo, dir: &StateDir) -> Vec<String> {
    container::remove_cluster(&Containers::new(engine.clone()), dir.path())
}

impl ContainerBackend {
    fn name_of(&self, node: &str) -> String {
        container::container_name(&self.spec.cluster, node)
    }

    fn image_tag(&self, key: &str) -> String {
        container::image_tag(key, &self.dir.short_id())
    }

    fn labels(&self, node: Option<&str>) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        labels.insert(
            container::LABEL_CLUSTER.to_owned(),
            self.spec.cluster.clone(),
        );
        labels.insert(
            container::LABEL_STATE.to_owned(),
            self.dir.path().to_string_lossy().into_owned(),
        );
        if let Some(node) = node {
            labels.insert(container::LABEL_NODE.to_owned(), node.to_owned());
        }
        labels
    }

    /// Follows the engine's `died` events of this cluster's containers on
    /// a thread of its own (the event stream is its child, so it dies with
    /// it), restarting the stream if it ends.
    fn watch(&self) -> Result<(), BackendError> {
        let engine = self.engine.clone();
        let dir = self.dir.clone();
        let running = Arc::clone(&self.running);
        let events = Arc::clone(&self.events);
        let stopping = Arc::clone(&self.stopping);
        std::thread::Builder::new()
            .name("container-events".into())
            .spawn(move || {
                let (tx, rx) = mpsc::channel::<String>();
                let mut stream: Option<Child> = None;
                while !stopping.load(Ordering::SeqCst) {
                    if stream
                        .as_mut()
                        .is_none_or(|c| c.try_wait().ok().flatten().is_some())
                    {
                        stream = died_events(&engine, &dir, tx.clone(), &*events);
                    }
                    while let Ok(id) = rx.recv_timeout(Duration::from_millis(200)) {
                        let found = {
                            let mut running = lock(&running);
                            let name = running
                                .iter()
                                .find(|(_, r)| r.id.starts_with(&id) || id.starts_with(&r.id))
                                .map(|(name, _)| name.clone());
                            name.and_then(|n| running.remove(&n).map(|r| (n, r.generation)))
                        };
                        if let Some((name, generation)) = found {
                            events.exited(&name, generation, "the container exited");
                        }
                    }
                }
                if let Some(mut c) = stream {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            })
            .map_err(BackendError::failed)?;
        Ok(())
    }

    /// Makes every running container's network namespace match the fault
    /// table.
    fn sync_faults(&self) -> Result<(), BackendError> {
        let running: Vec<(String, Running)> = lock(&self.running)
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        let programs: Vec<(String, Running, FaultProgram)> = {
            let switch = lock(&self.switch);
            running
                .into_iter()
                .filter_map(|(name, run)| {
                    let program = self.program(&switch, &name)?;
                    Some((name, run, program))
                })
                .collect()
        };
        let mut first_error = None;
        for (name, run, program) in programs {
            if run.applied.as_ref() == Some(&program) {
                continue;
            }
            match container::apply_program(&self.engine, &name, run.pid, &program) {
                Ok(()) => {
                    if let Some(r) = lock(&self.running)
                        .get_mut(&name)
                        .filter(|r| r.generation == run.generation)
                    {
                        r.applied = Some(program);
                    }
                }
                // A node that stopped meanwhile gets its rules at its next
                // boot.
                Err(_)
                    if lock(&self.running)
                        .get(&name)
                        .is_none_or(|r| r.generation != run.generation) => {}
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        first_error.map_or(Ok(()), |e| Err(BackendError::Failed(e)))
    }

    /// The rules of `name`'s network namespace for the fault table.
    fn program(&self, switch: &Switch, name: &str) -> Option<FaultProgram> {
        let spec = self.spec.node(name)?;
        let interfaces: Vec<String> = (0..spec.nics.len()).map(|i| format!("eth{i}")).collect();
        let mut peers = Vec::new();
        for other in self.spec.nodes.iter().filter(|o| o.name != name) {
            let verdict = switch.verdict(name, &other.name);
            for nic in &other.nics {
                if let Some(i) = spec.nics.iter().position(|m| m.network == nic.network) {
                    peers.push(Peer {
                        node: other.name.clone(),
                        ip: nic.ip.clone(),
                        interface: interfaces[i].clone(),
                        verdict: verdict.clone(),
                    });
                }
            }
        }
        let gateways: Vec<String> = spec
            .nics
            .iter()
            .filter_map(|nic| {
                let net = self.spec.networks.iter().find(|n| n.name == nic.network)?;
                container::gateway(&net.subnet)
            })
            .collect();
        Some(container::fault_program(&interfaces, &peers, &gateways))
    }
}

impl std::fmt::Debug for ContainerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContainerBackend({})", self.spec.cluster)
    }
}

impl Backend for ContainerBackend {
    fn caps(&self) -> &Caps {
        &self.caps
    }

    /// Gives every role's image this cluster's own tag (tagging the image
    /// the engine already has, or importing it; the tags are recorded for
    /// `down`, which removes them) and creates the cluster's internal
    /// networks.
    fn prepare(&self) -> Result<(), BackendError> {
        let failed = |e: container::ContainerError| {
            BackendError::Failed(format!("preparing the containers failed: {e}"))
        };
        // What stops rootless podman on this host stops it before anything
        // is imported, with what to change (the containers would otherwise
        // exit at once, saying nothing of why).
        if self.engine.info.rootless {
            let limits = container::rootless_limits();
            if !limits.is_empty() {
                let said: Vec<String> = limits
                    .iter()
                    .map(|(what, fix)| format!("{what} (fix: {fix})"))
                    .collect();
                return Err(BackendError::Failed(format!(
                    "rootless podman cannot run testbed's containers on this host: {}; see docs/rootless.md",
                    said.join("; ")
                )));
            }
        }
        if self.engine.info.engine == container::Engine::Docker {
            if let Some((what, fix)) = container::docker_cgroup_problem() {
                return Err(BackendError::Failed(format!(
                    "docker cannot run systemd in testbed's containers on this host: {what} (fix: {fix}); see docs/containers.md"
                )));
            }
        }
        let mut held = Vec::new();
        let mut seen = BTreeSet::new();
        for node in &self.spec.nodes {
            if !seen.insert(node.image.key.clone()) {
                continue;
            }
            let tag = self.image_tag(&node.image.key);
            let start = Instant::now();
            let found = self
                .engine
                .provide(
                    &node.image.archive,
                    &container::image_tag_prefix(&node.image.key),
                    &tag,
                )
                .map_err(failed)?;
            if found.is_none() {
                self.events.log(&format!(
                    "imported {} as {tag} in {:.1}s",
                    node.image.archive.display(),
                    start.elapsed().as_secs_f64()
                ));
            }
            held.push(tag);
            // Written at every step, so a crash between two imports still
            // leaves `down` the list.
            let _ = state::write_atomic(
                &self.dir.path().join(container::IMPORTED_FILE),
                held.join("\n").as_bytes(),
                0o600,
            );
        }
        let labels = self.labels(None);
        for net in &self.spec.networks {
            let name = container::network_name(&self.spec.cluster, &net.name);
            if let Err(e) = self.engine.create_network(&name, &net.subnet, &labels) {
                // Names come from the cluster's name: another cluster of the
                // same name (another folder, or one whose test was killed)
                // holds it. Never removed here: it is not this cluster's.
                if e.to_string().contains("already") {
                    return Err(BackendError::Failed(format!(
                        "the {engine} network {name} exists and is not this cluster's: another cluster named {cluster} runs (or ran) from another folder; take it down with `testbed down` there, or remove it with `{engine} network rm {name}`",
                        engine = self.engine.info.engine,
                        cluster = self.spec.cluster,
                    )));
                }
                return Err(failed(e));
            }
        }
        Ok(())
    }

    /// A fresh container (a node that crashed or stopped loses its writable
    /// layer, as a VM loses its RAM), then the fault rules in force.
    fn start(&self, spec: &NodeSpec, generation: u64) -> Result<Started, BackendError> {
        let name = spec.name.as_str();
        let node_dir = self.dir.node(name);
        let cname = self.name_of(name);
        lock(&self.running).remove(name);
        let _ = self.engine.remove(&cname);
        let _ = fs::remove_file(node_dir.console_log());
        let config = ContainerConfig {
            name: cname.clone(),
            hostname: name.to_owned(),
            image: self.image_tag(&spec.image.key),
            memory_mib: spec.memory_mib,
            cpus: spec.cpus,
            nics: spec
                .nics
                .iter()
                .map(|nic| ContainerNic {
                    network: container::network_name(&self.spec.cluster, &nic.network),
                    ip: nic.ip.clone(),
                    mac: nic.mac.clone(),
                })
                .collect(),
            labels: self.labels(Some(name)),
            console_log: node_dir.console_log(),
            engine_sets_macs: self.engine.info.engine_sets_macs,
        };
        let id = self.engine.start(&config).map_err(BackendError::failed)?;
        let pid = match self.engine.pid(&cname).map_err(BackendError::failed)? {
            0 => {
                return Err(BackendError::Failed(format!(
                    "the container {cname} stopped at once; the console's last lines:\n{}",
                    console_tail(&node_dir.console_log(), 25)
                )))
            }
            pid => pid,
        };
        lock(&self.running).insert(
            name.to_owned(),
            Running {
                generation,
                id,
                pid,
                applied: None,
            },
        );
        self.sync_faults()?;
        Ok(Started::booted(Some(pid)))
    }

    /// The agent's session: `engine exec -i NAME agent --stdio`.
    fn agent(&self, node: &NodeSpec) -> Result<Channel, BackendError> {
        let log = self.dir.node(&node.name).path.join("agent.log");
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let mut child = self
            .engine
            .agent_command(&self.name_of(&node.name))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                BackendError::Failed(format!("cannot start {}: {e}", self.engine.info.engine))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BackendError::Failed(
                "the agent's exec session has no standard streams".to_owned(),
            ));
        };
        let child = Mutex::new(child);
        Ok(Channel {
            reader: Box::new(stdout),
            writer: Box::new(stdin),
            close: Box::new(move || {
                let mut child = lock(&child);
                let _ = child.kill();
                let _ = child.wait();
            }),
        })
    }

    fn stop(&self, node: &str, how: Stop) -> Result<(), BackendError> {
        let cname = self.name_of(node);
        match how {
            // Removed, not just killed: the kernel answers pings in a dead
            // container's network namespace until the engine tears it
            // down, and a crashed node must be silent at once, as a VM is.
            Stop::PowerCut => {
                lock(&self.running).remove(node);
                self.engine.remove(&cname).map_err(BackendError::failed)
            }
            Stop::Hard => self.engine.kill(&cname).map_err(BackendError::failed),
        }
    }

    fn freeze(&self, node: &str, frozen: bool) -> Result<(), BackendError> {
        let cname = self.name_of(node);
        let done = if frozen {
            self.engine.pause(&cname)
        } else {
            self.engine.unpause(&cname)
        };
        done.map_err(BackendError::failed)
    }

    fn faults_changed(&self) -> Result<(), BackendError> {
        self.sync_faults()
    }

    fn down(&self) -> Vec<String> {
        self.stopping.store(true, Ordering::SeqCst);
        lock(&self.running).clear();
        container::remove_cluster(&self.engine, self.dir.path())
    }
}

impl Drop for ContainerBackend {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// Starts `engine events` for the cluster's containers; each `died`
/// event's container id is sent to `tx`.
fn died_events(
    engine: &Containers,
    dir: &StateDir,
    tx: mpsc::Sender<String>,
    events: &dyn Events,
) -> Option<Child> {
    let mut cmd = engine.command();
    cmd.args([
        "events",
        "--format",
        "{{.ID}}",
        "--filter",
        match engine.info.engine {
            container::Engine::Podman => "event=died",
            container::Engine::Docker => "event=die",
        },
        "--filter",
        &format!("label={}={}", container::LABEL_STATE, dir.path().display()),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    crate::qemu::die_with_spawning_thread(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            events.log(&format!("cannot follow the engine's events: {e}"));
            return None;
        }
    };
    let stdout = child.stdout.take()?;
    let _ = std::thread::Builder::new()
        .name("events".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let id = line.trim();
                if !id.is_empty() && tx.send(id.to_owned()).is_err() {
                    break;
                }
            }
        });
    Some(child)
}

/// `doctor`'s check of docker, where its client is installed: the daemon
/// answers, and systemd can run in its containers here.
pub fn docker_check() -> Option<HostCheck> {
    let engine = crate::container::Engine::Docker;
    if !crate::container::on_path(engine.program()) {
        return None;
    }
    Some(match crate::container::detect(Some(engine)) {
        Ok(info) => {
            let macs = if info.engine_sets_macs {
                ""
            } else {
                " (its client is newer than the daemon and cannot set MACs: testbed sets them from the host side)"
            };
            match crate::container::docker_cgroup_problem() {
                None => HostCheck::new(
                    "docker",
                    CheckLevel::Ok,
                    format!("the docker daemon answers (--backend docker){macs}"),
                    None,
                ),
                Some((what, fix)) => HostCheck::new(
                    "docker",
                    CheckLevel::Warn,
                    format!("the docker daemon answers, but {what}"),
                    Some(&format!("{fix} (docs/containers.md)")),
                ),
            }
        }
        Err(e) => HostCheck::new(
            "docker",
            CheckLevel::Warn,
            e.to_string(),
            Some("only for --backend docker: start the daemon (scripts/setup-docker.sh does, as root) and be root or in the `docker` group"),
        ),
    })
}

/// `doctor`'s check of this backend: an engine answers, and enough
/// inotify instances for a few dozen systemd containers.
pub fn host_check() -> HostCheck {
    match crate::container::detect(None) {
        Ok(info) => {
            let instances = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let found = format!(
                "{}{} answers (--backend {}); fs.inotify.max_user_instances = {instances}",
                info.engine,
                if info.rootless { " (rootless)" } else { "" },
                info.engine
            );
            let limits = if info.rootless {
                crate::container::rootless_limits()
            } else {
                Vec::new()
            };
            if !limits.is_empty() {
                let what: Vec<&str> = limits.iter().map(|(w, _)| w.as_str()).collect();
                let fix: Vec<&str> = limits.iter().map(|(_, f)| f.as_str()).collect();
                HostCheck::new(
                    "containers",
                    CheckLevel::Warn,
                    format!("{found}; rootless containers cannot run here: {}", what.join("; ")),
                    Some(&format!("{} (docs/rootless.md)", fix.join("; "))),
                )
            } else if instances < 1024 {
                HostCheck::new(
                    "containers",
                    CheckLevel::Warn,
                    found,
                    Some("a few dozen container nodes exhaust the inotify instances: run scripts/setup-podman.sh (as root it raises the limit)"),
                )
            } else {
                HostCheck::new("containers", CheckLevel::Ok, found, None)
            }
        }
        Err(e) => HostCheck::new(
            "containers",
            CheckLevel::Warn,
            e.to_string(),
            Some("only for --backend podman/docker: run scripts/setup-host.sh (installs podman and runs scripts/setup-podman.sh)"),
        ),
    }
}
