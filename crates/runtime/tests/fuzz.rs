//! Fuzzing of what the runtime reads from outside its process:
//!
//! - the supervisor's JSON API, served on a unix socket for the fake
//!   backend of `support/fake.rs`: a client sends arbitrary lines, bytes,
//!   lines of several MiB, half messages and well-formed JSON that is no
//!   request, then hangs up. Each line gets the answer it should (an
//!   `invalid request` error ends the connection); another client is served
//!   meanwhile and afterwards; the cluster keeps running (an `exec` on a
//!   node works); no connection thread is left behind. A line over the
//!   API's limit is refused after reading no more than the limit;
//! - files read back from disk: a role snapshot's `meta.json`, a cluster
//!   snapshot's `meta.json` and `spec.json`, a cluster's `spec.json`:
//!   arbitrary bytes, and valid files cut at every length or with bytes
//!   flipped, give a clear error (or, for a lookup, "not found"), never a
//!   panic.
//!
//! Each target records its number of cases in `target/tmp/robustness.txt`;
//! `TESTBED_FUZZ_CASES` runs more (`docs/testing.md`, "Fuzzing").

#[path = "support/fake.rs"]
mod fake;

use std::io::{BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fake::{lock, Cluster, SETTLE};
use proptest::prelude::*;
use serde_json::Value;
use testbed_proto::ExecRequest;
use testbed_runtime::api::{self, ApiClient, NodeState, Reply, Request, SavedNode, SnapshotInfo};
use testbed_runtime::saved::{self, Saved, SavedError};
use testbed_runtime::snapshot::{self, Meta, RoleSnapshot};
use testbed_runtime::spec::{ClusterSpec, SpecError};
use testbed_test_support::{flip_bytes, replace_file, Fuzz};

const TMP: &str = env!("CARGO_TARGET_TMPDIR");

/// The API's tests count the supervisor's connection threads, which are
/// the process's: one such test at a time.
static API: Mutex<()> = Mutex::new(());

/// A cluster on the fake backend whose supervisor serves its API socket.
struct Served {
    cluster: Cluster,
    socket: PathBuf,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Served {
    fn start() -> Served {
        let cluster = Cluster::ready(&[]);
        let socket = cluster.dir.api_socket();
        let listener = UnixListener::bind(&socket).unwrap();
        let sup = cluster.sup.clone();
        let server = std::thread::spawn(move || sup.serve(listener));
        Served {
            cluster,
            socket,
            server: Some(server),
        }
    }

    fn client(&self) -> ApiClient {
        let client = ApiClient::connect(&self.socket).unwrap();
        client.set_read_timeout(Some(SETTLE)).unwrap();
        client
    }

    /// Whether `status` answers with every node ready.
    fn all_ready(&self) -> bool {
        match self.client().call(&Request::Status) {
            Ok(Reply::Status(s)) => {
                s.nodes.len() == 3 && s.nodes.iter().all(|n| n.state == NodeState::Ready)
            }
            _ => false,
        }
    }

    /// Runs `echo` on `node` through the API; its output.
    fn echo(&self, node: &str) -> String {
        let mut client = self.client();
        client
            .send(&Request::Exec {
                node: node.to_owned(),
                exec: ExecRequest::argv(["echo", "still here"]),
            })
            .unwrap();
        let mut out = Vec::new();
        loop {
            match client.recv().unwrap() {
                Reply::Stdout { data } => out.extend(data),
                Reply::Stderr { .. } => {}
                Reply::Exited { status } => {
                    assert_eq!(status.code, Some(0), "{status:?}");
                    return String::from_utf8_lossy(&out).into_owned();
                }
                other => panic!("exec on {node}: {other:?}"),
            }
        }
    }

    /// Takes the cluster down through the API; `serve` returns.
    fn down(mut self) {
        assert_eq!(self.client().call(&Request::Down).unwrap(), Reply::Ok);
        if let Some(server) = self.server.take() {
            server.join().unwrap().unwrap();
        }
        assert!(self.cluster.fake.running().is_empty());
    }
}

/// The supervisor's connection threads (named `api`) in this process.
fn api_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "api")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Whether every connection thread ends within [`SETTLE`]; polled often,
/// as they end within a millisecond of their client.
fn no_api_threads() -> bool {
    let deadline = Instant::now() + SETTLE;
    while api_threads() > 0 {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// What a hostile client sends, piece by piece.
#[derive(Debug, Clone)]
enum Chunk {
    /// Arbitrary bytes and a newline.
    Line(Vec<u8>),
    /// Arbitrary bytes, newlines or not.
    Bytes(Vec<u8>),
    /// Well-formed JSON that is no request the supervisor knows, mostly,
    /// and a newline.
    Json(String),
    /// The start of a real request, without its end or newline.
    Half(String),
    /// A request answered without changing anything.
    Status,
    /// MiBs of one byte without a newline. (Not whitespace, which takes
    /// serde_json, unoptimized, a tenth of a second per MiB to skip.)
    Huge { filler: u8, mib: usize },
}

impl Chunk {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Chunk::Line(b) => [&b[..], b"\n"].concat(),
            Chunk::Bytes(b) => b.clone(),
            Chunk::Json(text) => format!("{text}\n").into_bytes(),
            Chunk::Half(text) => text.as_bytes().to_vec(),
            Chunk::Status => b"{\"op\":\"status\"}\n".to_vec(),
            Chunk::Huge { filler, mib } => vec![*filler; mib << 20],
        }
    }
}

const OPS: &[&str] = &[
    "status", "watch", "exec", "put", "get", "forward", "power", "wait", "fault", "history",
    "snapshot", "restore", "down", "fly", "", "STATUS",
];

const KEYS: &[&str] = &[
    "op",
    "node",
    "exec",
    "command",
    "argv",
    "path",
    "mode",
    "data",
    "port",
    "action",
    "fault",
    "groups",
    "name",
    "timeout_ms",
    "for",
    "unit",
    "input",
];

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(OPS).prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..4).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

