//! The libvirt backend's host layer against the real system daemon
//! (`qemu:///system`, started by `scripts/setup-libvirt.sh`, which
//! `scripts/test.sh` runs first), with a real node image:
//!
//! - a domain boots from the image uploaded to testbed's pool, its agent
//!   answers through `open_agent` with the real `testbed_proto::Client`
//!   and runs a command, the console log fills from the first kernel line,
//!   and `destroy` removes it from `list` while a foreign domain (no
//!   testbed metadata, even with a testbed-like name) is neither listed
//!   nor touched;
//! - the same through a real remote URI: a test-owned `sshd` on a free
//!   loopback port, reached with `qemu+libssh://`, so the stream code
//!   (image upload, console, agent channel) runs over the network
//!   transport;
//! - an upload whose completion marker is missing is redone, never taken
//!   as complete; two clusters wanting one entry upload it once; an
//!   uploader that died is taken over; an entry is found while another is
//!   being uploaded (libvirt refuses to refresh a busy pool).
//!
//! The image is the Slurm example's `compute` role, built with the
//! `testbed` CLI into the store the other VM tests share (so CI builds it
//! once).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use testbed_image::manifest::sha256_file;
use testbed_proto::{Client, ClientOptions, ExecRequest};
use testbed_runtime::accel::Accel;
use testbed_runtime::libvirt::{DomainConfig, LibvirtError, LibvirtHost, UdpNic, POOL_NAME};
use testbed_test_support::{build_workspace_bins, copy_example, run_ok, Sshd};

const SYSTEM: &str = "qemu:///system";

/// Only a hung boot takes this long: under TCG a node's agent answers in
/// 10-60 s on a busy 2-core host.
const BOOT: Duration = Duration::from_secs(600);

/// The tests that boot share one daemon and one image; they run one at a
/// time (the uploads themselves may race: see
/// `two_clusters_wanting_one_entry_at_once_upload_it_once`).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn connect(uri: &str) -> LibvirtHost {
    LibvirtHost::connect(uri).unwrap_or_else(|e| {
        panic!("{e}\nthese tests need the system libvirt daemon: run scripts/setup-libvirt.sh as root first")
    })
}

/// The Slurm example's `compute` image: (store key, entry folder). Built
/// with the `testbed` CLI of this target directory and profile (cargo
/// builds it and the agent here if `cargo test --workspace` has not yet),
/// into `$CARGO_TARGET_TMPDIR/store`, the store of the CLI's VM tests. From
/// a copy of the example without its lock, locked against today's archive
/// as the CLI's tests do: the same images as theirs (the store builds them
/// once), and a test of the runtime, not of how old the committed lock is
/// (the package tests of the CLI cover that).
fn image() -> &'static (String, PathBuf) {
    static IMAGE: OnceLock<(String, PathBuf)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let profile_dir = build_workspace_bins(&["testbed-agent", "testbed"]);
        let example = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("runtime-libvirt/slurm");
        let _ = std::fs::remove_dir_all(&example);
        copy_example("slurm", &example, |toml| toml);
        let store = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("store");
        let json = run_ok(
            Command::new(profile_dir.join("testbed"))
                .args(["build", "--json"])
                .arg(&example)
                .env("TESTBED_STORE", &store)
                .env_remove("TESTBED_AGENT"),
        );
        let entries: serde_json::Value = serde_json::from_slice(&json).expect("build --json");
        let compute = entries
            .as_array()
            .and_then(|a| a.iter().find(|e| e["role"] == "compute"))
            .unwrap_or_else(|| panic!("no compute role in {entries}"));
        (
            compute["key"].as_str().expect("key").to_string(),
            PathBuf::from(compute["dir"].as_str().expect("dir")),
        )
    })
}

/// A cluster name no other run of these tests uses at the same time.
fn cluster(what: &str) -> String {
    format!("lvt-{what}-{}", std::process::id())
}

fn free_udp() -> SocketAddr {
    testbed_runtime::switch::reserve_udp_port().expect("a free UDP port")
}

