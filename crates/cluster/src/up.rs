//! `up`: from a checked composition to a cluster whose every node is
//! ready, reported step by step through [`UpEvent`]s.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testbed_image::BuiltImage;
use testbed_runtime::accel::{Accel, Detection};
use testbed_runtime::api::{
    ApiClient, ApiError, ClusterStatus, NodeState, NodeStatus, Reply, Request,
};
use testbed_runtime::backend::Timeouts;
use testbed_runtime::container::EngineInfo;
use testbed_runtime::saved;
use testbed_runtime::spec::{self, BackendSpec, ImageFiles, Options};
use testbed_runtime::state::{self, StateDir};

use crate::backend::{self, BackendOptions};
use crate::images::{self, LockNote, PackageOptions};
use crate::{down, Error, NotReady, Target};

/// How `up` brings a cluster up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpOptions {
    pub backend: BackendOptions,
    /// How long a node may take to boot, instead of the backend's default
    /// (`testbed_runtime::backend::timeouts`).
    pub timeout: Option<Duration>,
    /// Leave a cluster that failed to come up running, and wait for every
    /// node to settle instead of stopping at the first failure.
    pub keep_failed: bool,
    pub packages: PackageOptions,
    /// Start every node from this snapshot of the cluster
    /// (`testbed snapshot save`) instead of booting.
    pub from: Option<String>,
    /// The testbed executable. The supervisor is started as `EXE supervise
    /// STATE_DIR`, the SSH config's ProxyCommand is `EXE forward --file
    /// COMPOSITION NODE 22`, and the guest agent is looked for beside it
    /// (see [`images::agent_binary`]).
    pub exe: PathBuf,
}

impl UpOptions {
    /// The defaults: QEMU, the accelerator detected, the backend's time
    /// limits, packages from wherever the lock allows.
    pub fn new(exe: impl Into<PathBuf>) -> UpOptions {
        UpOptions {
            backend: BackendOptions::default(),
            timeout: None,
            keep_failed: false,
            packages: PackageOptions::default(),
            from: None,
            exe: exe.into(),
        }
    }
}

/// What `up` is doing, in order, delivered on the calling thread. Every
/// line `testbed up` prints (but the final status) is one of these.
#[derive(Debug, Clone, PartialEq)]
pub enum UpEvent {
    /// The cluster already runs with the planned nodes; nothing is done.
    AlreadyUp { cluster: String },
    /// A state directory whose supervisor was gone was torn down first.
    StaleStateRemoved {
        cluster: String,
        /// Leftover processes that were killed, `(what, pid)`.
        killed: Vec<(String, i32)>,
    },
    /// libvirt: a host and the nodes placed on it (in plan order; one
    /// event per host, even without nodes).
    LibvirtHost { uri: String, nodes: Vec<String> },
    /// The container engine that answered.
    ContainerEngine(EngineInfo),
    /// The accelerator was detected (only when not chosen explicitly, and
    /// never for containers), with the reason.
    Accelerator(Detection),
    /// Locking and building start; [`UpEvent::Image`] and
    /// [`UpEvent::Lock`] follow, then [`UpEvent::ImagesReady`] unless the
    /// build fails.
    BuildStarted,
    /// The image builder's progress.
    Image(testbed_image::Event),
    /// Something was done to the lock file.
    Lock(LockNote),
    /// Every role's image is in the store.
    ImagesReady { images: Vec<BuiltImage> },
    /// The supervisor runs and answers on its API socket.
    SupervisorStarted { state_dir: PathBuf },
    /// A node changed state (as the supervisor's `watch` reports it).
    Node(NodeStatus),
    /// Every node is ready.
    Up { cluster: String, nodes: usize },
}

