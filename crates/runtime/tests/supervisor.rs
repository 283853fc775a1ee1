//! The supervisor's state machine against a fake backend
//! (`support/fake.rs`): no VM, no container, milliseconds per test.

#[path = "support/fake.rs"]
mod fake;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fake::{lock, Cluster, Quirk, SETTLE};
use testbed_proto::ExecRequest;
use testbed_runtime::api::{ApiClient, Fault, NodeState, PowerAction, Reply, Request};
use testbed_runtime::spec::ClusterSpec;
use testbed_runtime::switch::LinkChange;

fn activated_hostname(root: &Path, node: &str) -> String {
    std::fs::read_to_string(root.join(node).join("etc/hostname")).unwrap_or_default()
}

#[test]
fn every_node_boots_activates_and_answers() {
    let c = Cluster::ready(&[]);
    let status = c.sup.status();
    assert_eq!(status.backend, "fake");
    assert_eq!(status.accel, "none", "the fake emulates nothing");
    assert!(status.nodes.iter().all(|n| n.state == NodeState::Ready));
    assert_eq!(c.run("b", &["echo", "hi"]), "hi\n");
    // Activation reached the agent: its root prefix holds the identity.
    let guests = c._tmp.path().join("guests");
    assert_eq!(activated_hostname(&guests, "c").trim(), "c");
    for n in ["a", "b", "c"] {
        assert_eq!(c.starts(n), 1);
    }
}

