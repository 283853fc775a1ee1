//! The secrets scan (`docs/security.md`): a running cluster's generated
//! secrets and private keys, looked for byte by byte in every file of a
//! folder (the store, artifacts, reports) and in what the CLI printed.
//! They may be in the cluster's state folder only, in files of mode 0600
//! (or stricter), and in the nodes that should have them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use memchr::memmem::Finder;

/// What to look for: a name, and the bytes that would give it away.
pub struct Needles(Vec<(String, Vec<u8>)>);

/// One place a secret was found.
#[derive(Debug)]
pub struct Finding {
    pub path: PathBuf,
    pub what: String,
}

/// How much a scan read, and what it found.
#[derive(Debug, Default)]
pub struct Scan {
    pub files: usize,
    pub bytes: u64,
    pub findings: Vec<Finding>,
}

impl Scan {
    pub fn add(&mut self, other: Scan) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.findings.extend(other.findings);
    }
}

impl Needles {
    /// The secrets and private keys of the cluster whose state folder is
    /// `state` (read from its `spec.json` and `ssh/id_ed25519`): for each,
    /// its first 32 raw bytes and those bytes in base64 (as JSON carries
    /// them); for a key, a line of its body.
    pub fn of_cluster(state: &Path) -> Needles {
        let spec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(state.join("spec.json")).expect("the cluster's spec"),
        )
        .expect("spec json");
        let mut needles = Vec::new();
        let mut add_bytes = |what: String, bytes: &[u8]| {
            let head = &bytes[..bytes.len().min(24)];
            assert!(head.len() >= 16, "{what} is too short to look for");
            needles.push((format!("{what} (raw)"), head.to_vec()));
            needles.push((
                format!("{what} (base64)"),
                testbed_proto::b64::encode(head).into_bytes(),
            ));
        };
        let mut keys = Vec::new();
        for node in spec["nodes"].as_array().expect("nodes") {
            let name = node["name"].as_str().unwrap_or("?");
            let activation = &node["activation"];
            for secret in activation["secrets"].as_array().into_iter().flatten() {
                let contents = secret["contents"].as_str().expect("contents");
                let bytes = testbed_proto::b64::decode(contents).expect("base64");
                add_bytes(
                    format!(
                        "secret {} of {name}",
                        secret["path"].as_str().unwrap_or("?")
                    ),
                    &bytes,
                );
            }
            for key in activation["ssh"]["host_keys"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let private = key["private_key"].as_str().expect("private key");
                keys.push((format!("ssh host key of {name}"), private.to_owned()));
            }
        }
        let client = std::fs::read_to_string(state.join("ssh/id_ed25519")).expect("client key");
        keys.push(("the cluster's ssh client key".to_owned(), client));
        for (what, private) in keys {
            // The second line of the body: the first is the same for
            // every OpenSSH key of one type.
            let line = private
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .nth(1)
                .expect("a key body of several lines");
            needles.push((what, line.as_bytes().to_vec()));
        }
        // One needle per distinct secret (a shared one is in every node).
        let mut seen = std::collections::BTreeSet::new();
        needles.retain(|(_, bytes)| seen.insert(bytes.clone()));
        Needles(needles)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// How many needles are raw bytes (the others are text).
    pub fn raw(&self) -> usize {
        self.0
            .iter()
            .filter(|(what, _)| what.ends_with("(raw)"))
            .count()
    }

    /// What of the secrets `bytes` holds.
    pub fn found_in(&self, bytes: &[u8]) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, needle)| Finder::new(needle).find(bytes).is_some())
            .map(|(what, _)| what.clone())
            .collect()
    }

    /// Every regular file under `root` (symbolic links not followed),
    /// but those under `skip`.
    pub fn scan(&self, root: &Path, skip: &[&Path]) -> Scan {
        let mut scan = Scan::default();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if skip.iter().any(|s| path.starts_with(s)) {
                    continue;
                }
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    dirs.push(path);
                } else if kind.is_file() {
                    scan.add(self.scan_file(&path));
                }
            }
        }
        scan
    }

    /// A gzip file (the store's container archives) is searched
    /// decompressed: a secret in an image would not show in its
    /// compressed bytes. (The erofs images are compressed too, but hold
    /// the same tree as the archive beside them.)
    fn scan_file(&self, path: &Path) -> Scan {
        let mut bytes = std::fs::read(path).unwrap_or_default();
        if path.extension().is_some_and(|e| e == "gz") {
            use std::io::Read;
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut plain)
                .unwrap_or_else(|e| panic!("{}: not gzip: {e}", path.display()));
            bytes = plain;
        }
        Scan {
            files: 1,
            bytes: bytes.len() as u64,
            findings: self
                .found_in(&bytes)
                .into_iter()
                .map(|what| Finding {
                    path: path.to_path_buf(),
                    what,
                })
                .collect(),
        }
    }
}

/// The files of `state` (a cluster's state folder) that hold a secret but
/// others than their owner may read.
pub fn readable_by_others(needles: &Needles, state: &Path) -> Vec<Finding> {
    needles
        .scan(state, &[])
        .findings
        .into_iter()
        .filter(|f| {
            std::fs::metadata(&f.path).map_or(true, |m| m.permissions().mode() & 0o077 != 0)
        })
        .collect()
}

/// Appends `line` to the suite's robustness figures
/// (`target/tmp/robustness.txt`), which `scripts/test.sh` prints at the
/// end.
pub fn record(line: &str) {
    testbed_test_support::record_robustness(env!("CARGO_TARGET_TMPDIR"), line);
}
