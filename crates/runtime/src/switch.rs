//! The virtual switch: rootless L2 segments between nodes, and the place
//! where link faults are applied.
//!
//! Every NIC of every node is one *port*: a datagram socket owned by the
//! switch, paired with exactly one peer socket owned by the VM (QEMU's
//! `-netdev dgram` over unix sockets, or `-netdev socket,udp=` / libvirt's
//! `<interface type='udp'>` over loopback UDP). Each datagram is one Ethernet
//! frame. Ports are grouped into *segments*, one per composition network; a
//! segment is a learning switch: frames to a known unicast MAC go to its
//! port, everything else is flooded to the segment's other ports. Nothing
//! connects a segment to the host's network, so guests have no route out.
//!
//! Faults are rules between *nodes*, checked for every frame on its way from
//! the ingress port's node to each egress port's node:
//! 1. a blocked node (`block`) neither sends nor receives;
//! 2. a partition puts nodes in groups; frames cross no group boundary;
//! 3. a per-link rule (symmetric, set with `set_link`) can take the link
//!    down, drop a fraction of frames, delay them (with jitter) and limit the
//!    rate. Delayed frames of one link keep their order, as on a real wire.
//!
//! Randomness (loss, jitter) comes from a PRNG seeded at start, so a run is
//! repeatable for the same traffic. Every fault change is kept in a history
//! with its time, for test artifacts.
//!
//! Only the expected peer may send into a port: datagrams from any other
//! source (another local process, say) are dropped and counted.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{UdpSocket, UnixDatagram};
use mio::{Events, Interest, Poll, Token, Waker};
use serde::Serialize;
// The fault table's values are part of the API; they live with it.
pub use testbed_api::fault::{FaultEvent, FaultState, LinkChange, LinkRule, SavedLink};

/// Largest datagram the switch accepts: a jumbo frame with headroom.
const MAX_FRAME: usize = 65_536;
/// The waker's token; ports use their index.
const WAKER: Token = Token(usize::MAX);
/// An Ethernet header: destination MAC, source MAC, ethertype.
const ETH_HEADER: usize = 14;

/// Errors of the switch.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// A socket could not be created or bound.
    #[error("cannot bind switch port for node {node} on network {segment} at {addr}: {source}")]
    Bind {
        /// The node.
        node: String,
        /// The segment.
        segment: String,
        /// What was being bound.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The event loop could not be set up.
    #[error("cannot start the switch: {0}")]
    Start(#[source] io::Error),
    /// A rule names a node that has no port on the switch.
    #[error("unknown node \"{0}\": it has no port on the switch")]
    UnknownNode(String),
    /// A rule's value is out of range.
    #[error("invalid link rule between {a} and {b}: {reason}")]
    InvalidRule {
        /// One end.
        a: String,
        /// The other end.
        b: String,
        /// What is wrong.
        reason: String,
    },
    /// The same node appears in two groups of a partition.
    #[error("node \"{0}\" is in more than one partition group")]
    DuplicateInPartition(String),
}

/// How a port reaches its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Loopback UDP: the switch binds `bind` (port 0 picks one) and talks to
    /// `peer`, which the VM binds.
    Udp {
        /// The switch's address.
        bind: SocketAddr,
        /// The VM's address.
        peer: SocketAddr,
    },
    /// Unix datagram sockets in the cluster's state directory: no port
    /// allocation races, and file permissions keep other users out.
    Unix {
        /// The switch's socket path.
        bind: PathBuf,
        /// The VM's socket path.
        peer: PathBuf,
    },
}

/// One port to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// The segment (composition network) the port belongs to.
    pub segment: String,
    /// The node whose NIC this is.
    pub node: String,
    /// How the NIC is connected.
    pub transport: Transport,
}

/// A created port, as the backend needs it to attach a NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortInfo {
    /// The segment.
    pub segment: String,
    /// The node.
    pub node: String,
    /// Where the switch listens: `127.0.0.1:PORT` or a socket path.
    pub switch_addr: String,
    /// Where the peer must bind.
    pub peer_addr: String,
}

