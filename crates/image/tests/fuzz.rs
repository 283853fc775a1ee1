//! Files the image builder reads back from disk, damaged: the lock file
//! (which may come from someone else's repository), a store entry's
//! `manifest.json`, and the store's records of lock files (`.refs/`). Valid
//! files cut at every length, with bytes flipped, or replaced by arbitrary
//! bytes give a clear error naming the file (or, for a store lookup, "not
//! found"), never a panic; a lock file that reads is written back to the
//! same lock.
//!
//! Each target records its number of cases in `target/tmp/robustness.txt`;
//! `TESTBED_FUZZ_CASES` runs more (`docs/testing.md`, "Fuzzing").

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use testbed_image::lock::{LockedPackage, RoleLock, LOCK_VERSION};
use testbed_image::manifest::{FileInput, KeyInputs, OutputInfo, BUILDER, MANIFEST};
use testbed_image::{ImageError, Lockfile, Manifest, Store};
use testbed_test_support::{flip_bytes, replace_file, Fuzz};

const TMP: &str = env!("CARGO_TARGET_TMPDIR");

/// How a valid file is damaged.
fn damage(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec((any::<usize>(), 1u8..), 1..8)
            .prop_map(move |flips| flip_bytes(&valid, &flips)),
        prop::collection::vec(any::<u8>(), 0..2048),
    ]
}

fn package(name: &str, version: &str) -> LockedPackage {
    LockedPackage {
        name: name.to_owned(),
        version: version.to_owned(),
        arch: "amd64".to_owned(),
        sha256: "0123456789abcdef".repeat(4),
    }
}

/// Two roles, one with every optional field and one with none it may
/// leave out; kept small, as each of its lengths is parsed (a few
/// milliseconds each, unoptimized).
fn valid_lock() -> Lockfile {
    let ctl = RoleLock {
        vendor: "debian".to_owned(),
        suite: "bookworm".to_owned(),
        mirror: Some("http://deb.debian.org/debian".to_owned()),
        architecture: "amd64".to_owned(),
        kernel: "linux-image-cloud-amd64".to_owned(),
        requested: vec!["munge".to_owned()],
        source_date_epoch: 1_700_000_000,
        snapshot: Some("20231114T221320Z".to_owned()),
        archives: vec!["debian bookworm main".to_owned()],
        packages: vec![
            package("munge", "0.5.15-2"),
            package("slurmd", "1:22.05+b1"),
        ],
    };
    let compute = RoleLock {
        mirror: None,
        requested: vec![],
        archives: vec![],
        packages: vec![],
        ..ctl.clone()
    };
    Lockfile {
        version: LOCK_VERSION,
        roles: BTreeMap::from([("ctl".to_owned(), ctl), ("compute.x".to_owned(), compute)]),
    }
}

/// Reads `bytes` as the lock file `path`: an error names the file; a lock
/// that reads is written back to the same lock.
fn read_lock(path: &Path, bytes: &[u8]) -> Result<Option<Lockfile>, String> {
    replace_file(path, bytes).unwrap();
    match Lockfile::read(path) {
        Ok(lock) => {
            let again = Lockfile::parse(&lock.to_toml(), path)
                .map_err(|e| format!("written back, it does not read: {e}"))?;
            if again != lock {
                return Err(format!("written back, it reads as {again:?}"));
            }
            let _ = lock.changes_from(&valid_lock());
            Ok(Some(lock))
        }
        Err(e @ (ImageError::BadLock { .. } | ImageError::Io { .. })) => {
            let message = e.to_string();
            if message.contains(&path.display().to_string()) {
                Ok(None)
            } else {
                Err(format!("the error does not name the file: {message}"))
            }
        }
        Err(e) => Err(format!("not a lock file error: {e}")),
    }
}

#[test]
fn a_damaged_lock_file_is_a_clear_error() {
    let fuzz = Fuzz::new(TMP, "lock file");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("testbed.lock");
    let valid = valid_lock().to_toml().into_bytes();
    assert_eq!(
        read_lock(&path, &valid).unwrap(),
        Some(valid_lock()),
        "the valid lock reads"
    );
    for len in 0..valid.len() {
        fuzz.case();
        read_lock(&path, &valid[..len]).unwrap_or_else(|e| panic!("cut at {len}: {e}"));
    }
    // Text that is TOML, mostly: lines of the valid lock, shuffled, some
    // changed.
    let lines: Vec<String> = String::from_utf8(valid.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let shuffled = prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(lines),
            1 => ".{0,40}",
        ],
        0..40,
    )
    .prop_map(|lines| lines.join("\n").into_bytes());
    proptest!(
        ProptestConfig::with_cases(fuzz.cases(1024)),
        |(bytes in prop_oneof![damage(valid.clone()), shuffled])| {
            fuzz.case();
            let result = read_lock(&path, &bytes);
            prop_assert!(result.is_ok(), "{:?}", result);
        }
    );
}

