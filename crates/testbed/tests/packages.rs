//! Locks that do not rot: where a build's packages come from when the
//! mirror no longer has the locked versions (docs/images.md, "Where
//! packages come from").
//!
//! One small composition (one role, the base system) is locked against the
//! host's archive and built once online; its store's package cache then
//! fills the other sources:
//!
//! - a fake *mirror* and a fake *snapshot archive*, served over HTTP on
//!   127.0.0.1 by this test: the mirror's index is empty (every locked
//!   version is gone from it, so re-locking cannot help), the snapshot has
//!   the locked files at the lock's snapshot point;
//! - a vendor folder written by `testbed vendor`, built from with the
//!   network off (`unshare -n`).
//!
//! Each rebuild goes into an empty store and must give the same key and
//! the same output digests as the online build. A corrupt `.deb` from any
//! source is refused by name and nothing reaches the store.

// The commands and their output are echoed on stderr: what a failed test's
// log needs.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use testbed_test_support::{agent_binary, text};

/// The composition every test builds: the base system only, so a build
/// takes seconds of mmdebstrap rather than minutes.
const COMPOSITION: &str =
    "[cluster]\nname = \"pkgs\"\ndistro = \"debian/bookworm\"\n\n[roles.node]\npackages = []\n";

/// `testbed ARGS` in `cwd` with the store `store` and extra environment;
/// echoed on stderr with its output.
fn testbed(args: &[&str], cwd: &Path, store: &Path, env: &[(&str, &str)]) -> Output {
    agent_binary();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_testbed"));
    cmd.args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env("TESTBED_STORE", store)
        .env_remove("TESTBED_SNAPSHOT")
        .env_remove("TESTBED_SNAPSHOT_UNSIGNED")
        .env_remove("TESTBED_APT_SOURCES");
    for (k, v) in env {
        cmd.env(k, v);
    }
    echo(args, cmd.output().expect("run testbed"))
}