/// Frame counters of one port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortStats {
    /// The segment.
    pub segment: String,
    /// The node.
    pub node: String,
    /// Frames received from the peer.
    pub rx: u64,
    /// Frames sent to the peer.
    pub tx: u64,
    /// Frames not delivered to this port because of a fault.
    pub dropped_fault: u64,
    /// Datagrams from a source other than the peer, or too short to be frames.
    pub dropped_invalid: u64,
}

/// The faults in force.
#[derive(Debug, Default, Clone)]
struct Faults {
    blocked: BTreeSet<String>,
    /// Node → group index; empty when there is no partition.
    groups: HashMap<String, usize>,
    /// Keyed by the ordered pair (smaller name first).
    links: BTreeMap<(String, String), LinkRule>,
}

impl Faults {
    /// Whether a frame from `a` to `b` is cut, and otherwise the link rule.
    fn verdict(&self, a: &str, b: &str) -> Option<LinkRule> {
        if self.blocked.contains(a) || self.blocked.contains(b) {
            return None;
        }
        if !self.groups.is_empty() && self.groups.get(a) != self.groups.get(b) {
            return None;
        }
        let rule = self.links.get(&pair(a, b)).cloned().unwrap_or_default();
        (!rule.down).then_some(rule)
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

#[derive(Debug)]
struct Shared {
    faults: Mutex<Faults>,
    history: Mutex<Vec<FaultEvent>>,
    stats: Mutex<Vec<PortStats>>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these plain values
    // half-updated in a way that matters; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running switch. Dropping it stops the event loop and removes its unix
/// sockets.
#[derive(Debug)]
pub struct Switch {
    shared: Arc<Shared>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    ports: Vec<PortInfo>,
    nodes: BTreeSet<String>,
    unix_paths: Vec<PathBuf>,
}

enum Sock {
    Udp(UdpSocket, SocketAddr),
    Unix(UnixDatagram, PathBuf),
}

struct Port {
    segment: usize,
    node: String,
    sock: Sock,
}

/// Asks the kernel for a free loopback UDP port, for a peer (QEMU, libvirt)
/// that must be told its local port in advance. The port is released before
/// returning, so another process could take it first; the window is tiny and
/// a collision shows up as a bind error in the VM, not as silent misrouting.
pub fn reserve_udp_port() -> io::Result<SocketAddr> {
    let s = StdUdpSocket::bind("127.0.0.1:0")?;
    s.local_addr()
}

impl Switch {
    /// Binds every port and starts the event loop on its own thread.
    /// `seed` makes loss and jitter repeatable.
    pub fn start(specs: &[PortSpec], seed: u64) -> Result<Switch, SwitchError> {
        let poll = Poll::new().map_err(SwitchError::Start)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(SwitchError::Start)?);
        let mut segments: Vec<String> = Vec::new();
        let mut ports = Vec::new();
        let mut infos = Vec::new();
        let mut unix_paths = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let segment = match segments.iter().position(|s| *s == spec.segment) {
                Some(k) => k,
                None => {
                    segments.push(spec.segment.clone());
                    segments.len() - 1
                }
            };
            let bind_err = |addr: String, source: io::Error| SwitchError::Bind {
                node: spec.node.clone(),
                segment: spec.segment.clone(),
                addr,
                source,
            };
            let (mut sock, info_addr, peer_addr) = match &spec.transport {
                Transport::Udp { bind, peer } => {
                    let s = UdpSocket::bind(*bind).map_err(|e| bind_err(bind.to_string(), e))?;
                    let local = s.local_addr().map_err(|e| bind_err(bind.to_string(), e))?;
                    (Sock::Udp(s, *peer), local.to_string(), peer.to_string())
                }
                Transport::Unix { bind, peer } => {
                    // A socket file left by a killed switch would make bind fail.
                    let _ = std::fs::remove_file(bind);
                    let s = UnixDatagram::bind(bind)
                        .map_err(|e| bind_err(bind.display().to_string(), e))?;
                    unix_paths.push(bind.clone());
                    (
                        Sock::Unix(s, peer.clone()),
                        bind.display().to_string(),
                        peer.display().to_string(),
                    )
                }
            };
            let token = Token(i);
            let reg = match &mut sock {
                Sock::Udp(s, _) => poll.registry().register(s, token, Interest::READABLE),
                Sock::Unix(s, _) => poll.registry().register(s, token, Interest::READABLE),
            };
            reg.map_err(SwitchError::Start)?;
            infos.push(PortInfo {
                segment: spec.segment.clone(),
                node: spec.node.clone(),
                switch_addr: info_addr,
                peer_addr,
            });
            ports.push(Port {
                segment,
                node: spec.node.clone(),
                sock,
            });
        }
        let shared = Arc::new(Shared {
            faults: Mutex::new(Faults::default()),
            history: Mutex::new(Vec::new()),
            stats: Mutex::new(
                specs
                    .iter()
                    .map(|s| PortStats {
                        segment: s.segment.clone(),
                        node: s.node.clone(),
                        ..PortStats::default()
                    })
                    .collect(),
            ),
            stop: AtomicBool::new(false),
        });
        let nodes = specs.iter().map(|s| s.node.clone()).collect();
        let mut engine = Engine {
            ports,
            segment_count: segments.len(),
            shared: shared.clone(),
            macs: HashMap::new(),
            queue: BinaryHeap::new(),
            links: HashMap::new(),
            rng: Rng::new(seed),
            seq: 0,
        };
        let thread = std::thread::Builder::new()
            .name("testbed-switch".into())
            .spawn(move || engine.run(poll))
            .map_err(SwitchError::Start)?;
        Ok(Switch {
            shared,
            waker,
            thread: Some(thread),
            ports: infos,
            nodes,
            unix_paths,
        })
    }

    /// A switch that forwards nothing and only keeps the fault table of
    /// `nodes`: for backends whose frames do not pass through this switch
    /// (containers), which apply its [`Switch::verdict`]s themselves, so
    /// faults have one model, one validation and one history everywhere.
    pub fn fault_table(nodes: &[String], seed: u64) -> Result<Switch, SwitchError> {
        let mut switch = Switch::start(&[], seed)?;
        switch.nodes.extend(nodes.iter().cloned());
        Ok(switch)
    }

    /// Whether traffic between `a` and `b` is cut (`None`), and otherwise
    /// the rule of their link.
    pub fn verdict(&self, a: &str, b: &str) -> Option<LinkRule> {
        lock(&self.shared.faults).verdict(a, b)
    }

    /// The ports, in the order they were given.
    pub fn ports(&self) -> &[PortInfo] {
        &self.ports
    }

    fn known(&self, node: &str) -> Result<(), SwitchError> {
        if self.nodes.contains(node) {
            Ok(())
        } else {
            Err(SwitchError::UnknownNode(node.to_string()))
        }
    }

    fn record(&self, change: String) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        lock(&self.shared.history).push(FaultEvent { at, change });
    }

