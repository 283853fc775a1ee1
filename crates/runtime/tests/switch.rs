//! The switch with real sockets standing in for VM NICs: learning, flooding,
//! segment isolation, the peer check, and every fault kind.

use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use testbed_runtime::switch::{
    reserve_udp_port, unix_transport, LinkChange, LinkRule, PortSpec, Switch, Transport,
};

/// A fake NIC: a socket bound where the VM would bind.
enum Nic {
    Udp(UdpSocket, String),
    Unix(UnixDatagram, String),
}

impl Nic {
    fn send(&self, frame: &[u8]) {
        match self {
            Nic::Udp(s, to) => s.send_to(frame, to.as_str()).map(|_| ()),
            Nic::Unix(s, to) => s.send_to(frame, to).map(|_| ()),
        }
        .expect("send");
    }

    /// The next frame, or None after `wait`.
    fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        let n = match self {
            Nic::Udp(s, _) => {
                s.set_read_timeout(Some(wait)).expect("timeout");
                s.recv(&mut buf)
            }
            Nic::Unix(s, _) => {
                s.set_read_timeout(Some(wait)).expect("timeout");
                s.recv(&mut buf)
            }
        };
        n.ok().map(|n| buf[..n].to_vec())
    }

    /// Every frame that arrives within `wait`.
    fn drain(&self, wait: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = self.recv(wait) {
            out.push(f);
        }
        out
    }
}

const QUIET: Duration = Duration::from_millis(150);

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0, n]
}

fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(payload);
    f
}

const BROADCAST: [u8; 6] = [0xff; 6];

/// A switch with the given (segment, node) ports over UDP, and their NICs.
fn udp_switch(ports: &[(&str, &str)]) -> (Switch, Vec<Nic>) {
    let mut specs = Vec::new();
    let mut peers = Vec::new();
    for (segment, node) in ports {
        let peer = reserve_udp_port().expect("port");
        let sock = UdpSocket::bind(peer).expect("bind nic");
        peers.push(sock);
        specs.push(PortSpec {
            segment: segment.to_string(),
            node: node.to_string(),
            transport: Transport::Udp {
                bind: "127.0.0.1:0".parse().expect("addr"),
                peer,
            },
        });
    }
    let sw = Switch::start(&specs, 7).expect("start");
    let nics = peers
        .into_iter()
        .zip(sw.ports())
        .map(|(s, p)| Nic::Udp(s, p.switch_addr.clone()))
        .collect();
    (sw, nics)
}

fn unix_switch(dir: &Path, ports: &[(&str, &str)]) -> (Switch, Vec<Nic>) {
    let specs: Vec<PortSpec> = ports
        .iter()
        .map(|(segment, node)| PortSpec {
            segment: segment.to_string(),
            node: node.to_string(),
            transport: unix_transport(dir, node, segment),
        })
        .collect();
    let sw = Switch::start(&specs, 7).expect("start");
    let nics = sw
        .ports()
        .iter()
        .map(|p| {
            Nic::Unix(
                UnixDatagram::bind(&p.peer_addr).expect("bind nic"),
                p.switch_addr.clone(),
            )
        })
        .collect();
    (sw, nics)
}

#[test]
fn learns_floods_and_isolates_segments() {
    let (sw, nics) = udp_switch(&[
        ("lan", "a"),
        ("lan", "b"),
        ("lan", "c"),
        ("data", "a"),
        ("data", "b"),
    ]);
    // A broadcast from a reaches b and c on lan, nothing on data.
    let hello = frame(BROADCAST, mac(1), b"who has");
    nics[0].send(&hello);
    assert_eq!(nics[1].recv(QUIET), Some(hello.clone()));
    assert_eq!(nics[2].recv(QUIET), Some(hello.clone()));
    assert_eq!(nics[3].recv(QUIET), None);
    assert_eq!(nics[4].recv(QUIET), None);

    // b answers a by unicast: a's MAC was learnt, so c does not see it.
    let reply = frame(mac(1), mac(2), b"here");
    nics[1].send(&reply);
    assert_eq!(nics[0].recv(QUIET), Some(reply));
    assert_eq!(nics[2].recv(QUIET), None);

    // Unknown unicast is flooded within the segment only.
    let unknown = frame(mac(99), mac(2), b"?");
    nics[1].send(&unknown);
    assert_eq!(nics[0].recv(QUIET), Some(unknown.clone()));
    assert_eq!(nics[2].recv(QUIET), Some(unknown));
    assert_eq!(nics[4].recv(QUIET), None);

    let stats = sw.stats();
    assert_eq!((stats[0].rx, stats[0].tx), (1, 2));
}