fn echo(args: &[&str], out: Output) -> Output {
    eprintln!(
        "$ testbed {}\n-> {:?}\n{}{}",
        args.join(" "),
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// `testbed ARGS` in a network namespace of its own (`unshare --net`: not
/// even loopback is up), which must succeed.
fn without_network(args: &[&str], cwd: &Path, store: &Path) -> Output {
    let out = Command::new("unshare")
        .arg("--net")
        .arg(env!("CARGO_BIN_EXE_testbed"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env("TESTBED_STORE", store)
        .env_remove("TESTBED_SNAPSHOT")
        .env_remove("TESTBED_APT_SOURCES")
        .output()
        .expect("unshare");
    let out = echo(args, out);
    assert!(out.status.success(), "testbed {}", args.join(" "));
    out
}

/// The online build every test compares with: the composition's folder
/// (with its lock), its store, and the entry's key and output digests.
struct Reference {
    comp: PathBuf,
    store: PathBuf,
    key: String,
    outputs: BTreeMap<String, String>,
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("packages");
        let _ = std::fs::remove_dir_all(&base);
        let comp = base.join("comp");
        std::fs::create_dir_all(&comp).expect("mkdir");
        std::fs::write(comp.join("testbed.toml"), COMPOSITION).expect("write");
        let store = base.join("store");
        let out = testbed(&["build", "--json"], &comp, &store, &[]);
        assert!(out.status.success(), "the online build failed");
        let built: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let key = built[0]["key"].as_str().expect("key").to_string();
        let outputs = outputs(&store, &key);
        Reference {
            comp,
            store,
            key,
            outputs,
        }
    })
}

/// Output name → SHA-256, from an entry's manifest.
fn outputs(store: &Path, key: &str) -> BTreeMap<String, String> {
    let manifest = std::fs::read(store.join(key).join("manifest.json")).expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
    manifest["outputs"]
        .as_object()
        .expect("outputs")
        .iter()
        .map(|(k, v)| (k.clone(), v["sha256"].as_str().expect("sha").to_string()))
        .collect()
}

/// The complete entries of a store (directories with a manifest).
fn entries(store: &Path) -> Vec<String> {
    std::fs::read_dir(store)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("manifest.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A copy of the reference composition and its lock in a new folder.
fn copy_comp(dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for f in ["testbed.toml", "testbed.lock"] {
        std::fs::copy(reference().comp.join(f), dst.join(f)).expect("copy");
    }
}

/// (name, version, arch, sha256) of every package of the reference lock,
/// and the lock's snapshot point.
fn locked() -> (Vec<[String; 4]>, String) {
    let text = std::fs::read_to_string(reference().comp.join("testbed.lock")).expect("lock");
    let lock: toml::Value = toml::from_str(&text).expect("toml");
    let role = &lock["roles"]["node"];
    let point = role["snapshot"]
        .as_str()
        .expect("snapshot point")
        .to_string();
    let packages = role["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| ["name", "version", "arch", "sha256"].map(|k| p[k].as_str().expect(k).to_string()))
        .collect();
    (packages, point)
}

/// The `.deb` of a locked package in the reference store's cache.
fn cached(sha256: &str) -> PathBuf {
    reference()
        .store
        .join(".packages")
        .join(format!("{sha256}.deb"))
}

/// A folder served over HTTP/1.1 on 127.0.0.1 (GET only, one request per
/// connection, 404 for what is not there), for as long as the test runs.
fn serve(root: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || answer(stream, &root));
        }
    });
    port
}

fn answer(mut stream: TcpStream, root: &Path) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let path = percent_decode(request.split_whitespace().nth(1).unwrap_or("/"));
    let path = path.as_str();
    let safe = !path.split('/').any(|c| c == "..");
    let file = root.join(path.trim_start_matches('/'));
    let (status, body) = match std::fs::read(&file) {
        Ok(body) if safe && file.is_file() => ("200 OK", body),
        _ => ("404 Not Found", b"not found\n".to_vec()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

/// `%2b` → `+`, as apt escapes file names in URLs.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One suite of an archive at `dir` (`dir/dists/SUITE/...`, files under
/// `dir/pool/`) holding `debs` (file name → bytes, listed with `sha256s`
/// in the index: normally the files' own digests).
fn write_suite(dir: &Path, suite: &str, debs: &[(String, PathBuf, String)]) {
    let pool = dir.join("pool/main");
    std::fs::create_dir_all(&pool).expect("mkdir");
    let mut index = String::new();
    for (name, file, sha256) in debs {
        let dest = pool.join(name);
        if !dest.exists() {
            std::fs::copy(file, &dest).expect("copy deb");
        }
        let control = Command::new("dpkg-deb")
            .arg("--field")
            .arg(&dest)
            .output()
            .expect("dpkg-deb");
        assert!(control.status.success(), "dpkg-deb --field {name}");
        let size = std::fs::metadata(&dest).expect("stat").len();
        index.push_str(text(&control.stdout).trim_end());
        index.push_str(&format!(
            "\nFilename: pool/main/{name}\nSize: {size}\nSHA256: {sha256}\n\n"
        ));
    }
    let bin = dir.join(format!("dists/{suite}/main/binary-amd64"));
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::fs::write(bin.join("Packages"), &index).expect("write");
    let digest = sha256_hex(index.as_bytes());
    let release = format!(
        "Suite: {suite}\nCodename: {suite}\nComponents: main\nArchitectures: amd64\nDate: Thu, 01 Jan 2026 00:00:00 UTC\nSHA256:\n {digest} {} main/binary-amd64/Packages\n",
        index.len()
    );
    std::fs::write(dir.join(format!("dists/{suite}/Release")), release).expect("write");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every locked package as (file name, cached file, digest).
fn locked_debs() -> Vec<(String, PathBuf, String)> {
    locked()
        .0
        .into_iter()
        .map(|[name, version, arch, sha]| {
            let file = format!("{name}_{}_{arch}.deb", version.replace(':', "%3a"));
            (file, cached(&sha), sha)
        })
        .collect()
}

/// The snapshot point a day after `point`, which a build asks when the
/// point itself lacks a version.
fn day_after(point: &str) -> String {
    let t = testbed_image::snapshot::parse_timestamp(point).expect("a snapshot point");
    testbed_image::snapshot::format_timestamp(t + 86_400)
}

/// A fake mirror whose index has none of the locked versions and a fake
/// snapshot archive holding `debs`, under one server: the sources file
/// that names the mirror and the snapshot base URL. The snapshot spreads
/// the files as a real one would make a build look for them: a third in
/// `debian-security` at the lock's point, a third in `debian` at the
/// point, and a third only in `debian` a day later (imported late).
fn fake_archives(dir: &Path, debs: &[(String, PathBuf, String)]) -> (PathBuf, String) {
    let www = dir.join("www");
    let (_, point) = locked();
    let later = day_after(&point);
    // The mirror: the suites the host resolves against, all empty.
    for suite in ["bookworm", "bookworm-updates"] {
        write_suite(&www.join("mirror/debian"), suite, &[]);
    }
    write_suite(
        &www.join("mirror/debian-security"),
        "bookworm-security",
        &[],
    );
    let third = |k: usize| -> Vec<(String, PathBuf, String)> {
        debs.iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == k)
            .map(|(_, d)| d.clone())
            .collect()
    };
    let snap = www.join("snap/archive");
    for (at, security, main) in [(&point, third(0), third(1)), (&later, Vec::new(), third(2))] {
        write_suite(&snap.join(format!("debian/{at}")), "bookworm", &main);
        write_suite(&snap.join(format!("debian/{at}")), "bookworm-updates", &[]);
        write_suite(
            &snap.join(format!("debian-security/{at}")),
            "bookworm-security",
            &security,
        );
    }
    let port = serve(www);
    let sources = dir.join("mirror.list");
    std::fs::write(
        &sources,
        format!(
            "deb [trusted=yes] http://127.0.0.1:{port}/mirror/debian bookworm main\n\
             deb [trusted=yes] http://127.0.0.1:{port}/mirror/debian bookworm-updates main\n\
             deb [trusted=yes] http://127.0.0.1:{port}/mirror/debian-security bookworm-security main\n"
        ),
    )
    .expect("write");
    (sources, format!("http://127.0.0.1:{port}/snap"))
}

#[test]
fn a_lock_gone_from_the_mirror_builds_from_the_snapshot_archive_identically() {
    let r = reference();
    let tmp = tempfile::tempdir().expect("tmp");
    let comp = tmp.path().join("comp");
    copy_comp(&comp);
    let lock_before = std::fs::read(comp.join("testbed.lock")).expect("lock");
    let (sources, snap) = fake_archives(tmp.path(), &locked_debs());
    let sources = sources.to_str().expect("utf-8");
    let store = tmp.path().join("store");
    let (_, point) = locked();

    // The mirror has none of the locked versions: re-locking against it
    // cannot give this lock back (it fails: the archive is empty).
    let relock_dir = tmp.path().join("relock");
    copy_comp(&relock_dir);
    let relock = testbed(
        &["lock", "--update"],
        &relock_dir,
        &store,
        &[("TESTBED_APT_SOURCES", sources)],
    );
    assert!(!relock.status.success(), "the fake mirror has no packages");

    // Without the snapshot archive, the build names what is missing and
    // leaves the lock and the store alone.
    let off = testbed(
        &["build"],
        &comp,
        &store,
        &[
            ("TESTBED_APT_SOURCES", sources),
            ("TESTBED_SNAPSHOT", "off"),
        ],
    );
    assert_eq!(off.status.code(), Some(1));
    let err = text(&off.stderr);
    let (packages, _) = locked();
    assert!(
        err.contains(&format!(
            "{} locked packages of role `node` can be had from no source",
            packages.len()
        )),
        "{err}"
    );
    assert!(err.contains("tried: not in the mirror"), "{err}");
    assert!(
        err.contains("tried: no snapshot archive (it is off)"),
        "{err}"
    );
    assert!(err.contains("the lock is left as it is"), "{err}");
    assert!(entries(&store).is_empty());

    // `lock --check` says where each package would come from.
    // The fake archive is not signed by Debian's keys: accepted only when
    // asked (the lock's digests are then the only check).
    let env = [
        ("TESTBED_APT_SOURCES", sources),
        ("TESTBED_SNAPSHOT", snap.as_str()),
        ("TESTBED_SNAPSHOT_UNSIGNED", "1"),
    ];
    let later = day_after(&point);
    let check = testbed(&["lock", "--check"], &comp, &store, &env);
    assert!(check.status.success());
    for at in [&point, &later] {
        assert!(
            text(&check.stdout).contains(&format!(
                " packages from the snapshot archive {snap} at {at}: "
            )),
            "{}",
            text(&check.stdout)
        );
    }

    // Unless asked, a snapshot archive must be signed by Debian's keys, as
    // the mirror must: a lock and a `snapshot` URL edited in one commit
    // cannot install what Debian never published.
    let signed_env = [
        ("TESTBED_APT_SOURCES", sources),
        ("TESTBED_SNAPSHOT", snap.as_str()),
    ];
    let check = testbed(&["lock", "--check", "--json"], &comp, &store, &signed_env);
    assert_eq!(check.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).expect("json");
    let tried = report["missing"][0]["tried"].to_string();
    assert!(tried.contains("is not signed"), "{tried}");

    // The same for machines: sources, and what is missing without the
    // snapshot archive.
    let off_env = [
        ("TESTBED_APT_SOURCES", sources),
        ("TESTBED_SNAPSHOT", "off"),
    ];
    let check = testbed(&["lock", "--check", "--json"], &comp, &store, &off_env);
    assert_eq!(check.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).expect("json");
    assert_eq!(report["ok"], false);
    assert_eq!(
        report["missing"].as_array().map(Vec::len),
        Some(packages.len())
    );
    assert_eq!(report["missing"][0]["roles"][0], "node");
    let check = testbed(&["lock", "--check", "--json"], &comp, &store, &env);
    assert!(check.status.success());
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).expect("json");
    assert_eq!(report["ok"], true);
    let from = report["from"].as_array().expect("from");
    let points: Vec<&str> = from.iter().filter_map(|f| f["point"].as_str()).collect();
    assert_eq!(points, [point.as_str(), later.as_str()], "{report}");
    assert!(from.iter().all(|f| f["source"] == "snapshot"));
    let total: usize = from
        .iter()
        .filter_map(|f| f["packages"].as_array().map(Vec::len))
        .sum();
    assert_eq!(total, packages.len());

    // With it, the locked images are built, identical to the online build.
    let out = testbed(&["build", "--json"], &comp, &store, &env);
    assert!(out.status.success());
    let err = text(&out.stderr);
    for at in [&point, &later] {
        assert!(
            err.contains(&format!("from the snapshot archive {snap} at {at}: ")),
            "the build says where the packages came from: {err}"
        );
    }
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(built[0]["key"].as_str(), Some(r.key.as_str()));
    assert_eq!(outputs(&store, &r.key), r.outputs, "identical images");
    assert_eq!(
        std::fs::read(comp.join("testbed.lock")).expect("lock"),
        lock_before,
        "the lock is unchanged"
    );
}

#[test]
fn vendor_then_an_offline_build_without_network_gives_identical_images() {
    let r = reference();
    let tmp = tempfile::tempdir().expect("tmp");
    let vendor = tmp.path().join("vendor");
    let vendor_s = vendor.to_str().expect("utf-8");
    let out = testbed(&["vendor", ".", vendor_s], &r.comp, &r.store, &[]);
    assert!(out.status.success());
    let (packages, _) = locked();
    let sums = std::fs::read_to_string(vendor.join("SHA256SUMS")).expect("SHA256SUMS");
    assert_eq!(sums.lines().count(), packages.len());
    for [_, _, _, sha] in &packages {
        assert!(sums.contains(sha.as_str()), "{sha} is vendored");
    }

    let comp = tmp.path().join("comp");
    copy_comp(&comp);
    let store = tmp.path().join("store");
    // Offline without the folder: nothing to build from, said plainly.
    let bare = testbed(&["build", "--offline"], &comp, &store, &[]);
    assert_eq!(bare.status.code(), Some(1));
    assert!(
        text(&bare.stderr).contains("tried: no network used (offline)"),
        "{}",
        text(&bare.stderr)
    );

    // In a network namespace of its own: no network at all.
    let args = ["build", "--offline", "--vendor", vendor_s, "--json"];
    let out = without_network(&args, &comp, &store);
    assert!(
        text(&out.stderr).contains(&format!(
            "{} packages from the vendor folder {vendor_s}",
            packages.len()
        )),
        "{}",
        text(&out.stderr)
    );
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(built[0]["key"].as_str(), Some(r.key.as_str()));
    assert_eq!(outputs(&store, &r.key), r.outputs, "identical images");

    // The store keeps what it took, so the next build needs no folder.
    let ls = testbed(&["store", "ls", "--json"], &comp, &store, &[]);
    let ls: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("json");
    assert_eq!(
        ls["packages"]["count"].as_u64(),
        Some(packages.len() as u64)
    );
    assert_eq!(ls["entries"][0]["key"].as_str(), Some(r.key.as_str()));

    // Another image of the same packages (a static file more: another key,
    // the same lock) builds from the store's package cache alone, again
    // without network.
    let toml = format!("{COMPOSITION}files.\"/etc/testbed-cache-check\" = {{ content = \"1\" }}\n");
    std::fs::write(comp.join("testbed.toml"), toml).expect("write");
    let args = ["build", "--offline", "--json"];
    let out = without_network(&args, &comp, &store);
    assert!(
        text(&out.stderr).contains(&format!(
            "{} packages from the store's package cache",
            packages.len()
        )),
        "{}",
        text(&out.stderr)
    );
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_ne!(
        built[0]["key"].as_str(),
        Some(r.key.as_str()),
        "another image"
    );
}

#[test]
fn a_corrupt_deb_from_any_source_is_refused_and_nothing_is_committed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let comp = tmp.path().join("comp");
    copy_comp(&comp);
    let debs = locked_debs();
    // The largest file (the kernel's), damaged in its middle.
    let (victim, source, sha) = debs
        .iter()
        .max_by_key(|(_, file, _)| std::fs::metadata(file).map(|m| m.len()).unwrap_or(0))
        .cloned()
        .expect("packages");
    let mut bytes = std::fs::read(&source).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;

    // A vendor folder with every file, one of them damaged.
    let vendor = tmp.path().join("vendor");
    std::fs::create_dir_all(&vendor).expect("mkdir");
    for (name, file, _) in &debs {
        std::fs::copy(file, vendor.join(name)).expect("copy");
    }
    std::fs::write(vendor.join(&victim), &bytes).expect("damage");
    let store = tmp.path().join("store");
    let vendor_s = vendor.to_str().expect("utf-8");
    let out = testbed(
        &["build", "--offline", "--vendor", vendor_s],
        &comp,
        &store,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{vendor_s}/{victim} has SHA-256 {}, the lock says {sha}: refused",
            sha256_hex(&bytes)
        )),
        "{err}"
    );
    assert!(entries(&store).is_empty(), "no image");
    assert!(
        !store.join(".packages").join(format!("{sha}.deb")).exists(),
        "the damaged file is not cached"
    );
    let tmp_left: Vec<_> = std::fs::read_dir(store.join(".tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(tmp_left.is_empty(), "nothing half-written: {tmp_left:?}");

    // A damaged file in the store's own cache is found, dropped and named.
    std::fs::write(store.join(".packages").join(format!("{sha}.deb")), &bytes).expect("w");
    let out = testbed(&["build", "--offline"], &comp, &store, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{sha}.deb had SHA-256 {}, not the lock's: removed",
            sha256_hex(&bytes)
        )),
        "{err}"
    );
    assert!(!store.join(".packages").join(format!("{sha}.deb")).exists());
    assert!(entries(&store).is_empty());

    // A snapshot archive whose index lists other bytes for the version is
    // refused before anything is downloaded.
    let damaged = tmp.path().join("damaged.deb");
    std::fs::write(&damaged, &bytes).expect("w");
    let mut served = debs.clone();
    for d in served.iter_mut().filter(|d| d.0 == victim) {
        *d = (victim.clone(), damaged.clone(), sha256_hex(&bytes));
    }
    let (sources, snap) = fake_archives(tmp.path(), &served);
    let env = [
        ("TESTBED_APT_SOURCES", sources.to_str().expect("utf-8")),
        ("TESTBED_SNAPSHOT", snap.as_str()),
        ("TESTBED_SNAPSHOT_UNSIGNED", "1"),
    ];
    let out = testbed(&["build"], &comp, &store, &env);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("1 locked package of role `node` can be had from no source")
            && err.contains("lists other bytes under this version"),
        "{err}"
    );
    assert!(entries(&store).is_empty());
    assert!(!store.join(".packages").join(format!("{sha}.deb")).exists());
}