#[test]
fn a_crash_stops_the_node_and_start_boots_a_new_generation() {
    let c = Cluster::ready(&[]);
    c.sup.power("a", PowerAction::Crash).unwrap();
    let st = c.wait("a", NodeState::Stopped);
    assert_eq!(st.message.as_deref(), Some("crashed (power cut)"));
    assert!(c.fake.calls().contains(&"stop a PowerCut".to_owned()));
    // Its agent is gone; the others are untouched.
    let err = c.sup.client("a").unwrap_err();
    assert!(err.message.contains("node a is stopped"), "{err}");
    assert_eq!(c.sup.node("b").unwrap().state, NodeState::Ready);
    // A second crash is refused, a start boots it again.
    let err = c.sup.power("a", PowerAction::Crash).unwrap_err();
    assert!(err.message.contains("not running"), "{err}");
    c.sup.power("a", PowerAction::Start).unwrap();
    c.wait("a", NodeState::Ready);
    assert_eq!(c.starts("a"), 2);
    assert!(c.fake.calls().contains(&"start a 2".to_owned()));
    // A late exit report of the first boot changes nothing.
    c.fake.report_exit("a", 1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
    let err = c.sup.power("a", PowerAction::Start).unwrap_err();
    assert!(err.message.contains("already running"), "{err}");
}

#[test]
fn a_guest_that_halts_by_itself_is_stopped_not_failed() {
    let c = Cluster::ready(&[]);
    c.fake.halt("b");
    let st = c.wait("b", NodeState::Stopped);
    let message = st.message.unwrap_or_default();
    assert!(message.contains("stopped by itself (halted)"), "{message}");
}

#[test]
fn reboot_is_clean_through_the_agent_and_activates_again() {
    let c = Cluster::ready(&[]);
    c.sup.power("c", PowerAction::Reboot).unwrap();
    c.wait("c", NodeState::Ready);
    assert_eq!(c.starts("c"), 2);
    // Clean: the machine ended on its own, never stopped hard.
    assert!(!c.fake.calls().iter().any(|call| call.starts_with("stop c")));
    c.sup.power("c", PowerAction::Shutdown).unwrap();
    let st = c.wait("c", NodeState::Stopped);
    assert_eq!(st.message.as_deref(), Some("shut down"));
}

#[test]
fn a_node_that_ignores_power_off_is_stopped_hard_after_its_grace() {
    // The grace is the boot timeout; 300 ms here.
    let c = Cluster::start(
        &[("b", Quirk::IgnoresPowerOff)],
        true,
        Duration::from_millis(300),
    );
    c.wait("b", NodeState::Ready);
    let start = Instant::now();
    c.sup.power("b", PowerAction::Shutdown).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(c.fake.calls().contains(&"stop b Hard".to_owned()));
    assert_eq!(c.sup.node("b").unwrap().state, NodeState::Stopped);
    assert!(lock(&c.log)
        .iter()
        .any(|l| l.contains("b: no clean poweroff")));
}

#[test]
fn a_node_that_fails_to_start_or_to_answer_fails_alone_with_the_reason() {
    let c = Cluster::start(
        &[("a", Quirk::StartFails), ("b", Quirk::NeverAnswers)],
        true,
        Duration::from_millis(200),
    );
    let a = c.wait("a", NodeState::Failed);
    assert!(a.message.unwrap().contains("no such machine"));
    let b = c.wait("b", NodeState::Failed);
    let message = b.message.unwrap();
    assert!(message.contains("no agent yet"), "{message}");
    c.wait("c", NodeState::Ready);
    // The API's watch settles with the failures in it.
    let mut seen = Vec::new();
    assert!(c.sup.watch(&mut |reply| {
        seen.push(reply);
        true
    }));
    match seen.last() {
        Some(Reply::Settled(status)) => {
            let states: Vec<NodeState> = status.nodes.iter().map(|n| n.state).collect();
            assert_eq!(
                states,
                [NodeState::Failed, NodeState::Failed, NodeState::Ready]
            );
        }
        other => panic!("no settled status: {other:?}"),
    }
}

#[test]
fn down_in_the_middle_of_a_boot_waits_for_it_and_leaves_nothing() {
    let c = Cluster::start(&[("b", Quirk::SlowStart)], true, SETTLE);
    c.wait("a", NodeState::Ready);
    // b's start is under way inside the backend.
    while !c.fake.calls().iter().any(|call| call == "start b 1") {
        std::thread::sleep(Duration::from_millis(1));
    }
    let sup = c.sup.clone();
    let down = std::thread::spawn(move || sup.down());
    std::thread::sleep(Duration::from_millis(50));
    assert!(!down.is_finished(), "down waits for the start under way");
    c.fake.release();
    let report = down.join().unwrap();
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(c.fake.running().is_empty(), "{:?}", c.fake.running());
    assert!(!c.dir.exists());
    let calls = c.fake.calls();
    let down_at = calls.iter().position(|call| call == "down").unwrap();
    assert!(
        !calls[down_at..]
            .iter()
            .any(|call| call.starts_with("start")),
        "{calls:?}"
    );
    // Nothing starts any more.
    let err = c.sup.power("a", PowerAction::Start).unwrap_err();
    assert!(err.message.contains("going down"), "{err}");
    assert!(c
        .sup
        .status()
        .nodes
        .iter()
        .all(|n| n.state == NodeState::Stopped));
}

#[test]
fn a_fault_the_backend_cannot_apply_is_taken_back() {
    let c = Cluster::ready(&[]);
    c.sup
        .fault(Fault::Partition {
            groups: vec![vec!["a".into()], vec!["b".into(), "c".into()]],
        })
        .unwrap();
    c.fake.refuse_faults(true);
    let before = c.sup.history().len();
    let err = c
        .sup
        .fault(Fault::Link {
            a: "a".into(),
            b: "b".into(),
            change: LinkChange {
                delay_ms: Some(50.0),
                ..LinkChange::default()
            },
        })
        .unwrap_err();
    assert!(err.message.contains("cannot delay"), "{err}");
    c.fake.refuse_faults(false);
    // The link's rule is what it was: a second, accepted change starts from
    // no delay.
    let rule = c
        .sup
        .fault(Fault::Link {
            a: "a".into(),
            b: "b".into(),
            change: LinkChange {
                loss: Some(0.5),
                ..LinkChange::default()
            },
        })
        .unwrap()
        .expect("a link change answers with the rule");
    assert_eq!(rule.delay, Duration::ZERO, "{rule:?}");
    assert_eq!(rule.loss, 0.5);
    assert!(c.sup.history().len() > before);
    c.sup.fault(Fault::Heal).unwrap();
}

#[test]
fn pause_where_the_backend_cannot_freeze_is_unsupported_not_failed() {
    let c = Cluster::start(&[], false, SETTLE);
    c.wait("a", NodeState::Ready);
    let err = c.sup.power("a", PowerAction::Pause).unwrap_err();
    assert!(err.unsupported, "{err:?}");
    assert!(
        err.message.contains("the fake backend cannot pause a node"),
        "{err}"
    );
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
    assert!(!c.fake.calls().iter().any(|call| call.starts_with("freeze")));
}

#[test]
fn pause_and_resume_where_it_can() {
    let c = Cluster::ready(&[]);
    c.sup.power("a", PowerAction::Pause).unwrap();
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Paused);
    c.sup.power("a", PowerAction::Resume).unwrap();
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
    let calls = c.fake.calls();
    assert!(calls.contains(&"freeze a true".to_owned()));
    assert!(calls.contains(&"freeze a false".to_owned()));
}