fn config(
    cluster: &str,
    node: &str,
    image: &testbed_runtime::libvirt::HostImage,
    dir: &Path,
) -> DomainConfig {
    DomainConfig {
        cluster: cluster.into(),
        node: node.into(),
        run_id: format!("test-{}", std::process::id()),
        state_dir: dir.to_path_buf(),
        accel: Accel::Tcg,
        memory_mib: 512,
        cpus: 1,
        kernel: image.kernel.clone(),
        initramfs: image.initramfs.clone(),
        rootfs: image.rootfs.clone(),
        // Without `quiet`, so the console shows the kernel's first line.
        cmdline: testbed_image::initramfs::KERNEL_CMDLINE.replace(" quiet", ""),
        // One NIC, so the UDP interface is part of a real boot; nothing
        // listens on its switch address, like an unplugged cable.
        nics: vec![UdpNic {
            mac: "52:54:00:7e:57:01".into(),
            switch: free_udp(),
            local: free_udp(),
        }],
        console_log: dir.join(format!("{node}.console.log")),
        // A panicking test leaves nothing behind: the domain dies with
        // the test's connection.
        autodestroy: true,
    }
}

/// Boots `config` on `host`, drives its agent, checks the console, and
/// destroys it.
fn boot_and_drive(host: &LibvirtHost, config: &DomainConfig) {
    let name = host.start(config).expect("start");
    assert_eq!(name, format!("testbed-{}-{}", config.cluster, config.node));
    assert!(host.is_running(&name).expect("is_running"));
    let listed = host.list(&config.cluster).expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, name);
    assert_eq!(listed[0].metadata, config.metadata());
    assert!(listed[0].active);

    let channel = host.open_agent(&name).expect("open_agent");
    let client = Client::with_options(
        channel.reader,
        channel.writer,
        ClientOptions {
            node: config.node.clone(),
            hello_timeout: BOOT,
            ..ClientOptions::default()
        },
    )
    .unwrap_or_else(|e| {
        let console = std::fs::read_to_string(&config.console_log).unwrap_or_default();
        panic!("no hello from the agent: {e}\nconsole:\n{console}")
    });
    let out = client
        .exec_output(ExecRequest::argv(["uname", "-n"]))
        .expect("exec uname -n");
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    let out = client
        .exec_output(ExecRequest::shell("cat /sys/class/net/*/address"))
        .expect("exec");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("52:54:00:7e:57:01"),
        "the NIC is there: {out:?}"
    );
    drop(client);

    // The console was attached before the guest ran: the log starts with
    // the kernel's first line.
    let console = std::fs::read_to_string(&config.console_log).expect("console log");
    assert!(console.contains("Linux version"), "console:\n{console}");

    host.destroy(&name).expect("destroy");
    assert!(!host.is_running(&name).expect("is_running"));
    assert!(host.list(&config.cluster).expect("list").is_empty());
    // Destroying what is gone is not an error (down after a crash).
    host.destroy(&name).expect("destroy again");
}

/// A persistent, never-started domain that testbed did not create, named
/// as if it had.
fn define_foreign(uri: &str, name: &str, kernel: &Path) -> virt::domain::Domain {
    let conn = virt::connect::Connect::open(Some(uri)).expect("connect");
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type><kernel>{}</kernel></os></domain>",
        kernel.display()
    );
    conn.define_domain_xml(&xml)
        .expect("define the foreign domain")
}

#[test]
fn a_domain_boots_answers_and_is_destroyed_while_foreign_domains_survive() {
    let _serial = serial();
    let (key, dir) = image();
    let host = connect(SYSTEM);
    assert!(!host.is_remote());
    let image = host.ensure_images(key, dir).expect("ensure_images");
    // Once per content hash: the second call finds the volumes.
    let again = host.ensure_images(key, dir).expect("ensure_images again");
    assert!(!again.uploaded);
    assert_eq!(again.rootfs, image.rootfs);
    assert!(image.rootfs.starts_with("/var/lib/libvirt/images/testbed"));

    let tmp = tempfile::tempdir().expect("tempdir");
    let cluster = cluster("local");
    let foreign_name = format!("testbed-{cluster}-foreign");
    let foreign = define_foreign(SYSTEM, &foreign_name, &image.kernel);

    boot_and_drive(&host, &config(&cluster, "node1", &image, tmp.path()));

    // The foreign domain is not listed, and testbed refuses to touch it.
    assert!(host.list(&cluster).expect("list").is_empty());
    match host.destroy(&foreign_name) {
        Err(LibvirtError::NotOurs { domain, .. }) => assert_eq!(domain, foreign_name),
        other => panic!("destroy of a foreign domain: {other:?}"),
    }
    assert!(host.suspend(&foreign_name).is_err());
    assert!(host.open_agent(&foreign_name).is_err());
    assert_eq!(foreign.name().expect("still there"), foreign_name);
    foreign
        .undefine()
        .expect("the test removes its foreign domain");
}

