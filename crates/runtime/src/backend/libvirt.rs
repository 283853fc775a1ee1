//! The libvirt backend: one transient domain per node, on one or more
//! libvirt hosts ([`crate::libvirt`] is the host layer: XML, image upload,
//! streams). Each NIC is a UDP tunnel to its port of the switch, which runs
//! here; a watcher thread notices domains that ended by polling.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{lock, Backend, BackendError, Caps, Channel, Events, Opened, Started, Stop};
use super::{CheckLevel, HostCheck};
use crate::libvirt::{self, DomainConfig, HostImage, LibvirtHost, UdpNic};
use crate::spec::{ClusterSpec, NodeSpec};
use crate::state::StateDir;
use crate::switch::{self, PortSpec, Switch};

struct Shared {
    hosts: Vec<LibvirtHost>,
    /// Node → index into `hosts`.
    placement: BTreeMap<String, usize>,
    cluster: String,
    /// Node → the generation of its domain, while it runs.
    running: Mutex<BTreeMap<String, u64>>,
    stopping: AtomicBool,
}

impl Shared {
    fn index_of(&self, node: &str) -> usize {
        self.placement
            .get(node)
            .copied()
            .unwrap_or(0)
            .min(self.hosts.len() - 1)
    }

    fn host_of(&self, node: &str) -> &LibvirtHost {
        &self.hosts[self.index_of(node)]
    }

    fn domain(&self, node: &str) -> String {
        libvirt::domain_name(&self.cluster, node)
    }
}

pub struct LibvirtBackend {
    caps: Caps,
    shared: Arc<Shared>,
    spec: ClusterSpec,
    dir: StateDir,
    /// `(node, network)` → the NIC's UDP tunnel to its switch port.
    nics: BTreeMap<(String, String), UdpNic>,
    /// `(host index, image key)` → where that image's files are there.
    images: Mutex<BTreeMap<(usize, String), HostImage>>,
    /// Identifies this supervisor's run in the domains' metadata.
    run_id: String,
    events: Arc<dyn Events>,
}

/// The addresses a libvirt host on `host` (a name or address; empty for a
/// local URI) and this machine reach each other at: `(ours, theirs)`.
/// Loopback for local and loopback hosts; otherwise the source address of
/// the route towards the host (a UDP `connect`, which sends nothing).
fn addresses_towards(host: &str) -> Result<(IpAddr, IpAddr), String> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if host.is_empty() || host == "localhost" {
        return Ok((loopback, loopback));
    }
    let remote = (host, 9)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve the libvirt host {host}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("the libvirt host {host} has no IPv4 address"))?;
    if remote.ip().is_loopback() {
        return Ok((loopback, remote.ip()));
    }
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    probe
        .connect(remote)
        .map_err(|e| format!("no route to the libvirt host {host}: {e}"))?;
    let local = probe.local_addr().map_err(|e| e.to_string())?.ip();
    Ok((local, remote.ip()))
}