#[test]
fn the_socket_transport_serves_the_same_requests_and_down_returns() {
    let c = Cluster::ready(&[]);
    let socket = c.dir.api_socket();
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let sup = c.sup.clone();
    let server = std::thread::spawn(move || sup.serve(listener));
    let mut client = ApiClient::connect(&socket).unwrap();
    match client.call(&Request::Status).unwrap() {
        Reply::Status(s) => assert_eq!(s.nodes.len(), 3),
        other => panic!("{other:?}"),
    }
    let reply = client
        .call(&Request::Power {
            node: "zz".into(),
            action: PowerAction::Crash,
        })
        .unwrap();
    assert!(
        matches!(&reply, Reply::Error { message, .. } if message.contains("no node zz")),
        "{reply:?}"
    );
    let mut other = ApiClient::connect(&socket).unwrap();
    assert_eq!(other.call(&Request::Down).unwrap(), Reply::Ok);
    // `serve` returns instead of ending the process.
    server.join().unwrap().unwrap();
    assert!(!c.dir.exists());
    assert!(c.fake.running().is_empty());
}

#[test]
fn input_sent_with_an_exec_request_reaches_the_command() {
    // A client writes the request, its whole input and the end of input at
    // once (a short `exec -i` does): the supervisor's reader of the request
    // then holds the input lines already, and the command must get them.
    let c = Cluster::ready(&[]);
    let socket = c.dir.api_socket();
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let sup = c.sup.clone();
    let server = std::thread::spawn(move || sup.serve(listener));
    let mut exec = ExecRequest::argv(["tr", "a-z", "A-Z"]);
    exec.stdin = true;
    let mut burst = Vec::new();
    testbed_runtime::api::write_line(
        &mut burst,
        &Request::Exec {
            node: "a".into(),
            exec,
        },
    )
    .unwrap();
    let input = testbed_runtime::api::Input::Stdin {
        data: b"through stdin\n".to_vec(),
    };
    testbed_runtime::api::write_line(&mut burst, &input).unwrap();
    testbed_runtime::api::write_line(&mut burst, &testbed_runtime::api::Input::Eof).unwrap();
    let mut conn = UnixStream::connect(&socket).unwrap();
    conn.set_read_timeout(Some(SETTLE)).unwrap();
    std::io::Write::write_all(&mut conn, &burst).unwrap();
    let mut replies = std::io::BufReader::new(conn);
    let mut stdout = Vec::new();
    loop {
        let reply: Reply = testbed_runtime::api::read_line(&mut replies)
            .expect("a reply within the bound (the command waited for its input)")
            .expect("a reply before the end");
        match reply {
            Reply::Stdout { data } => stdout.extend(data),
            Reply::Exited { status } => {
                assert_eq!(status.code, Some(0), "{status:?}");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(String::from_utf8_lossy(&stdout), "THROUGH STDIN\n");
    let mut other = ApiClient::connect(&socket).unwrap();
    assert_eq!(other.call(&Request::Down).unwrap(), Reply::Ok);
    server.join().unwrap().unwrap();
}

/// The file a node's "disk" is in the fake (its root's `disk`).
fn disk(c: &Cluster, node: &str) -> PathBuf {
    c._tmp.path().join("guests").join(node).join("disk")
}

#[test]
fn a_saved_cluster_comes_back_with_its_disks_faults_and_stopped_nodes() {
    let c = Cluster::ready(&[]);
    c.fake.allow_saves();
    let write = |node: &str, text: &str| {
        let path = disk(&c, node);
        c.run(
            node,
            &["sh", "-c", &format!("echo {text} > {}", path.display())],
        );
    };
    write("a", "one");
    c.sup
        .fault(Fault::Partition {
            groups: vec![vec!["a".to_owned()], vec!["b".to_owned()]],
        })
        .unwrap();
    c.sup.power("c", PowerAction::Crash).unwrap();
    c.wait("c", NodeState::Stopped);

    let info = c.sup.save("s1").unwrap();
    assert_eq!(info.name, "s1");
    let running: Vec<(&str, bool)> = info
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.running))
        .collect();
    assert_eq!(running, [("a", true), ("b", true), ("c", false)]);
    assert!(c.fake.calls().contains(&"save a,b".to_owned()));
    // Saving changed nothing: the nodes answer at once, clocks were set.
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
    assert_eq!(
        c.run("a", &["cat", &disk(&c, "a").to_string_lossy()]),
        "one\n"
    );
    assert!(c._tmp.path().join("guests/a.clock").exists());
    let folder = c._tmp.path().join("saved/s1");
    let mode = std::fs::metadata(&folder).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077,
        0,
        "it holds secrets"
    );

    // Everything changes...
    write("a", "two");
    c.sup.fault(Fault::Heal).unwrap();
    c.sup.power("c", PowerAction::Start).unwrap();
    c.wait("c", NodeState::Ready);
    let _ = std::fs::remove_file(c._tmp.path().join("guests/b.clock"));

    // ...and comes back.
    let restored = c.sup.restore("s1").unwrap();
    assert_eq!(restored.name, "s1");
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
    assert_eq!(
        c.run("a", &["cat", &disk(&c, "a").to_string_lossy()]),
        "one\n"
    );
    let st = c.sup.node("c").unwrap();
    assert_eq!(st.state, NodeState::Stopped);
    assert!(
        st.message
            .unwrap_or_default()
            .contains("stopped when snapshot s1 was saved"),
        "c stays stopped"
    );
    assert!(c.fake.running().iter().all(|n| n != "c"));
    let switch_says = c.sup.history().last().map(|e| e.change.clone());
    assert_eq!(switch_says.as_deref(), Some("restore snapshot s1"));
    let calls = c.fake.calls();
    assert!(
        calls.iter().any(|call| call.starts_with("resume a ")),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|call| call.starts_with("resume b ")),
        "{calls:?}"
    );
    assert!(c._tmp.path().join("guests/b.clock").exists(), "clock set");
    // The partition is in force again: the fault table says a and b are cut.
    let history: Vec<String> = c.sup.history().into_iter().map(|e| e.change).collect();
    assert!(history.contains(&"heal".to_owned()), "{history:?}");
    // A node may be started again after the restore, as after a crash.
    c.sup.power("c", PowerAction::Start).unwrap();
    c.wait("c", NodeState::Ready);
}