/// JSON shaped like a request: an `op`, known or not, and fields of any
/// type; or any JSON at all.
fn wrong_json() -> impl Strategy<Value = String> {
    prop_oneof![
        json().prop_map(|v| v.to_string()),
        (
            prop::sample::select(OPS),
            prop::collection::btree_map(prop::sample::select(KEYS), json(), 0..4)
        )
            .prop_map(|(op, fields)| {
                let mut object: serde_json::Map<String, Value> =
                    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                object.insert("op".to_owned(), op.into());
                Value::Object(object).to_string()
            }),
    ]
}

/// Real requests, of which a hostile client sends the start.
fn requests() -> Vec<String> {
    [
        Request::Status,
        Request::Down,
        Request::Exec {
            node: "a".into(),
            exec: ExecRequest::argv(["true"]),
        },
        Request::Power {
            node: "b".into(),
            action: api::PowerAction::Crash,
        },
        Request::Put {
            node: "c".into(),
            path: "/tmp/x".into(),
            mode: 0o644,
            owner: None,
            data: b"data".to_vec(),
        },
    ]
    .iter()
    .map(|r| serde_json::to_string(r).unwrap())
    .collect()
}

fn chunk() -> impl Strategy<Value = Chunk> {
    let half = (
        prop::sample::select(requests()),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(text, cut)| {
            let cut = cut.index(text.len());
            Chunk::Half(text[..cut].to_owned())
        });
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Chunk::Line),
        2 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Chunk::Bytes),
        4 => wrong_json().prop_map(Chunk::Json),
        2 => half,
        2 => Just(Chunk::Status),
        1 => (
            prop::sample::select(&b"x[{\"0\xff"[..]),
            1usize..=4
        )
            .prop_map(|(filler, mib)| Chunk::Huge { filler, mib }),
    ]
}

/// Everything a client sends.
fn stream(chunks: &[Chunk]) -> Vec<u8> {
    chunks.iter().map(Chunk::bytes).collect::<Vec<_>>().concat()
}