/// Connects to every libvirt host and starts the switch with one UDP port
/// per NIC: on loopback for nodes of a daemon on this machine (or reached
/// over loopback), on all addresses for a remote host, whose domains send
/// to the address this machine has towards it. A port still accepts
/// datagrams from its one peer only.
pub fn open(
    spec: &ClusterSpec,
    dir: &StateDir,
    uris: &[String],
    placement: &BTreeMap<String, usize>,
    events: Arc<dyn Events>,
) -> Result<Opened, BackendError> {
    if uris.is_empty() {
        return Err(BackendError::Failed(
            "the libvirt backend needs at least one host URI".to_owned(),
        ));
    }
    let mut hosts = Vec::new();
    let mut addrs = Vec::new();
    for uri in uris {
        hosts.push(LibvirtHost::connect(uri).map_err(BackendError::failed)?);
        let host = if libvirt::uri_is_remote(uri) {
            libvirt::uri_host(uri)
        } else {
            String::new()
        };
        addrs.push(addresses_towards(&host).map_err(BackendError::Failed)?);
    }
    let mut ports = Vec::new();
    let mut keys = Vec::new();
    for node in &spec.nodes {
        let h = placement
            .get(&node.name)
            .copied()
            .unwrap_or(0)
            .min(uris.len() - 1);
        let (ours, theirs) = addrs[h];
        for nic in &node.nics {
            // QEMU binds its end on the libvirt host; a free port can only
            // be asked for here, which is exact for loopback hosts. On a
            // remote host a collision shows as the domain's bind error,
            // never as misrouting.
            let peer_port = switch::reserve_udp_port()
                .map_err(|e| BackendError::Failed(format!("cannot reserve a UDP port: {e}")))?
                .port();
            let bind_ip = if ours.is_loopback() {
                ours
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            };
            ports.push(PortSpec {
                segment: nic.network.clone(),
                node: node.name.clone(),
                transport: switch::Transport::Udp {
                    bind: SocketAddr::new(bind_ip, 0),
                    peer: SocketAddr::new(theirs, peer_port),
                },
            });
            keys.push((
                node.name.clone(),
                nic.network.clone(),
                nic.mac.clone(),
                ours,
            ));
        }
    }
    let switch = Switch::start(&ports, spec.seed)
        .map_err(|e| BackendError::Failed(format!("cannot start the virtual switch: {e}")))?;
    let mut nics = BTreeMap::new();
    for ((node, network, mac, ours), (info, port)) in
        keys.into_iter().zip(switch.ports().iter().zip(&ports))
    {
        let bound: SocketAddr = info.switch_addr.parse().map_err(|_| {
            BackendError::Failed(format!("unexpected switch port {}", info.switch_addr))
        })?;
        if let switch::Transport::Udp { peer, .. } = &port.transport {
            nics.insert(
                (node, network),
                UdpNic {
                    mac,
                    switch: SocketAddr::new(ours, bound.port()),
                    local: *peer,
                },
            );
        }
    }
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let shared = Arc::new(Shared {
        hosts,
        placement: placement.clone(),
        cluster: spec.cluster.clone(),
        running: Mutex::new(BTreeMap::new()),
        stopping: AtomicBool::new(false),
    });
    watch(&shared, &events)?;
    Ok(Opened {
        backend: Box::new(LibvirtBackend {
            caps: Caps {
                name: "libvirt".to_owned(),
                accel: true,
                freeze: true,
                console: false,
                agent_poll: Duration::from_millis(500),
            },
            shared,
            spec: spec.clone(),
            dir: dir.clone(),
            nics,
            images: Mutex::new(BTreeMap::new()),
            run_id: format!("{started}-{}", std::process::id()),
            events,
        }),
        switch: Arc::new(Mutex::new(switch)),
    })
}

/// Notices domains that ended (a guest's power-off or reboot, a destroy
/// from outside or by [`Stop::Hard`]) by polling once a second.
fn watch(shared: &Arc<Shared>, events: &Arc<dyn Events>) -> Result<(), BackendError> {
    let shared = Arc::clone(shared);
    let events = Arc::clone(events);
    std::thread::Builder::new()
        .name("libvirt-watch".into())
        .spawn(move || {
            while !shared.stopping.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1000));
                let running: Vec<(String, u64)> = lock(&shared.running)
                    .iter()
                    .map(|(n, g)| (n.clone(), *g))
                    .collect();
                for (name, generation) in running {
                    let domain = shared.domain(&name);
                    if let Ok(false) = shared.host_of(&name).is_running(&domain) {
                        let mut running = lock(&shared.running);
                        if running.get(&name) == Some(&generation) {
                            running.remove(&name);
                            drop(running);
                            events.exited(&name, generation, "the domain ended");
                        }
                    }
                }
            }
        })
        .map_err(BackendError::failed)?;
    Ok(())
}