/// Brings `target` up: checks the options, returns the status if the
/// cluster already runs with the planned nodes (an error if with others),
/// tears down the state of an earlier run whose supervisor is gone,
/// chooses the backend and the accelerator, builds the images, writes the
/// spec and SSH config, starts the supervisor and waits until every node
/// is ready. On failure the cluster is taken down unless
/// `options.keep_failed`.
pub fn up(
    target: &Target,
    options: &UpOptions,
    events: &mut dyn FnMut(UpEvent),
) -> Result<ClusterStatus, Error> {
    options.backend.check()?;
    let cluster = target.cluster();
    if let Some(status) = running(&target.dir) {
        if let Some(name) = &options.from {
            return Err(Error::Usage(format!(
                "cluster {cluster} is already running: `testbed snapshot restore {name}` brings it back to that snapshot, or take it down first"
            )));
        }
        let want: Vec<&str> = target.plan.nodes.iter().map(|n| n.name.as_str()).collect();
        let have: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
        if want != have {
            return Err(Error::AlreadyRunning {
                cluster: cluster.to_owned(),
                nodes: have.into_iter().map(str::to_owned).collect(),
            });
        }
        events(UpEvent::AlreadyUp {
            cluster: cluster.to_owned(),
        });
        return Ok(status);
    }
    if target.dir.exists() {
        let report = state::teardown(&target.dir)?;
        events(UpEvent::StaleStateRemoved {
            cluster: cluster.to_owned(),
            killed: report.killed,
        });
    }

    let backend = backend::choose(target, &options.backend, events)?;
    let accel = backend::choose_accel(&backend, options.backend.accel, events);
    let defaults = testbed_runtime::backend::timeouts(&backend, accel);
    let timeouts = Timeouts {
        boot: options.timeout.unwrap_or(defaults.boot),
        ..defaults
    };

    events(UpEvent::BuildStarted);
    let built = build(target, options, events)?;
    let images = images::image_files(&built);
    events(UpEvent::ImagesReady { images: built });

    target.dir.create()?;
    let status = launch(target, &images, backend, accel, timeouts, options).and_then(|()| {
        events(UpEvent::SupervisorStarted {
            state_dir: target.dir.path().to_path_buf(),
        });
        // With keep_failed every node gets its chance, to be inspected;
        // otherwise the first failure ends the wait, since the cluster
        // cannot be ready anyway.
        wait_ready(target, !options.keep_failed, events)
    });
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            if !options.keep_failed {
                down(&target.dir, cluster);
            }
            return Err(e);
        }
    };
    let failed: Vec<NodeStatus> = status
        .nodes
        .iter()
        .filter(|n| n.state != NodeState::Ready)
        .cloned()
        .collect();
    if failed.is_empty() {
        events(UpEvent::Up {
            cluster: status.cluster.clone(),
            nodes: status.nodes.len(),
        });
        return Ok(status);
    }
    let kept = if options.keep_failed {
        Some(target.dir.path().to_path_buf())
    } else {
        down(&target.dir, cluster);
        None
    };
    Err(Error::NotReady(NotReady {
        cluster: cluster.to_owned(),
        nodes: failed,
        kept,
    }))
}