/// The kinds of the replies to `stream` if the supervisor reads it all,
/// line by line: up to the first line that is no request, answered with an
/// error after which it hangs up. `None` if a line is a request that would
/// change the cluster: those are not sent.
fn expected(stream: &[u8]) -> Option<Vec<&'static str>> {
    let mut kinds = Vec::new();
    for line in stream.split_inclusive(|b| *b == b'\n') {
        match serde_json::from_slice::<Request>(line) {
            Ok(Request::Status) => kinds.push("status"),
            Ok(Request::History) => kinds.push("history"),
            Ok(_) => return None,
            Err(_) => {
                kinds.push("error");
                break;
            }
        }
    }
    Some(kinds)
}

fn kind(reply: &Reply) -> &'static str {
    match reply {
        Reply::Status(_) => "status",
        Reply::History { .. } => "history",
        Reply::Error { .. } => "error",
        _ => "other",
    }
}

/// A client that sends `chunks`, checks that another client is served
/// meanwhile, and hangs up: at once (`abrupt`), or after its end of
/// input and every reply, which it returns.
fn hostile(served: &Served, chunks: &[Chunk], abrupt: bool) -> Option<Vec<Reply>> {
    let mut conn = UnixStream::connect(&served.socket).unwrap();
    conn.set_read_timeout(Some(SETTLE)).unwrap();
    conn.set_write_timeout(Some(SETTLE)).unwrap();
    let reader = (!abrupt).then(|| {
        let mut replies = BufReader::new(conn.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut all = Vec::new();
            while let Ok(Some(reply)) = api::read_line::<_, Reply>(&mut replies) {
                all.push(reply);
            }
            all
        })
    });
    for chunk in chunks {
        // The supervisor hangs up at the first bad line, maybe before the
        // rest is written.
        if conn.write_all(&chunk.bytes()).is_err() {
            break;
        }
    }
    assert!(served.all_ready(), "another client, meanwhile");
    if abrupt {
        drop(conn);
        return None;
    }
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let replies = reader.map(|r| r.join().unwrap());
    drop(conn);
    replies
}

#[test]
fn the_api_survives_hostile_clients_and_the_cluster_keeps_running() {
    let _one = lock(&API);
    let served = Served::start();
    let fuzz = Fuzz::new(TMP, "supervisor API (hostile clients)");
    let case = (
        prop::collection::vec(chunk(), 1..5),
        any::<bool>(),
        prop::sample::select(&["a", "b", "c"][..]),
    )
        .prop_filter("a request that changes the cluster", |(chunks, _, _)| {
            expected(&stream(chunks)).is_some()
        });
    proptest!(ProptestConfig::with_cases(fuzz.cases(512)), |((chunks, abrupt, node) in case)| {
        fuzz.case();
        let want = expected(&stream(&chunks)).expect("filtered");
        if let Some(replies) = hostile(&served, &chunks, abrupt) {
            let got: Vec<&str> = replies.iter().map(kind).collect();
            prop_assert_eq!(got, want);
            if let Some(Reply::Error { message, .. }) = replies.last() {
                prop_assert!(message.starts_with("invalid request: "), "{}", message);
                prop_assert!(message.len() < 1000, "{}", message);
            }
        }
        prop_assert_eq!(served.echo(node), "still here\n");
        prop_assert!(served.all_ready());
        prop_assert!(no_api_threads(), "{} connection threads left", api_threads());
    });
    served.down();
}