/// Destroys every domain on the hosts `uris` that testbed made for
/// `cluster` from the state directory `dir`; domains of another state
/// directory, or without testbed's metadata, are left alone. One line per
/// action.
pub fn reap(uris: &[String], cluster: &str, dir: &StateDir) -> Vec<String> {
    let mut report = Vec::new();
    let mut hosts = Vec::new();
    for uri in uris {
        match LibvirtHost::connect(uri) {
            Ok(host) => hosts.push(host),
            Err(e) => report.push(e.to_string()),
        }
    }
    report.extend(remove(&hosts, cluster, dir.path()));
    report
}

fn remove(hosts: &[LibvirtHost], cluster: &str, state: &Path) -> Vec<String> {
    let mut report = Vec::new();
    for host in hosts {
        match host.list(cluster) {
            Ok(domains) => {
                for d in domains.iter().filter(|d| d.metadata.state_dir == state) {
                    match host.destroy(&d.name) {
                        Ok(()) => {
                            report.push(format!("destroyed domain {} on {}", d.name, host.uri()))
                        }
                        Err(e) => report.push(e.to_string()),
                    }
                }
            }
            Err(e) => report.push(e.to_string()),
        }
    }
    report
}

impl std::fmt::Debug for LibvirtBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LibvirtBackend({})", self.spec.cluster)
    }
}

impl LibvirtBackend {
    /// Makes the image `key` (its store folder `dir`) present on host `h`
    /// and remembers where. One upload at a time: the lock is held
    /// throughout, so two nodes of a role never upload the same entry.
    fn ensure_image(&self, h: usize, key: &str, dir: &Path) -> Result<HostImage, BackendError> {
        let mut images = lock(&self.images);
        if let Some(image) = images.get(&(h, key.to_owned())) {
            return Ok(image.clone());
        }
        let host = &self.shared.hosts[h];
        let start = Instant::now();
        let image = host.ensure_images(key, dir).map_err(|e| {
            BackendError::Failed(format!("copying image {key} to {}: {e}", host.uri()))
        })?;
        let took = start.elapsed().as_secs_f64();
        if image.uploaded {
            self.events.log(&format!(
                "uploaded image {} to {} in {took:.1}s",
                &key[..key.len().min(12)],
                host.uri(),
            ));
        } else if took >= 1.0 {
            // Another cluster was uploading it (libvirt.md, "One upload
            // at a time, across processes").
            self.events.log(&format!(
                "image {} was being uploaded to {} by another cluster: waited {took:.1}s for it",
                &key[..key.len().min(12)],
                host.uri(),
            ));
        }
        images.insert((h, key.to_owned()), image.clone());
        Ok(image)
    }

    /// The domain of `spec` on its host, in this `up`. Its image is
    /// uploaded here if `prepare` did not (`up --from` skips it).
    fn config(&self, spec: &NodeSpec) -> Result<DomainConfig, BackendError> {
        let name = spec.name.as_str();
        let h = self.shared.index_of(name);
        let image = self.ensure_image(h, &spec.image.key, &spec.image.dir())?;
        let mut nics = Vec::new();
        for nic in &spec.nics {
            let udp = self
                .nics
                .get(&(name.to_owned(), nic.network.clone()))
                .ok_or_else(|| {
                    BackendError::Failed(format!("no switch port for network {}", nic.network))
                })?;
            nics.push(udp.clone());
        }
        Ok(DomainConfig {
            cluster: self.spec.cluster.clone(),
            node: name.to_owned(),
            run_id: self.run_id.clone(),
            state_dir: self.dir.path().to_path_buf(),
            accel: self.spec.accel,
            memory_mib: spec.memory_mib,
            cpus: spec.cpus,
            kernel: image.kernel,
            initramfs: image.initramfs,
            rootfs: image.rootfs,
            cmdline: spec.image.cmdline.clone(),
            nics,
            console_log: self.dir.node(name).console_log(),
            autodestroy: false,
        })
    }