    /// Cuts every link of `node` (its NICs stay attached).
    pub fn block(&self, node: &str) -> Result<(), SwitchError> {
        self.known(node)?;
        lock(&self.shared.faults).blocked.insert(node.to_string());
        self.record(format!("block {node}"));
        Ok(())
    }

    /// Undoes [`Switch::block`].
    pub fn unblock(&self, node: &str) -> Result<(), SwitchError> {
        self.known(node)?;
        lock(&self.shared.faults).blocked.remove(node);
        self.record(format!("unblock {node}"));
        Ok(())
    }

    /// Splits the nodes into groups that cannot reach each other. Nodes not
    /// listed form one more group of their own.
    pub fn partition(&self, groups: &[Vec<String>]) -> Result<(), SwitchError> {
        let mut map = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            for n in g {
                self.known(n)?;
                if map.insert(n.clone(), i).is_some() {
                    return Err(SwitchError::DuplicateInPartition(n.clone()));
                }
            }
        }
        // Unlisted nodes share a group index no listed node has.
        for n in &self.nodes {
            map.entry(n.clone()).or_insert(groups.len());
        }
        lock(&self.shared.faults).groups = map;
        let shown: Vec<String> = groups
            .iter()
            .map(|g| format!("[{}]", g.join(",")))
            .collect();
        self.record(format!("partition {}", shown.join(" ")));
        Ok(())
    }

    /// Removes every fault: partition, blocked nodes and link rules.
    pub fn heal(&self) {
        *lock(&self.shared.faults) = Faults::default();
        self.record("heal".to_string());
        // Frames already delayed still arrive; nothing else to wake for.
    }

    /// Sets the rule of the link between `a` and `b` (both directions);
    /// a default rule removes it.
    pub fn set_link(&self, a: &str, b: &str, rule: LinkRule) -> Result<(), SwitchError> {
        self.known(a)?;
        self.known(b)?;
        let invalid = |reason: &str| SwitchError::InvalidRule {
            a: a.to_string(),
            b: b.to_string(),
            reason: reason.to_string(),
        };
        if a == b {
            return Err(invalid("a link joins two different nodes"));
        }
        if !(0.0..=1.0).contains(&rule.loss) {
            return Err(invalid("loss is a fraction between 0.0 and 1.0"));
        }
        if rule.jitter > rule.delay {
            return Err(invalid("jitter cannot exceed the delay"));
        }
        if rule.rate_bps == Some(0) {
            return Err(invalid(
                "a rate of 0 is a link that is down; use down instead",
            ));
        }
        let mut desc = format!("link {a}-{b}");
        if rule.is_noop() {
            desc.push_str(" clear");
        }
        if rule.down {
            desc.push_str(" down");
        }
        if rule.loss > 0.0 {
            desc.push_str(&format!(" loss={}", rule.loss));
        }
        if !rule.delay.is_zero() {
            desc.push_str(&format!(" delay={:?}", rule.delay));
            if !rule.jitter.is_zero() {
                desc.push_str(&format!(" jitter={:?}", rule.jitter));
            }
        }
        if let Some(r) = rule.rate_bps {
            desc.push_str(&format!(" rate={r}bit/s"));
        }
        {
            let mut f = lock(&self.shared.faults);
            if rule.is_noop() {
                f.links.remove(&pair(a, b));
            } else {
                f.links.insert(pair(a, b), rule);
            }
        }
        self.record(desc);
        Ok(())
    }

    /// Applies `change` to the rule of the link between `a` and `b` and
    /// returns the new rule.
    pub fn change_link(
        &self,
        a: &str,
        b: &str,
        change: &LinkChange,
    ) -> Result<LinkRule, SwitchError> {
        let rule = change
            .apply(&self.link(a, b))
            .map_err(|reason| SwitchError::InvalidRule {
                a: a.to_string(),
                b: b.to_string(),
                reason,
            })?;
        self.set_link(a, b, rule.clone())?;
        Ok(rule)
    }

    /// The rule on the link between `a` and `b`.
    pub fn link(&self, a: &str, b: &str) -> LinkRule {
        lock(&self.shared.faults)
            .links
            .get(&pair(a, b))
            .cloned()
            .unwrap_or_default()
    }

    /// The faults in force, as a cluster snapshot keeps them.
    pub fn faults(&self) -> FaultState {
        let f = lock(&self.shared.faults);
        let mut groups: Vec<(usize, String)> =
            f.groups.iter().map(|(n, g)| (*g, n.clone())).collect();
        groups.sort();
        let mut partition: Vec<Vec<String>> = Vec::new();
        let mut last = None;
        for (g, n) in groups {
            if last != Some(g) {
                partition.push(Vec::new());
                last = Some(g);
            }
            if let Some(group) = partition.last_mut() {
                group.push(n);
            }
        }
        FaultState {
            blocked: f.blocked.iter().cloned().collect(),
            partition,
            links: f
                .links
                .iter()
                .map(|((a, b), rule)| SavedLink {
                    a: a.clone(),
                    b: b.clone(),
                    rule: rule.clone(),
                })
                .collect(),
        }
    }

    /// Puts `state` in force in place of the current faults (a cluster
    /// snapshot's restore); recorded in the history as `why`.
    pub fn set_faults(&self, state: &FaultState, why: &str) -> Result<(), SwitchError> {
        let mut faults = Faults::default();
        for node in &state.blocked {
            self.known(node)?;
            faults.blocked.insert(node.clone());
        }
        for (i, group) in state.partition.iter().enumerate() {
            for node in group {
                self.known(node)?;
                faults.groups.insert(node.clone(), i);
            }
        }
        for link in &state.links {
            self.known(&link.a)?;
            self.known(&link.b)?;
            faults
                .links
                .insert(pair(&link.a, &link.b), link.rule.clone());
        }
        *lock(&self.shared.faults) = faults;
        self.record(why.to_string());
        Ok(())
    }

    /// Every fault change so far.
    pub fn history(&self) -> Vec<FaultEvent> {
        lock(&self.shared.history).clone()
    }

    /// Counters of every port.
    pub fn stats(&self) -> Vec<PortStats> {
        lock(&self.shared.stats).clone()
    }

    /// Stops the event loop and removes the unix sockets.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for p in self.unix_paths.drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// xorshift64*: tiny, seedable, and good enough for dropping frames.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    fn next_f64(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (v >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Per directed link timing state, owned by the event loop.