#[test]
fn what_cannot_be_saved_or_restored_is_refused_with_the_reason() {
    let c = Cluster::ready(&[]);
    // The fake cannot save yet: unsupported, and nothing changed.
    let e = c.sup.save("s1").unwrap_err();
    assert!(e.unsupported, "{e:?}");
    assert!(e.message.contains("cannot save a cluster snapshot"), "{e}");
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
    c.run("a", &["true"]);
    assert!(!c._tmp.path().join("saved/s1").exists());

    c.fake.allow_saves();
    // A save that fails before touching the agents leaves them connected.
    lock(&c.fake.state.0).save_fails_early = true;
    let e = c.sup.save("s0").unwrap_err();
    assert!(e.message.contains("cannot reach a node's QMP"), "{e}");
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
    assert!(c.sup.client("a").is_ok(), "a's session was not ended");
    c.run("a", &["true"]);
    let tmp = c._tmp.path().join("saved/.tmp");
    assert_eq!(std::fs::read_dir(&tmp).map(Iterator::count).unwrap_or(0), 0);
    assert!(
        !c._tmp.path().join("saved/s0").exists(),
        "nothing half-written"
    );
    lock(&c.fake.state.0).save_fails_early = false;
    let e = c.sup.save("../x").unwrap_err();
    assert!(e.message.contains("is not a snapshot name"), "{e}");
    let e = c.sup.restore("never").unwrap_err();
    assert!(e.message.contains("has no snapshot never"), "{e}");
    c.sup.power("b", PowerAction::Pause).unwrap();
    let e = c.sup.save("s1").unwrap_err();
    assert!(e.message.contains("b is paused"), "{e}");
    c.sup.power("b", PowerAction::Resume).unwrap();

    // Saved from another `up` (other keys in the guests): refused.
    c.sup.save("s1").unwrap();
    let spec_file = c._tmp.path().join("saved/s1/spec.json");
    let mut spec: ClusterSpec =
        serde_json::from_slice(&std::fs::read(&spec_file).unwrap()).unwrap();
    spec.nodes[0].activation.hosts.push_str("# another up\n");
    std::fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let e = c.sup.restore("s1").unwrap_err();
    assert!(e.message.contains("up --from s1"), "{e}");
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);

    // A truncated machine is found out before any node is touched.
    c.run(
        "a",
        &["sh", "-c", &format!("echo x > {}", disk(&c, "a").display())],
    );
    c.sup.save("s2").unwrap();
    std::fs::write(c._tmp.path().join("saved/s2/machines/a"), "").unwrap();
    let e = c.sup.restore("s2").unwrap_err();
    assert!(e.message.contains("unreadable"), "{e}");
    assert_eq!(c.sup.node("a").unwrap().state, NodeState::Ready);
}