#[test]
fn only_the_expected_peer_can_send() {
    let (sw, nics) = udp_switch(&[("lan", "a"), ("lan", "b")]);
    let intruder = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let Nic::Udp(_, a_switch) = &nics[0] else {
        unreachable!()
    };
    intruder
        .send_to(&frame(BROADCAST, mac(9), b"spoof"), a_switch.as_str())
        .expect("send");
    // Runt frames from the right peer are dropped too.
    nics[0].send(b"short");
    assert_eq!(nics[1].recv(QUIET), None);
    assert_eq!(sw.stats()[0].dropped_invalid, 2);
}

#[test]
fn unix_transport_carries_frames_and_cleans_up() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut sw, nics) = unix_switch(dir.path(), &[("lan", "a"), ("lan", "b")]);
    let f = frame(BROADCAST, mac(1), b"over unix");
    nics[0].send(&f);
    assert_eq!(nics[1].recv(QUIET), Some(f));
    let sw_path = sw.ports()[0].switch_addr.clone();
    assert!(Path::new(&sw_path).exists());
    sw.stop();
    assert!(
        !Path::new(&sw_path).exists(),
        "switch sockets are removed on stop"
    );
}

#[test]
fn block_partition_and_heal() {
    let (sw, nics) = udp_switch(&[("lan", "a"), ("lan", "b"), ("lan", "c"), ("lan", "d")]);
    let ping = |from: usize, tag: &[u8]| {
        nics[from].send(&frame(BROADCAST, mac(from as u8 + 1), tag));
        (0..4)
            .map(|i| {
                if i == from {
                    false
                } else {
                    nics[i].recv(QUIET).is_some()
                }
            })
            .collect::<Vec<bool>>()
    };

    sw.block("b").expect("block");
    assert_eq!(ping(0, b"1"), [false, false, true, true]);
    assert_eq!(ping(1, b"2"), [false, false, false, false]);
    sw.unblock("b").expect("unblock");
    assert_eq!(ping(0, b"3"), [false, true, true, true]);

    sw.partition(&[vec!["a".into(), "b".into()], vec!["c".into()]])
        .expect("partition");
    assert_eq!(ping(0, b"4"), [false, true, false, false]);
    assert_eq!(
        ping(2, b"5"),
        [false, false, false, false],
        "c is alone; d is unlisted, its own group"
    );
    assert_eq!(ping(3, b"6"), [false, false, false, false]);

    sw.heal();
    assert_eq!(ping(2, b"7"), [true, true, false, true]);

    sw.set_link(
        "a",
        "c",
        LinkRule {
            down: true,
            ..LinkRule::default()
        },
    )
    .expect("down");
    assert_eq!(ping(0, b"8"), [false, true, false, true]);
    assert_eq!(
        ping(2, b"9"),
        [false, true, false, true],
        "links are symmetric"
    );
    sw.set_link("a", "c", LinkRule::default()).expect("clear");
    assert_eq!(ping(0, b"10"), [false, true, true, true]);

    let history: Vec<String> = sw.history().into_iter().map(|e| e.change).collect();
    assert_eq!(
        history,
        [
            "block b",
            "unblock b",
            "partition [a,b] [c]",
            "heal",
            "link a-c down",
            "link a-c clear"
        ]
    );
    assert!(sw.stats()[2].dropped_fault >= 3);
}