/// The upload through a remote URI's stream. Booting a domain there and
/// reaching its agent over the remote connection is shown by the CLI's
/// `libvirt.rs` (a cluster spread over a local and a `qemu+libssh` URI),
/// so this test does not boot one more guest.
#[test]
fn a_remote_uri_uploads_through_its_stream() {
    let _serial = serial();
    let (key, dir) = image();
    let sshd = Sshd::start();
    let uri = sshd.libvirt_system_uri();
    let host = connect(&uri);
    assert!(host.is_remote(), "{uri}");

    // A key of this test's own, so the upload really goes through the
    // remote stream even when the local test uploaded the entry already;
    // removed at the end.
    let test_key = format!("{key}-remote-test-{}", std::process::id());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let image = host.ensure_images(&test_key, dir).expect("ensure_images");
        assert!(image.uploaded);
        for (volume, file) in [
            (&image.kernel, "kernel"),
            (&image.initramfs, "initramfs"),
            (&image.rootfs, "rootfs.erofs"),
        ] {
            let sha256 = |p: &Path| sha256_file(p).expect("hash");
            assert_eq!(
                sha256(volume),
                sha256(&dir.join(file)),
                "{file} arrived intact"
            );
        }
        let again = host.ensure_images(&test_key, dir).expect("ensure_images");
        assert!(!again.uploaded, "found by its completion marker");
    }));
    host.remove_images(&test_key).expect("remove_images");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn an_upload_without_its_completion_marker_is_redone() {
    let _serial = serial();
    let host = connect(SYSTEM);
    let tmp = tempfile::tempdir().expect("tempdir");
    for (file, size) in [
        ("kernel", 1000),
        ("initramfs", 2000),
        ("rootfs.erofs", 4096),
    ] {
        let mut f = std::fs::File::create(tmp.path().join(file)).expect("create");
        f.write_all(&vec![7u8; size]).expect("write");
    }
    let key = format!("marker-test-{}", std::process::id());
    let first = host.ensure_images(&key, tmp.path()).expect("upload");
    assert!(first.uploaded);
    assert_eq!(
        std::fs::read(&first.initramfs).expect("volume"),
        vec![7u8; 2000]
    );
    assert!(
        !host
            .ensure_images(&key, tmp.path())
            .expect("again")
            .uploaded
    );

    // An interrupted upload: the volumes are there but the marker is not.
    let conn = virt::connect::Connect::open(Some(SYSTEM)).expect("connect");
    let pool = conn.lookup_storage_pool_by_name(POOL_NAME).expect("pool");
    pool.lookup_storage_vol_by_name(&format!("{key}.complete"))
        .expect("marker")
        .delete(0)
        .expect("delete marker");
    // ... and a file that changed size (a truncated volume looks the same).
    std::fs::write(tmp.path().join("rootfs.erofs"), vec![9u8; 8192]).expect("write");
    let redone = host.ensure_images(&key, tmp.path()).expect("redo");
    assert!(redone.uploaded);
    assert_eq!(
        std::fs::read(&redone.rootfs).expect("volume"),
        vec![9u8; 8192]
    );
    host.remove_images(&key).expect("remove_images");
    assert!(pool
        .lookup_storage_vol_by_name(&format!("{key}-kernel"))
        .is_err());
}

/// The files of a small fake store entry; the rootfs `rootfs_mib` MiB.
fn fake_entry(rootfs_mib: usize) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (file, size) in [
        ("kernel", 1000),
        ("initramfs", 2000),
        ("rootfs.erofs", rootfs_mib << 20),
    ] {
        let mut f = std::fs::File::create(tmp.path().join(file)).expect("create");
        f.write_all(&vec![5u8; size]).expect("write");
    }
    tmp
}