    /// Waits until every guest of `domains` (node, domain) has closed the
    /// agent's port after its host went, as libvirt hears it from QEMU
    /// (the agent closes it for 200 ms after each session): a machine
    /// saved in the middle of a session would not answer the next host.
    fn wait_ports_released(
        &self,
        domains: &[(String, String)],
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let deadline = Instant::now() + timeout;
        let mut waiting: Vec<&(String, String)> = domains.iter().collect();
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for entry in waiting {
                let (node, domain) = entry;
                match self.shared.host_of(node).agent_port_connected(domain) {
                    Ok(Some(false)) => {}
                    Ok(_) => still.push(entry),
                    Err(e) => return Err(BackendError::Failed(format!("{node}: {e}"))),
                }
            }
            waiting = still;
            if waiting.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = waiting.iter().map(|(n, _)| n.as_str()).collect();
                return Err(BackendError::Failed(format!(
                    "the agents of {} did not let their channel go within {timeout:?}",
                    names.join(", ")
                )));
            }
            std::thread::sleep(Duration::from_millis(40));
        }
        Ok(())
    }
}

impl Backend for LibvirtBackend {
    fn caps(&self) -> &Caps {
        &self.caps
    }

    /// Copies the images each host's nodes need into its storage pool
    /// (once per content hash and host; a complete copy is kept for later
    /// runs).
    fn prepare(&self) -> Result<(), BackendError> {
        for node in &self.spec.nodes {
            let h = self.shared.index_of(&node.name);
            self.ensure_image(h, &node.image.key, &node.image.dir())?;
        }
        Ok(())
    }

    /// A fresh transient domain (a leftover of the same name made by
    /// testbed is destroyed first).
    fn start(&self, spec: &NodeSpec, generation: u64) -> Result<Started, BackendError> {
        let name = spec.name.as_str();
        let host = self.shared.host_of(name);
        let config = self.config(spec)?;
        lock(&self.shared.running).remove(name);
        let _ = host.destroy(&config.name());
        host.start(&config).map_err(BackendError::failed)?;
        lock(&self.shared.running).insert(name.to_owned(), generation);
        // The QEMU runs on the libvirt host, possibly another machine: no
        // pid of ours.
        Ok(Started::booted(None))
    }

    /// One consistent cut (`docs/snapshots.md`): the guests let their
    /// agent's port go, every domain is paused, each machine is saved
    /// (an external memory snapshot, side by side), and every domain runs
    /// on. The files are written by the libvirt daemon, so only for
    /// daemons on this machine.
    fn save(&self, nodes: &[String], dir: &Path, quiesce: &dyn Fn()) -> Result<(), BackendError> {
        if let Some(remote) = self.shared.hosts.iter().find(|h| h.is_remote()) {
            return Err(self.unsupported(&format!(
                "save a cluster snapshot with nodes on the remote libvirt host {} (its daemon would write the machines' files there)",
                remote.uri()
            )));
        }
        let domains: Vec<(String, String)> = nodes
            .iter()
            .map(|n| (n.clone(), self.shared.domain(n)))
            .collect();
        quiesce();
        self.wait_ports_released(&domains, Duration::from_secs(30))?;
        let mut paused = Vec::new();
        let mut outcome = Ok(());
        for (node, domain) in &domains {
            match self.shared.host_of(node).suspend(domain) {
                Ok(()) => paused.push((node, domain)),
                Err(e) => {
                    outcome = Err(format!("{node}: cannot pause it: {e}"));
                    break;
                }
            }
        }
        if outcome.is_ok() {
            outcome = super::side_by_side(&domains, |(node, domain)| {
                let file = dir.join(node.as_str());
                self.shared
                    .host_of(node)
                    .save_machine(domain, &file)
                    .map_err(|e| format!("{node}: saving its machine failed: {e}"))
            });
        }
        // Whatever happened, the cluster runs on.
        for (node, domain) in paused {
            if let Err(e) = self.shared.host_of(node).resume(domain) {
                outcome = outcome.and(Err(format!("{node}: cannot let it run again: {e}")));
            }
        }
        outcome.map_err(BackendError::Failed)
    }