#[derive(Debug, Default, Clone, Copy)]
struct LinkClock {
    /// When the last delayed frame will be delivered (keeps order).
    last_delivery: Option<Instant>,
    /// When the rate-limited link is free again.
    free_at: Option<Instant>,
}

/// A delayed frame: (due, sequence number for ties, egress port, frame).
type Delayed = (Instant, u64, usize, Vec<u8>);

struct Engine {
    ports: Vec<Port>,
    segment_count: usize,
    shared: Arc<Shared>,
    /// (segment, MAC) → port index.
    macs: HashMap<(usize, [u8; 6]), usize>,
    /// Delayed frames: (due, sequence) → (egress port, frame).
    queue: BinaryHeap<Reverse<Delayed>>,
    links: HashMap<(usize, usize), LinkClock>,
    rng: Rng,
    seq: u64,
}

impl Engine {
    fn run(&mut self, mut poll: Poll) {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; MAX_FRAME];
        debug_assert!(self.segment_count <= self.ports.len());
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let timeout = self
                .queue
                .peek()
                .map(|Reverse((due, ..))| due.saturating_duration_since(Instant::now()));
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return;
                }
            }
            for ev in &events {
                if ev.token() == WAKER {
                    continue;
                }
                self.drain(ev.token().0, &mut buf);
            }
            self.deliver_due();
        }
    }

    /// Reads every pending datagram of a port (mio is edge-triggered).
    fn drain(&mut self, i: usize, buf: &mut [u8]) {
        loop {
            let Some(port) = self.ports.get(i) else {
                return;
            };
            let received = match &port.sock {
                Sock::Udp(s, peer) => s.recv_from(buf).map(|(n, from)| (n, from == *peer)),
                Sock::Unix(s, peer) => s
                    .recv_from(buf)
                    .map(|(n, from)| (n, from.as_pathname() == Some(peer.as_path()))),
            };
            match received {
                Ok((n, true)) if n >= ETH_HEADER => {
                    self.count(i, |s| s.rx += 1);
                    let frame = buf[..n].to_vec();
                    self.forward(i, frame);
                }
                Ok(_) => self.count(i, |s| s.dropped_invalid += 1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ECONNREFUSED and friends from an earlier send: nothing to read.
                Err(_) => return,
            }
        }
    }

    fn count(&self, i: usize, f: impl FnOnce(&mut PortStats)) {
        if let Some(s) = lock(&self.shared.stats).get_mut(i) {
            f(s);
        }
    }

    fn forward(&mut self, from: usize, frame: Vec<u8>) {
        let segment = self.ports[from].segment;
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&frame[0..6]);
        src.copy_from_slice(&frame[6..12]);
        // Learn the sender's MAC unless it is a group address.
        if src[0] & 1 == 0 {
            self.macs.insert((segment, src), from);
        }
        let targets: Vec<usize> = match self.macs.get(&(segment, dst)) {
            Some(&to) if dst[0] & 1 == 0 => {
                if to == from {
                    return;
                }
                vec![to]
            }
            _ => (0..self.ports.len())
                .filter(|&j| j != from && self.ports[j].segment == segment)
                .collect(),
        };
        let faults = lock(&self.shared.faults).clone();
        let now = Instant::now();
        for to in targets {
            let verdict = faults.verdict(&self.ports[from].node, &self.ports[to].node);
            let Some(rule) = verdict else {
                self.count(to, |s| s.dropped_fault += 1);
                continue;
            };
            if rule.loss > 0.0 && self.rng.next_f64() < rule.loss {
                self.count(to, |s| s.dropped_fault += 1);
                continue;
            }
            if rule.delay.is_zero() && rule.rate_bps.is_none() {
                self.send(to, &frame);
                continue;
            }
            let clock = self.links.entry((from, to)).or_default();
            let mut due = now;
            if let Some(rate) = rule.rate_bps {
                let start = clock.free_at.map_or(now, |f| f.max(now));
                let bits = (frame.len() as f64) * 8.0;
                let done = start + Duration::from_secs_f64(bits / rate as f64);
                clock.free_at = Some(done);
                due = done;
            }
            if !rule.delay.is_zero() {
                let jitter = rule.jitter.as_secs_f64() * (2.0 * self.rng.next_f64() - 1.0);
                let delay = (rule.delay.as_secs_f64() + jitter).max(0.0);
                due += Duration::from_secs_f64(delay);
            }
            // Keep the link's order: no frame overtakes an earlier one.
            if let Some(last) = clock.last_delivery {
                due = due.max(last);
            }
            clock.last_delivery = Some(due);
            self.seq += 1;
            self.queue.push(Reverse((due, self.seq, to, frame.clone())));
        }
    }

    fn deliver_due(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((due, ..))) = self.queue.peek() {
            if *due > now {
                break;
            }
            if let Some(Reverse((_, _, to, frame))) = self.queue.pop() {
                self.send(to, &frame);
            }
        }
    }

    fn send(&self, to: usize, frame: &[u8]) {
        let Some(port) = self.ports.get(to) else {
            return;
        };
        let sent = match &port.sock {
            Sock::Udp(s, peer) => s.send_to(frame, *peer),
            Sock::Unix(s, peer) => s.send_to(frame, peer),
        };
        // A peer that is not up yet (VM still starting, or crashed) simply
        // misses the frame, as a NIC with no cable would.
        if sent.is_ok() {
            self.count(to, |s| s.tx += 1);
        }
    }
}

/// Unix socket paths for a node's NIC on a network, inside `dir`: short,
/// because socket paths are limited to 107 bytes.
pub fn unix_transport(dir: &Path, node: &str, segment: &str) -> Transport {
    let (bind, peer) = unix_paths(dir, node, segment);
    Transport::Unix { bind, peer }
}

/// The paths of [`unix_transport`]: `(switch's socket, NIC's socket)`, for
/// the backend that attaches the NIC.
pub fn unix_paths(dir: &Path, node: &str, segment: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("sw-{node}-{segment}.sock")),
        dir.join(format!("nic-{node}-{segment}.sock")),
    )
}