fn valid_manifest() -> Manifest {
    let inputs = KeyInputs {
        builder: BUILDER.to_owned(),
        vendor: "debian".to_owned(),
        suite: "bookworm".to_owned(),
        mirror: None,
        architecture: "amd64".to_owned(),
        kernel: "linux-image-cloud-amd64".to_owned(),
        always: vec!["systemd".to_owned(), "udev".to_owned()],
        source_date_epoch: 1_700_000_000,
        packages: vec![package("munge", "0.5.15-2")],
        debconf: vec![],
        files: vec![FileInput {
            path: "/etc/x".to_owned(),
            sha256: "ab".repeat(32),
            mode: 0o644,
            owner: None,
        }],
        agent: Some("cd".repeat(32)),
    };
    let output = |size| OutputInfo {
        sha256: "ef".repeat(32),
        size,
    };
    Manifest {
        key: inputs.key(),
        inputs,
        outputs: BTreeMap::from([
            ("kernel".to_owned(), output(1)),
            ("rootfs.erofs".to_owned(), output(2)),
        ]),
    }
}

/// Looks the entry of `manifest.json` = `bytes` up: found only if it reads
/// and names its key; reading it directly is a clear error otherwise; the
/// store's listing goes on.
fn lookup(store: &Store, key: &str, bytes: &[u8]) -> Result<(), String> {
    let file = store.entry_dir(key).join(MANIFEST);
    replace_file(&file, bytes).unwrap();
    let read = Manifest::read(&file);
    match (&read, store.lookup(key)) {
        (Ok(m), Some(found)) if m.key == key && *m == found => {}
        (Ok(m), None) if m.key != key => {}
        (Err(ImageError::BadEntry { .. } | ImageError::Io { .. }), None) => {}
        (read, found) => return Err(format!("read {read:?}, found {found:?}")),
    }
    if let Err(e) = read {
        if !e.to_string().contains(&file.display().to_string()) {
            return Err(format!("the error does not name the file: {e}"));
        }
    }
    store.list().map_err(|e| e.to_string())?;
    Ok(())
}

#[test]
fn a_damaged_manifest_is_not_found_and_a_clear_error() {
    let fuzz = Fuzz::new(TMP, "store manifest.json");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let manifest = valid_manifest();
    let key = manifest.key.clone();
    std::fs::create_dir_all(store.entry_dir(&key)).unwrap();
    manifest
        .write(&store.entry_dir(&key).join(MANIFEST))
        .unwrap();
    assert_eq!(store.lookup(&key), Some(manifest));
    let valid = std::fs::read(store.entry_dir(&key).join(MANIFEST)).unwrap();
    for len in 0..valid.len() {
        fuzz.case();
        lookup(&store, &key, &valid[..len]).unwrap_or_else(|e| panic!("cut at {len}: {e}"));
    }
    proptest!(
        ProptestConfig::with_cases(fuzz.cases(1024)),
        |(bytes in damage(valid.clone()))| {
            fuzz.case();
            let result = lookup(&store, &key, &bytes);
            prop_assert!(result.is_ok(), "{:?}", result);
        }
    );
}

#[test]
fn a_damaged_record_of_a_lock_file_is_left_out() {
    let fuzz = Fuzz::new(TMP, "store .refs/*.json");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let lock = dir.path().join("testbed.lock");
    std::fs::write(&lock, valid_lock().to_toml()).unwrap();
    store
        .register(
            &lock,
            &BTreeMap::from([("ctl".to_owned(), "ab".repeat(32))]),
        )
        .unwrap();
    let refs = store.root().join(".refs");
    let record = std::fs::read_dir(&refs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let valid = std::fs::read(&record).unwrap();
    proptest!(
        ProptestConfig::with_cases(fuzz.cases(512)),
        |(bytes in damage(valid.clone()))| {
            fuzz.case();
            replace_file(&record, &bytes).unwrap();
            prop_assert!(store.list().is_ok());
            // A new record for the same lock file replaces a damaged one.
            store
                .register(&lock, &BTreeMap::from([("ctl".to_owned(), "cd".repeat(32))]))
                .unwrap();
        }
    );
}