    fn resume(
        &self,
        spec: &NodeSpec,
        generation: u64,
        file: &Path,
    ) -> Result<Started, BackendError> {
        let name = spec.name.as_str();
        let host = self.shared.host_of(name);
        let config = self.config(spec)?;
        super::note_in_console(
            &config.console_log,
            &format!("this node was restored here from {}", file.display()),
        );
        let started = Instant::now();
        lock(&self.shared.running).remove(name);
        let _ = host.destroy(&config.name());
        host.restore(&config, file).map_err(|e| {
            BackendError::Failed(format!(
                "its saved machine {} did not load: {e}",
                file.display()
            ))
        })?;
        lock(&self.shared.running).insert(name.to_owned(), generation);
        self.events.log(&format!(
            "{name}: resumed from {} in {:.2}s",
            file.display(),
            started.elapsed().as_secs_f64()
        ));
        Ok(Started::booted(None))
    }
    fn agent(&self, node: &NodeSpec) -> Result<Channel, BackendError> {
        let domain = self.shared.domain(&node.name);
        let channel = self
            .shared
            .host_of(&node.name)
            .open_agent(&domain)
            .map_err(|e| BackendError::NotYet(e.to_string()))?;
        let conn = channel.reader.try_clone().map_err(BackendError::failed)?;
        Ok(Channel {
            reader: Box::new(channel.reader),
            writer: Box::new(channel.writer),
            close: Box::new(move || {
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }),
        })
    }

    fn stop(&self, node: &str, how: Stop) -> Result<(), BackendError> {
        if how == Stop::PowerCut {
            lock(&self.shared.running).remove(node);
        }
        self.shared
            .host_of(node)
            .destroy(&self.shared.domain(node))
            .map_err(BackendError::failed)
    }

    fn freeze(&self, node: &str, frozen: bool) -> Result<(), BackendError> {
        let host = self.shared.host_of(node);
        let domain = self.shared.domain(node);
        let done = if frozen {
            host.suspend(&domain)
        } else {
            host.resume(&domain)
        };
        done.map_err(BackendError::failed)
    }

    fn down(&self) -> Vec<String> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        lock(&self.shared.running).clear();
        remove(&self.shared.hosts, &self.spec.cluster, self.dir.path())
    }
}

impl Drop for LibvirtBackend {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
    }
}

/// `doctor`'s check of this backend: the daemon at `uri` answers.
pub fn host_check(uri: &str) -> HostCheck {
    host_check_named("libvirt", uri)
}

/// `doctor`'s check of `uri`, under the name `name`.
pub fn host_check_named(name: &'static str, uri: &str) -> HostCheck {
    match crate::libvirt::LibvirtHost::connect(uri) {
        Ok(_) => HostCheck::new(
            name,
            CheckLevel::Ok,
            format!("{uri} answers (--backend libvirt)"),
            None,
        ),
        Err(e @ crate::libvirt::LibvirtError::Refused { .. }) => HostCheck::new(
            name,
            CheckLevel::Warn,
            e.to_string(),
            Some("an administrator adds you to the group of the polkit rule (scripts/setup-libvirt.sh --polkit-group GROUP), or use --connect qemu:///session"),
        ),
        Err(e) => HostCheck::new(
            name,
            CheckLevel::Warn,
            format!("{uri}: {e}"),
            Some("only for --backend libvirt: as root run scripts/setup-libvirt.sh; without root see docs/libvirt.md (session mode, or the polkit rule for a group)"),
        ),
    }
}