#[test]
fn rule_validation_names_the_problem() {
    let (sw, _nics) = udp_switch(&[("lan", "a"), ("lan", "b")]);
    let e = sw.block("zz").expect_err("unknown");
    assert_eq!(
        e.to_string(),
        "unknown node \"zz\": it has no port on the switch"
    );
    let e = sw
        .set_link(
            "a",
            "b",
            LinkRule {
                loss: 1.5,
                ..LinkRule::default()
            },
        )
        .expect_err("loss");
    assert_eq!(
        e.to_string(),
        "invalid link rule between a and b: loss is a fraction between 0.0 and 1.0"
    );
    let bad_jitter = LinkRule {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(10),
        ..LinkRule::default()
    };
    assert!(sw.set_link("a", "b", bad_jitter).is_err());
    let e = sw
        .partition(&[vec!["a".into()], vec!["a".into(), "b".into()]])
        .expect_err("dup");
    assert_eq!(
        e.to_string(),
        "node \"a\" is in more than one partition group"
    );
}

#[test]
fn loss_drops_the_given_fraction() {
    let (sw, nics) = udp_switch(&[("lan", "a"), ("lan", "b")]);
    sw.set_link(
        "a",
        "b",
        LinkRule {
            loss: 1.0,
            ..LinkRule::default()
        },
    )
    .expect("loss");
    for i in 0..20u8 {
        nics[0].send(&frame(BROADCAST, mac(1), &[i]));
    }
    assert!(nics[1].drain(QUIET).is_empty());

    sw.set_link(
        "a",
        "b",
        LinkRule {
            loss: 0.5,
            ..LinkRule::default()
        },
    )
    .expect("loss");
    for i in 0..200u8 {
        nics[0].send(&frame(BROADCAST, mac(1), &[i]));
        // Pace the sender so the socket buffers never drop frames themselves.
        if i % 20 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let got = nics[1].drain(QUIET).len();
    // A seeded PRNG: 200 draws at p=0.5 land far from both ends.
    assert!((40..=160).contains(&got), "{got} of 200 frames arrived");
}

#[test]
fn delay_holds_frames_back_and_keeps_order() {
    let (sw, nics) = udp_switch(&[("lan", "a"), ("lan", "b"), ("lan", "c")]);
    let rule = LinkRule {
        delay: Duration::from_millis(200),
        jitter: Duration::from_millis(50),
        ..LinkRule::default()
    };
    sw.set_link("a", "b", rule).expect("delay");
    let start = Instant::now();
    for i in 0..10u8 {
        nics[0].send(&frame(BROADCAST, mac(1), &[i]));
    }
    // c is not delayed: it sees the frames long before b does.
    assert_eq!(nics[2].drain(QUIET).len(), 10);
    let mut got = Vec::new();
    while let Some(f) = nics[1].recv(Duration::from_secs(5)) {
        got.push(f[14]);
        if got.len() == 10 {
            break;
        }
    }
    // Delay is a floor, never a ceiling: frames cannot arrive before
    // delay - jitter. Upper bounds would depend on the machine's load.
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        got,
        (0..10).collect::<Vec<u8>>(),
        "delayed frames keep their order"
    );
}