/// Two clusters (two connections, as two supervisors have) want the same
/// entry on the same host at once: one uploads, the other waits for it,
/// and both get the same complete volumes. (They used to both upload: the
/// second deleted the first one's half-written volumes.)
#[test]
fn two_clusters_wanting_one_entry_at_once_upload_it_once() {
    let tmp = fake_entry(64);
    let key = format!("race-test-{}", std::process::id());
    let (a, b) = (connect(SYSTEM), connect(SYSTEM));
    let dir = tmp.path();
    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(|| a.ensure_images(&key, dir));
        let second = s.spawn(|| b.ensure_images(&key, dir));
        (first.join().unwrap(), second.join().unwrap())
    });
    let (first, second) = (first.expect("first"), second.expect("second"));
    assert_eq!(
        u8::from(first.uploaded) + u8::from(second.uploaded),
        1,
        "one upload: {first:?} {second:?}"
    );
    assert_eq!(first.rootfs, second.rootfs);
    let uploaded = std::fs::read(&first.rootfs).expect("volume");
    assert!(uploaded.len() == 64 << 20 && uploaded.iter().all(|b| *b == 5));
    a.remove_images(&key).expect("remove_images");
}

/// An uploader that died leaves its lock volume: a cluster that wants the
/// entry waits while nothing moves for the staleness bound, then uploads
/// it itself.
#[test]
fn an_upload_whose_uploader_died_is_taken_over() {
    let tmp = fake_entry(1);
    let key = format!("stale-test-{}", std::process::id());
    let host = connect(SYSTEM);
    let conn = virt::connect::Connect::open(Some(SYSTEM)).expect("connect");
    let pool = conn.lookup_storage_pool_by_name(POOL_NAME).expect("pool");
    let xml =
        format!("<volume><name>{key}.uploading</name><capacity unit='bytes'>0</capacity></volume>");
    virt::storage_vol::StorageVol::create_xml(&pool, &xml, 0).expect("a dead uploader's lock");
    let started = std::time::Instant::now();
    let image = host
        .ensure_images_within(&key, tmp.path(), Duration::from_secs(2))
        .expect("taken over");
    assert!(image.uploaded);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited for the uploader first"
    );
    assert!(
        pool.lookup_storage_vol_by_name(&format!("{key}.uploading"))
            .is_err(),
        "the lock is gone"
    );
    host.remove_images(&key).expect("remove_images");
}

/// While one cluster uploads an entry (at the end of each volume's upload
/// the pool has an asynchronous job running, and libvirt then refuses to
/// refresh it), another finds its own, complete, entry without an error.
/// (It used to fail with "pool 'testbed' has asynchronous jobs running".)
#[test]
fn an_entry_is_found_while_another_is_being_uploaded() {
    let (busy, small) = (fake_entry(8), fake_entry(1));
    let pid = std::process::id();
    let small_key = format!("busy-small-{pid}");
    let (a, b) = (connect(SYSTEM), connect(SYSTEM));
    // What a failing round leaves in the pool goes too.
    let _left = Leftovers(
        (0..40)
            .map(|round| format!("busy-{pid}-{round}"))
            .chain([small_key.clone()])
            .collect(),
    );
    assert!(
        b.ensure_images(&small_key, small.path())
            .expect("small")
            .uploaded
    );
    let conn = virt::connect::Connect::open(Some(SYSTEM)).expect("connect");
    let pool = conn.lookup_storage_pool_by_name(POOL_NAME).expect("pool");
    // Looks that came right after a probe found the pool busy (the window
    // lasts milliseconds: a few uploads of a small entry give some).
    let mut in_window = 0;
    for round in 0..40 {
        let busy_key = format!("busy-{pid}-{round}");
        std::thread::scope(|s| {
            let upload = s.spawn(|| a.ensure_images(&busy_key, busy.path()));
            while !upload.is_finished() {
                let probe = pool.refresh(0);
                let window = probe.is_err_and(|e| e.to_string().contains("asynchronous jobs"));
                let found = b.ensure_images(&small_key, small.path());
                let found = found.unwrap_or_else(|e| panic!("during another's upload: {e}"));
                assert!(!found.uploaded);
                in_window += u32::from(window);
            }
            assert!(upload.join().unwrap().expect("busy").uploaded);
        });
        a.remove_images(&busy_key).expect("remove busy");
        if in_window >= 3 {
            break;
        }
    }
    assert!(
        in_window > 0,
        "no look came while the pool was busy: the test proved nothing"
    );
    b.remove_images(&small_key).expect("remove small");
}

/// Store keys whose volumes are removed from the system pool when dropped
/// (a panicking test's too).
struct Leftovers(Vec<String>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        if let Ok(host) = LibvirtHost::connect(SYSTEM) {
            for key in &self.0 {
                let _ = host.remove_images(key);
            }
        }
    }
}