#[test]
fn a_format_1_lock_is_upgraded_in_place_with_a_note_and_keeps_its_images() {
    let r = reference();
    let tmp = tempfile::tempdir().expect("tmp");
    let comp = tmp.path().join("comp");
    copy_comp(&comp);
    let current = std::fs::read_to_string(comp.join("testbed.lock")).expect("lock");
    // The same lock as a testbed before format 2 wrote it: no snapshot
    // point, no archives.
    let old: String = current
        .replace("version = 2", "version = 1")
        .lines()
        .filter(|l| !l.starts_with("snapshot = ") && !l.starts_with("archives = "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(old, current);
    std::fs::write(comp.join("testbed.lock"), &old).expect("write");
    // The reference store has its image: the build is a cache hit.
    let out = testbed(&["build", "--json"], &comp, &r.store, &[]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("from format 1 to 2: added each role's snapshot point")
            && err.contains("no package version changed"),
        "the upgrade is said: {err}"
    );
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(built[0]["key"].as_str(), Some(r.key.as_str()), "same image");
    assert_eq!(built[0]["cached"].as_bool(), Some(true));
    // The snapshot point comes from the epoch and the archives from the
    // same sources: the very file `lock` writes today.
    assert_eq!(
        std::fs::read_to_string(comp.join("testbed.lock")).expect("lock"),
        current
    );
    // Once upgraded, nothing more is said.
    let again = testbed(&["build"], &comp, &r.store, &[]);
    assert!(again.status.success());
    assert!(!text(&again.stderr).contains("upgraded"));
}