#[test]
fn a_line_over_the_limit_is_refused_after_reading_no_more_than_the_limit() {
    let _one = lock(&API);
    let served = Served::start();
    let mut conn = UnixStream::connect(&served.socket).unwrap();
    conn.set_read_timeout(Some(SETTLE)).unwrap();
    conn.set_write_timeout(Some(SETTLE)).unwrap();
    let mut replies = BufReader::new(conn.try_clone().unwrap());
    let reader = std::thread::spawn(move || api::read_line::<_, Reply>(&mut replies));
    // An endless line: written until the supervisor hangs up.
    let mib = vec![b'x'; 1 << 20];
    let mut sent = 0;
    while sent < 4 * api::MAX_LINE {
        match conn.write(&mib) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    // What it read and what the socket's buffers held.
    assert!(sent <= api::MAX_LINE + (8 << 20), "{sent} bytes taken");
    match reader.join().unwrap() {
        Ok(Some(Reply::Error { message, .. })) => assert_eq!(
            message,
            "a message line is longer than the API's limit of 256 MiB"
        ),
        other => panic!("{other:?}"),
    }
    drop(conn);
    assert!(served.all_ready());
    assert_eq!(served.echo("a"), "still here\n");

    // A file larger than one reply carries is refused, not sent.
    let big = served.cluster._tmp.path().join("big");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(api::MAX_FILE as u64 + 1))
        .unwrap();
    let reply = served
        .client()
        .call(&Request::Get {
            node: "a".into(),
            path: big.to_string_lossy().into_owned(),
        })
        .unwrap();
    match reply {
        Reply::Error { message, .. } => {
            assert!(message.contains("is larger than 191 MiB"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        no_api_threads(),
        "{} connection threads left",
        api_threads()
    );
    served.down();
}

/// How a valid file is damaged.
fn damage(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec((any::<usize>(), 1u8..), 1..8)
            .prop_map(move |flips| flip_bytes(&valid, &flips)),
        prop::collection::vec(any::<u8>(), 0..2048),
    ]
}

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn role_meta(memory_mib: u64, macs: Vec<String>) -> Meta {
    Meta {
        format: snapshot::FORMAT,
        key: KEY.to_owned(),
        image: KEY.to_owned(),
        qemu: "QEMU emulator version 7.2.0".to_owned(),
        accel: "tcg".to_owned(),
        memory_mib,
        cpus: 1,
        nics: macs.len(),
        macs,
        created_unix: 1,
        made_in_ms: 2,
    }
}

#[test]
fn a_role_snapshot_description_of_any_bytes_is_found_or_not_never_a_panic() {
    let fuzz = Fuzz::new(TMP, "role snapshot meta.json");
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(KEY);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::File::create(dir.join(snapshot::RAM_FILE))
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    std::fs::write(dir.join(snapshot::STATE_FILE), b"state").unwrap();
    let meta_file = dir.join(snapshot::META_FILE);
    let valid =
        serde_json::to_vec_pretty(&role_meta(1, vec![snapshot::placeholder_mac(0)])).unwrap();
    std::fs::write(&meta_file, &valid).unwrap();
    assert!(RoleSnapshot::find(root.path(), KEY).is_some());
    for len in 0..valid.len() {
        fuzz.case();
        replace_file(&meta_file, &valid[..len]).unwrap();
        assert!(
            RoleSnapshot::find(root.path(), KEY).is_none(),
            "cut at {len}"
        );
    }
    let any_meta = (any::<u64>(), prop::collection::vec(".{0,20}", 0..3))
        .prop_map(|(memory, macs)| serde_json::to_vec(&role_meta(memory, macs)).unwrap());
    proptest!(
        ProptestConfig::with_cases(fuzz.cases(1024)),
        |(bytes in prop_oneof![damage(valid.clone()), any_meta])| {
            fuzz.case();
            replace_file(&meta_file, &bytes).unwrap();
            if let Some(found) = RoleSnapshot::find(root.path(), KEY) {
                // Only a description of this key and RAM size is complete.
                prop_assert_eq!(found.meta.key.as_str(), KEY);
                prop_assert_eq!(found.meta.memory_mib, 1);
            }
        }
    );
}

/// A cluster snapshot `s1` of the fake's cluster under `root`: node `a`
/// saved (3 bytes), `b` stopped.
fn saved_snapshot(root: &Path) -> Saved {
    let writing = saved::Writing::begin(root, "s1").unwrap();
    std::fs::write(writing.machines().join("a"), b"ram").unwrap();
    let node = |name: &str, running: bool| SavedNode {
        name: name.to_owned(),
        role: "r".to_owned(),
        running,
        bytes: if running { 3 } else { 0 },
    };
    let info = SnapshotInfo {
        name: "s1".to_owned(),
        cluster: "fake".to_owned(),
        composition: root.join("testbed.toml"),
        backend: "fake".to_owned(),
        created_unix: 1,
        took_ms: 2,
        nodes: vec![node("a", true), node("b", false)],
        faults: Default::default(),
        path: PathBuf::new(),
    };
    let spec = fake::spec(root, SETTLE);
    writing.commit(&spec, "the client key", &info).unwrap()
}

/// Whether `e` is the clear error of a damaged snapshot `s1`.
fn corrupt(e: &SavedError) -> bool {
    matches!(e, SavedError::Corrupt { .. })
        && e.to_string()
            .starts_with("snapshot s1 of cluster fake is unreadable: ")
}

#[test]
fn a_damaged_cluster_snapshot_description_is_a_clear_error() {
    let fuzz = Fuzz::new(TMP, "cluster snapshot meta.json");
    let root = tempfile::tempdir().unwrap();
    let good = saved_snapshot(root.path());
    assert_eq!(Saved::open(root.path(), "fake", "s1").unwrap(), good);
    let meta_file = good.dir.join(saved::META_FILE);
    let valid = std::fs::read(&meta_file).unwrap();
    for len in 0..valid.len() {
        fuzz.case();
        replace_file(&meta_file, &valid[..len]).unwrap();
        let e = Saved::open(root.path(), "fake", "s1").unwrap_err();
        assert!(corrupt(&e), "cut at {len}: {e}");
    }
    proptest!(
        ProptestConfig::with_cases(fuzz.cases(1024)),
        |(bytes in damage(valid.clone()))| {
            fuzz.case();
            replace_file(&meta_file, &bytes).unwrap();
            if let Err(e) = Saved::open(root.path(), "fake", "s1") {
                prop_assert!(corrupt(&e), "{}", e);
            }
            let _ = Saved::list(root.path(), "fake");
        }
    );
}

#[test]
fn a_damaged_cluster_spec_is_a_clear_error() {
    // The same file in two places: a cluster's state folder, where `down`
    // and every verb read it, and a cluster snapshot, which `restore` and
    // `up --from` read.
    let fuzz = Fuzz::new(TMP, "cluster spec.json");
    let root = tempfile::tempdir().unwrap();
    let good = saved_snapshot(root.path());
    let in_snapshot = good.dir.join(saved::SPEC_FILE);
    let in_state = root.path().join("spec.json");
    let spec = fake::spec(root.path(), SETTLE);
    spec.write(&in_state).unwrap();
    assert_eq!(good.spec().unwrap(), spec);
    assert_eq!(ClusterSpec::read(&in_state).unwrap(), spec);
    let valid = std::fs::read(&in_state).unwrap();
    // Whether it reads; an error must name the file (the snapshot's, say
    // which snapshot).
    let check = |bytes: &[u8]| -> Result<bool, String> {
        replace_file(&in_state, bytes).unwrap();
        replace_file(&in_snapshot, bytes).unwrap();
        if let Err(e) = good.spec() {
            if !corrupt(&e) {
                return Err(format!("not a corrupt snapshot: {e}"));
            }
        }
        match ClusterSpec::read(&in_state) {
            Err(SpecError::Read { path, .. }) if path == in_state => Ok(false),
            Err(e) => Err(format!("not a read error: {e}")),
            Ok(_) => Ok(true),
        }
    };
    for len in 0..valid.len() {
        fuzz.case();
        assert_eq!(check(&valid[..len]), Ok(false), "cut at {len}");
    }
    proptest!(
        ProptestConfig::with_cases(fuzz.cases(1024)),
        |(bytes in damage(valid.clone()))| {
            fuzz.case();
            let result = check(&bytes);
            prop_assert!(result.is_ok(), "{:?}", result);
        }
    );
}