/// Locks and builds on a worker thread (the builder reports from several
/// threads), handing its events to `events` on this one.
fn build(
    target: &Target,
    options: &UpOptions,
    events: &mut dyn FnMut(UpEvent),
) -> Result<Vec<BuiltImage>, Error> {
    let agent = images::agent_binary(&options.exe)?;
    let (tx, rx) = mpsc::channel::<UpEvent>();
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            let notes = tx.clone();
            let progress = move |e: testbed_image::Event| {
                let _ = tx.send(UpEvent::Image(e));
            };
            images::build(
                &target.comp,
                &options.packages,
                &agent,
                &progress,
                &mut |note| {
                    let _ = notes.send(UpEvent::Lock(note));
                },
            )
        });
        // Ends when the worker is done and its senders are gone.
        for event in rx {
            events(event);
        }
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Writes the spec and the SSH config, and starts the supervisor in its
/// own process group; returns once its API socket answers.
fn launch(
    target: &Target,
    images: &std::collections::BTreeMap<String, ImageFiles>,
    backend: BackendSpec,
    accel: Accel,
    timeouts: Timeouts,
    options: &UpOptions,
) -> Result<(), Error> {
    let dir = &target.dir;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Role snapshots are QEMU's (docs/snapshots.md); they live in the store.
    let snapshots = if backend == BackendSpec::Qemu && !options.backend.cold {
        Some(testbed_image::Store::open_default()?.snapshots_dir())
    } else {
        None
    };
    let store = testbed_image::Store::open_default()?;
    let saved_root = saved::cluster_root(store.root(), target.cluster());
    let spec_options = Options {
        backend,
        accel,
        boot_timeout: timeouts.boot,
        activation_timeout: timeouts.activation,
        seed,
        snapshots,
        saved: Some(saved_root.clone()),
    };
    let (spec, ssh) = spec::prepare(
        &target.comp,
        &target.plan,
        images,
        &spec_options,
        dir.path(),
    )?;
    let (spec, ssh) = match &options.from {
        Some(name) => from_snapshot(&saved_root, target.cluster(), name, spec)?,
        None => (spec, ssh),
    };
    spec.write(&dir.spec())?;
    let exe = &options.exe;
    let proxy = vec![
        exe.to_string_lossy().into_owned(),
        "forward".to_owned(),
        "--file".to_owned(),
        spec.composition.to_string_lossy().into_owned(),
        "%n".to_owned(),
        "22".to_owned(),
    ];
    spec::write_ssh(dir, &ssh, &proxy)?;

    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.supervisor_log())
        .map_err(Error::io("cannot create the supervisor log"))?;
    let mut child = Command::new(exe)
        .arg("supervise")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(Error::io("supervisor log"))?)
        .stderr(log)
        // Its own process group: Ctrl-C on `up` must not take the cluster
        // down with it.
        .process_group(0)
        .spawn()
        .map_err(Error::io("cannot start the supervisor"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ApiClient::connect(&dir.api_socket()).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(dir.supervisor_log()).unwrap_or_default();
            return Err(Error::SupervisorExited {
                status,
                log: log.trim_end().to_owned(),
            });
        }
        if Instant::now() > deadline {
            return Err(Error::SupervisorSilent {
                log: dir.supervisor_log(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The spec and SSH keys of a cluster that starts from its snapshot
/// `name`: the saved nodes (the guests hold their keys and secrets) with
/// this run's images, timeouts and folders, once the snapshot is known to
/// fit `fresh` (the plan as it is now: the same nodes, machines, addresses
/// and images, the same backend and accelerator).
fn from_snapshot(
    root: &std::path::Path,
    cluster: &str,
    name: &str,
    fresh: spec::ClusterSpec,
) -> Result<(spec::ClusterSpec, spec::SshMaterial), Error> {
    let snapshot = saved::Saved::open(root, cluster, name)?;
    let old = snapshot.spec()?;
    let unfit = |why: String| {
        Error::Usage(format!(
            "snapshot {name} of cluster {cluster} does not fit the composition any more: {why}; `testbed up` without --from boots it, and `testbed snapshot save {name}` saves it again"
        ))
    };
    if old.backend != fresh.backend {
        return Err(unfit(format!(
            "it was saved on the {} backend, this run uses {}",
            old.backend.name(),
            fresh.backend.name()
        )));
    }
    if old.accel != fresh.accel {
        return Err(unfit(format!(
            "it was saved under {}, this run uses {}",
            old.accel, fresh.accel
        )));
    }
    let names = |s: &spec::ClusterSpec| s.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
    if names(&old) != names(&fresh) {
        return Err(unfit(format!(
            "it has nodes {}, the plan has {}",
            names(&old).join(", "),
            names(&fresh).join(", ")
        )));
    }
    let mut nodes = Vec::new();
    for (was, now) in old.nodes.iter().zip(&fresh.nodes) {
        let why = if was.image.key != now.image.key {
            Some("its role's image changed")
        } else if (was.memory_mib, was.cpus) != (now.memory_mib, now.cpus) {
            Some("its memory or CPUs changed")
        } else if was.nics != now.nics {
            Some("its networks or addresses changed")
        } else if was.activation.services != now.activation.services
            || was.activation.files.len() != now.activation.files.len()
        {
            Some("its services or files changed")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(unfit(format!("node {}: {why}", was.name)));
        }
        nodes.push(spec::NodeSpec {
            image: now.image.clone(),
            ..was.clone()
        });
    }
    let client_private = snapshot.client_key()?;
    let client_public = nodes
        .first()
        .and_then(|n| n.activation.ssh.as_ref())
        .and_then(|ssh| ssh.authorized_keys.first().cloned())
        .unwrap_or_default();
    let host_keys = nodes
        .iter()
        .filter_map(|n| {
            let key = n.activation.ssh.as_ref()?.host_keys.first()?;
            Some((
                n.name.clone(),
                testbed_runtime::keys::KeyPair {
                    private_key: key.private_key.clone(),
                    public_key: key.public_key.clone(),
                },
            ))
        })
        .collect();
    let ssh = spec::SshMaterial {
        client: testbed_runtime::keys::KeyPair {
            private_key: client_private,
            public_key: client_public,
        },
        host_keys,
    };
    let spec = spec::ClusterSpec {
        nodes,
        resume: Some(snapshot.dir.clone()),
        ..fresh
    };
    Ok((spec, ssh))
}

/// Follows the supervisor's `watch` stream, reporting each change, until
/// every node is settled or, with `fail_fast`, one has failed.
fn wait_ready(
    target: &Target,
    fail_fast: bool,
    events: &mut dyn FnMut(UpEvent),
) -> Result<ClusterStatus, Error> {
    let cluster = target.cluster();
    let mut client = connect(cluster, &target.dir).map_err(|e| failed(&target.dir, e))?;
    client
        .send(&Request::Watch)
        .map_err(|e| failed(&target.dir, e.into()))?;
    loop {
        match client.recv().map_err(|e| failed(&target.dir, e.into()))? {
            Reply::Node(node) => {
                let failed = node.state == NodeState::Failed;
                events(UpEvent::Node(node));
                if failed && fail_fast {
                    return status(cluster, &target.dir);
                }
            }
            Reply::Settled(status) => return Ok(status),
            other => return Err(reply_error(other)),
        }
    }
}

/// What ended a connection to the supervisor: its own error from its log
/// when it wrote one (it gave up, e.g. its backend could not start), else
/// `e`.
fn failed(dir: &StateDir, e: Error) -> Error {
    if !matches!(e, Error::Api(_) | Error::NotRunning { .. }) {
        return e;
    }
    // Give an exiting supervisor a moment to finish its last line.
    std::thread::sleep(Duration::from_millis(200));
    let log = fs::read_to_string(dir.supervisor_log()).unwrap_or_default();
    match log.lines().find_map(|l| l.strip_prefix("error: ")) {
        Some(reason) => Error::SupervisorFailed {
            reason: reason.to_owned(),
        },
        None => e,
    }
}

/// The status of the cluster whose state is in `dir`, if its supervisor
/// answers.
pub fn running(dir: &StateDir) -> Option<ClusterStatus> {
    let mut client = ApiClient::connect(&dir.api_socket()).ok()?;
    match client.call(&Request::Status) {
        Ok(Reply::Status(status)) => Some(status),
        _ => None,
    }
}

/// A connection to the supervisor of `cluster`; [`Error::NotRunning`]
/// when none answers.
pub fn connect(cluster: &str, dir: &StateDir) -> Result<ApiClient, Error> {
    ApiClient::connect(&dir.api_socket()).map_err(|e| match e {
        ApiError::NotRunning { .. } => Error::NotRunning {
            cluster: cluster.to_owned(),
        },
        other => Error::Api(other),
    })
}

/// The running cluster's status, from its supervisor.
pub fn status(cluster: &str, dir: &StateDir) -> Result<ClusterStatus, Error> {
    match connect(cluster, dir)?.call(&Request::Status)? {
        Reply::Status(status) => Ok(status),
        other => Err(reply_error(other)),
    }
}

/// A reply that is not the one expected, as an error: the supervisor's
/// own message for an `error` reply.
pub fn reply_error(reply: Reply) -> Error {
    match reply {
        Reply::Error { message, .. } => Error::Supervisor(message),
        other => Error::UnexpectedReply(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::target;
    use crate::BackendKind;

    #[test]
    fn options_are_checked_before_anything_is_done() {
        let (_dir, target) = target("[cluster]\nname = \"u\"\n[roles.a]\n");
        let mut options = UpOptions::new("/nonexistent/testbed");
        options.backend.connect = Some("qemu:///system".into());
        for kind in [BackendKind::Qemu, BackendKind::Podman, BackendKind::Docker] {
            options.backend.kind = kind;
            let mut events = Vec::new();
            let err = up(&target, &options, &mut |e| events.push(e)).expect_err("usage");
            assert!(err.is_usage(), "{err:?}");
            assert_eq!(
                err.to_string(),
                "--connect and --host are for --backend libvirt"
            );
            assert!(events.is_empty(), "{events:?}");
        }
    }
}
