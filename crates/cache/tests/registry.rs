//! Store entries pushed to and pulled from a real registry (Debian's
//! `docker-registry`, started by each test on a free loopback port): the
//! pulled entry is the pushed one, byte for byte; a second push sends
//! nothing; a tampered blob, an artifact of another key, a missing tag and
//! an unreachable registry are refused with their reason, and leave nothing
//! in the store.

mod common;

use std::io::Write as _;
use std::path::Path;

use testbed_cache::{CacheError, CacheEvent, Registry, PART};
use testbed_image::manifest::MANIFEST;
use testbed_image::{Manifest, Store};
use testbed_test_support::{free_tcp_port, Registry as TestRegistry};

/// A store with one entry of made-up files: a small kernel, and a root
/// file system of two parts (more than [`PART`] bytes). Its key.
fn store_with_entry(root: &Path, seed: u8) -> (Store, String) {
    let store = Store::open(root).expect("store");
    let inputs = common::inputs(&format!("k{seed}"));
    let tmp = store.temp_dir("test").expect("tmp");
    std::fs::write(tmp.join("kernel"), vec![seed; 1000]).unwrap();
    // Not all alike, so that compression has work to do.
    let mut rootfs = std::fs::File::create(tmp.join("rootfs.erofs")).unwrap();
    let mut x = u32::from(seed) | 1;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..(PART >> 20) + 1 {
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = (x % 7) as u8;
        }
        rootfs.write_all(&block).unwrap();
    }
    drop(rootfs);
    let manifest = Manifest::from_dir(&tmp, inputs).expect("manifest");
    manifest.write(&tmp.join(MANIFEST)).expect("write");
    store.commit(&tmp, &manifest.key).expect("commit");
    (store, manifest.key)
}

fn same_files(a: &Path, b: &Path) {
    for file in ["kernel", "rootfs.erofs", MANIFEST] {
        assert!(
            std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(),
            "{file} differs"
        );
    }
}

/// Nothing of a pull is left in the store: no entry, no `.tmp` folder.
fn nothing_pulled(store: &Store, key: &str) {
    assert!(store.lookup(key).is_none());
    assert!(!store.entry_dir(key).exists());
    let tmp = store.root().join(".tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in .tmp: {left:?}");
}

#[test]
fn an_entry_pushed_and_pulled_into_an_empty_store_is_the_same_and_moves_once() {
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = store_with_entry(&dir.path().join("a"), 1);
    let remote = Registry::open(&format!("{}/team/slurm", registry.address())).unwrap();

    let mut events = Vec::new();
    let pushed = remote
        .push(&store, &key, &mut |e| events.push(e))
        .expect("push");
    // kernel, 2 parts of rootfs.erofs, the manifest.
    assert_eq!((pushed.blobs, pushed.moved), (4, 4), "{pushed:?}");
    assert_eq!(
        pushed.reference,
        format!("{}/team/slurm:{key}", registry.address())
    );
    assert!(
        events.iter().any(|e| matches!(e, CacheEvent::Pushed { file, part: 2, parts: 2, sent: true, .. } if file == "rootfs.erofs")),
        "{events:?}"
    );
    assert!(remote.has(&key).expect("has"));
    assert!(!remote.has(&"0".repeat(64)).expect("has"));
    // The same entry again: every blob is there already.
    let again = remote.push(&store, &key, &mut |_| {}).expect("push again");
    assert_eq!(again.moved, 0);
    assert_eq!(again.digest, pushed.digest, "the artifact is reproducible");

    let empty = Store::open(&dir.path().join("b")).unwrap();
    let pulled = remote.pull(&empty, &key, &mut |_| {}).expect("pull");
    assert_eq!((pulled.blobs, pulled.moved), (4, 4));
    assert_eq!(pulled.digest, pushed.digest);
    assert!(empty.lookup(&key).is_some());
    same_files(&store.entry_dir(&key), &empty.entry_dir(&key));
    // The store has it now: nothing is fetched.
    assert_eq!(remote.pull(&empty, &key, &mut |_| {}).unwrap().moved, 0);
}

#[test]
fn a_tampered_blob_is_refused_and_nothing_reaches_the_store() {
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = store_with_entry(&dir.path().join("a"), 2);
    let remote = Registry::open(&format!("{}/team/slurm", registry.address())).unwrap();
    remote.push(&store, &key, &mut |_| {}).expect("push");
    // Flip one byte in the middle of the biggest blob the registry
    // stores (the first part of rootfs.erofs).
    let blobs: Vec<_> = walk(&registry.blobs())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "data"))
        .collect();
    let biggest = blobs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("blobs")
        .clone();
    let mut bytes = std::fs::read(&biggest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&biggest, bytes).unwrap();

    let empty = Store::open(&dir.path().join("b")).unwrap();
    let err = remote.pull(&empty, &key, &mut |_| {}).unwrap_err();
    assert!(matches!(err, CacheError::Refused { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("nothing was written to the store"),
        "{message}"
    );
    nothing_pulled(&empty, &key);
}

#[test]
fn an_artifact_tagged_with_another_key_is_refused() {
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = store_with_entry(&dir.path().join("a"), 3);
    let repository = format!("{}/team/slurm", registry.address());
    let remote = Registry::open(&repository).unwrap();
    remote.push(&store, &key, &mut |_| {}).expect("push");
    // Someone tags it as another key (a copy of the manifest under a new
    // tag, as `oras tag` or `crane tag` would).
    let other = "f".repeat(64);
    let path = |tag: &str| format!("/v2/team/slurm/manifests/{tag}");
    let accept = "application/vnd.oci.image.manifest.v1+json";
    let body = http(&registry.address(), "GET", &path(&key), accept, &[]);
    http(&registry.address(), "PUT", &path(&other), accept, &body);

    let empty = Store::open(&dir.path().join("b")).unwrap();
    let err = remote.pull(&empty, &other, &mut |_| {}).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("its annotations name key Some(\"{key}\")")),
        "{err}"
    );
    nothing_pulled(&empty, &other);
}

#[test]
fn a_missing_tag_and_an_unreachable_registry_are_errors_naming_them() {
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let empty = Store::open(dir.path()).unwrap();
    let key = "a".repeat(64);
    let remote = Registry::open(&format!("{}/team/slurm", registry.address())).unwrap();
    let err = remote.pull(&empty, &key, &mut |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}/team/slurm:{key} is not in the registry (`testbed store push` puts it there)",
            registry.address()
        )
    );
    nothing_pulled(&empty, &key);

    // Nobody listens on this port.
    let nowhere = format!("127.0.0.1:{}/team/slurm", free_tcp_port());
    let err = Registry::open(&nowhere)
        .unwrap()
        .pull(&empty, &key, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, CacheError::Registry { .. }), "{err}");
    assert!(
        err.to_string().starts_with(&format!("{nowhere}:{key}")),
        "{err}"
    );
    nothing_pulled(&empty, &key);
}

/// One plain HTTP/1.1 request to the registry; the body of its 2xx
/// answer.
fn http(address: &str, method: &str, path: &str, media_type: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAccept: {media_type}\r\nContent-Type: {media_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let status = String::from_utf8_lossy(&answer[..split]).to_string();
    assert!(
        status.starts_with("HTTP/1.1 2"),
        "{method} {path}: {status}"
    );
    answer[split + 4..].to_vec()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