#[test]
fn rate_limits_throughput() {
    let (sw, nics) = udp_switch(&[("lan", "a"), ("lan", "b")]);
    // 100 frames of 1000 bytes at 1 Mbit/s need at least 0.8 s.
    sw.set_link(
        "a",
        "b",
        LinkRule {
            rate_bps: Some(1_000_000),
            ..LinkRule::default()
        },
    )
    .expect("rate");
    let start = Instant::now();
    for i in 0..100u8 {
        nics[0].send(&frame(BROADCAST, mac(1), &[i; 986]));
        if i % 20 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut n = 0;
    while nics[1].recv(Duration::from_secs(5)).is_some() {
        n += 1;
        if n == 100 {
            break;
        }
    }
    assert_eq!(n, 100);
    assert!(
        start.elapsed() >= Duration::from_millis(790),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn link_changes_add_up_and_clear_starts_over() {
    let (sw, _nics) = udp_switch(&[("lan", "a"), ("lan", "b")]);
    let delay = LinkChange {
        delay_ms: Some(50.0),
        jitter_ms: Some(5.0),
        ..LinkChange::default()
    };
    sw.change_link("a", "b", &delay).expect("delay");
    let loss = LinkChange {
        loss: Some(0.25),
        rate_bps: Some(10_000_000),
        ..LinkChange::default()
    };
    let rule = sw.change_link("b", "a", &loss).expect("loss");
    assert_eq!(rule.delay, Duration::from_millis(50));
    assert_eq!(rule.jitter, Duration::from_millis(5));
    assert_eq!(rule.loss, 0.25);
    assert_eq!(rule.rate_bps, Some(10_000_000));
    assert_eq!(
        sw.link("a", "b"),
        rule,
        "the change is stored for both directions"
    );

    // A shorter delay drops a jitter that no longer fits; rate 0 is no limit.
    let shorter = LinkChange {
        delay_ms: Some(2.0),
        rate_bps: Some(0),
        ..LinkChange::default()
    };
    let rule = sw.change_link("a", "b", &shorter).expect("shorter");
    assert_eq!(rule.jitter, Duration::ZERO);
    assert_eq!(rule.rate_bps, None);
    assert_eq!(rule.loss, 0.25);

    let bad = LinkChange {
        delay_ms: Some(-1.0),
        ..LinkChange::default()
    };
    let e = sw.change_link("a", "b", &bad).unwrap_err();
    assert!(
        e.to_string().contains("delay must be a non-negative"),
        "{e}"
    );
    assert_eq!(sw.link("a", "b"), rule, "a rejected change changes nothing");

    let clear = LinkChange {
        clear: true,
        ..LinkChange::default()
    };
    assert_eq!(
        sw.change_link("a", "b", &clear).expect("clear"),
        LinkRule::default()
    );
    let history: Vec<String> = sw.history().into_iter().map(|e| e.change).collect();
    assert_eq!(history.last().map(String::as_str), Some("link a-b clear"));
}

#[test]
fn the_faults_in_force_survive_a_round_trip_through_a_saved_state() {
    let (sw, _nics) = udp_switch(&[("lan", "a"), ("lan", "b"), ("lan", "c"), ("lan", "d")]);
    sw.partition(&[vec!["a".into(), "b".into()]])
        .expect("partition");
    sw.block("d").expect("block");
    let delay = LinkChange {
        delay_ms: Some(20.0),
        ..LinkChange::default()
    };
    sw.change_link("b", "a", &delay).expect("delay");
    let saved = sw.faults();
    let text = serde_json::to_string(&saved).expect("json");
    assert_eq!(saved.blocked, vec!["d".to_owned()]);
    assert_eq!(
        saved.partition,
        vec![
            vec!["a".to_owned(), "b".to_owned()],
            vec!["c".to_owned(), "d".to_owned()]
        ]
    );

    sw.heal();
    assert!(sw.verdict("a", "c").is_some(), "healed");
    let back = serde_json::from_str(&text).expect("parse");
    sw.set_faults(&back, "restore snapshot s1")
        .expect("restore");
    assert_eq!(sw.faults(), saved);
    assert!(sw.verdict("a", "c").is_none(), "the partition is back");
    assert!(sw.verdict("c", "d").is_none(), "d is blocked again");
    assert_eq!(
        sw.verdict("a", "b").map(|r| r.delay),
        Some(Duration::from_millis(20)),
        "the link rule is back"
    );
    assert_eq!(
        sw.history().last().map(|e| e.change.clone()),
        Some("restore snapshot s1".to_owned())
    );

    // A state naming a node this switch does not know changes nothing.
    let mut stranger = back.clone();
    stranger.blocked.push("zz".into());
    assert!(sw.set_faults(&stranger, "restore").is_err());
    assert_eq!(sw.faults(), saved);
}
