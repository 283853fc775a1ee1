//! The libvirt backend's host layer: one connection to one libvirt URI
//! ([`LibvirtHost`]), through the libvirt API (the `virt` crate), never
//! `virsh`.
//!
//! - [`domain_xml`] is the pure half: a node's transient domain from a
//!   [`DomainConfig`], snapshot-tested like the QEMU backend's argv.
//! - [`LibvirtHost::ensure_images`] copies a store entry's boot files into
//!   testbed's storage pool on the host, once per content hash.
//! - [`LibvirtHost::start`] creates the domain paused, attaches its console
//!   to a local log file, then resumes it, so no boot output is lost.
//! - [`LibvirtHost::open_agent`] gives the agent's virtio-serial channel as
//!   a pair of sockets for `testbed_proto::Client`, over a libvirt stream,
//!   so it works the same for a remote URI.
//! - [`LibvirtHost::list`], [`LibvirtHost::destroy`], suspend and resume act
//!   only on domains whose metadata says testbed created them; a domain
//!   without it is never touched.
//!
//! Layout, pool and URIs are described in `docs/libvirt.md`.

mod pump;
mod xml;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::{Error as VirtError, ErrorNumber};
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;

pub use xml::{
    agent_port_connected, domain_name, domain_xml, escape, metadata_xml, parse_metadata,
    parse_metadata_element, restore_xml, DomainConfig, DomainMetadata, UdpNic, METADATA_NS,
    METADATA_PREFIX,
};

/// The storage pool testbed keeps node images in, on every libvirt host.
pub const POOL_NAME: &str = "testbed";

/// Where a new [`POOL_NAME`] pool lives on a host reached through a
/// `…/system` URI.
pub const SYSTEM_POOL_DIR: &str = "/var/lib/libvirt/images/testbed";

/// The boot files of a node image, in the order of a store entry.
pub const IMAGE_FILES: [&str; 3] = ["kernel", "initramfs", "rootfs.erofs"];

/// Opens a connection to `uri`, after libvirt's event loop, which every
/// connection needs for its streams to be pumped ([`pump`]).
fn open_connection(uri: &str) -> Result<Connect, LibvirtError> {
    pump::ensure_event_loop().map_err(|reason| LibvirtError::EventLoop { reason })?;
    Connect::open(Some(uri)).map_err(|source| {
        let refused = [
            ErrorNumber::AuthUnavailable,
            ErrorNumber::AuthFailed,
            ErrorNumber::AuthCancelled,
            ErrorNumber::AccessDenied,
        ]
        .into_iter()
        .any(|code| is(&source, code));
        if refused {
            LibvirtError::Refused {
                uri: uri.to_string(),
                user: current_user(),
                source,
            }
        } else {
            LibvirtError::Connect {
                uri: uri.to_string(),
                source,
            }
        }
    })
}

/// The name of the user this process runs as (its uid if it has none).
fn current_user() -> String {
    let uid = rustix::process::getuid().as_raw();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Size of the chunks streamed to and from libvirt.
const CHUNK: usize = 256 * 1024;

/// Errors of the libvirt backend. Every message names the URI, and the
/// domain or volume concerned.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// The connection could not be opened.
    #[error("cannot connect to libvirt at {uri}: {source} (is the libvirt daemon running, and may this user manage it? see docs/libvirt.md)")]
    Connect {
        /// The URI.
        uri: String,
        /// What libvirt said.
        source: VirtError,
    },
    /// The daemon answered and refused this user (polkit, or its access
    /// control).
    #[error("libvirt at {uri} refuses {user}: {source}. Without root, the system daemon lets in only the group of its polkit rule: an administrator runs `scripts/setup-libvirt.sh --polkit-group GROUP` and adds {user} to GROUP (who then logs in again); or use a libvirt daemon of your own with --connect qemu:///session (docs/rootless.md)")]
    Refused {
        /// The URI.
        uri: String,
        /// Who was refused.
        user: String,
        /// What libvirt said.
        source: VirtError,
    },
    /// A call about one domain failed.
    #[error("libvirt at {uri}: cannot {action} domain {domain}: {source}")]
    Domain {
        /// The URI.
        uri: String,
        /// The domain's name.
        domain: String,
        /// What was being done.
        action: &'static str,
        /// What libvirt said.
        source: VirtError,
    },
    /// The domain exists but testbed did not create it.
    #[error("libvirt at {uri}: domain {domain} has no testbed metadata, so testbed did not create it; leaving it alone")]
    NotOurs {
        /// The URI.
        uri: String,
        /// The domain's name.
        domain: String,
    },
    /// The domain does not exist.
    #[error("libvirt at {uri}: no domain {domain}")]
    NoDomain {
        /// The URI.
        uri: String,
        /// The domain's name.
        domain: String,
    },
    /// The configuration cannot make a domain.
    #[error("libvirt at {uri}: invalid configuration for domain {domain}: {reason}")]
    InvalidConfig {
        /// The URI.
        uri: String,
        /// The domain's name.
        domain: String,
        /// What is wrong.
        reason: String,
    },
    /// A storage pool or volume call failed.
    #[error("libvirt at {uri}: cannot {action} {what}: {source}")]
    Storage {
        /// The URI.
        uri: String,
        /// The pool or volume.
        what: String,
        /// What was being done.
        action: &'static str,
        /// What libvirt said.
        source: VirtError,
    },
    /// A problem with the images to upload.
    #[error("libvirt at {uri}: cannot upload {what}: {reason}")]
    Image {
        /// The URI.
        uri: String,
        /// The image or file.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// libvirt's event loop, which pumps every stream, could not start.
    #[error("{reason}")]
    EventLoop {
        /// Why.
        reason: String,
    },
    /// A local file or thread could not be used.
    #[error("libvirt at {uri}: cannot {action} {path}: {source}")]
    Io {
        /// The URI.
        uri: String,
        /// What was being done.
        action: &'static str,
        /// The file, or what the thread was for.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// A testbed domain found on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestbedDomain {
    /// The domain's name.
    pub name: String,
    /// What testbed recorded in it.
    pub metadata: DomainMetadata,
    /// Whether it is running (or paused), as opposed to shut off.
    pub active: bool,
}

/// Where a node image's boot files are on a libvirt host, for
/// [`DomainConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostImage {
    /// The kernel.
    pub kernel: PathBuf,
    /// The stage-1 initramfs.
    pub initramfs: PathBuf,
    /// The root image.
    pub rootfs: PathBuf,
    /// Whether this call uploaded them (false: they were there already).
    pub uploaded: bool,
}

/// The agent's channel of one domain: `reader` and `writer` are two
/// handles of one local socket whose other end is pumped to and from a
/// libvirt stream, so they can be used from two threads, e.g.
/// `testbed_proto::Client::new(channel.reader, channel.writer)`.
#[derive(Debug)]
pub struct AgentChannel {
    /// Bytes from the agent.
    pub reader: UnixStream,
    /// Bytes to the agent.
    pub writer: UnixStream,
}

/// Whether `uri` reaches a libvirt daemon on another machine (or through a
/// network transport such as ssh or tcp): it has a host part and its
/// transport is not a local unix socket.
///
/// `qemu:///system` and `qemu+unix:///session` are local;
/// `qemu+ssh://root@127.0.0.1:2222/system` and `qemu+tcp://host/system`
/// are remote, even on loopback, because they take the remote code path.
pub fn uri_is_remote(uri: &str) -> bool {
    let transport = uri
        .split_once("://")
        .and_then(|(scheme, _)| scheme.split_once('+'))
        .map(|(_, t)| t);
    !uri_host(uri).is_empty() && transport != Some("unix")
}

/// The host part of a libvirt URI, without user and port (empty when it
/// has none, as in `qemu:///system`).
pub fn uri_host(uri: &str) -> String {
    let Some((_, rest)) = uri.split_once("://") else {
        return String::new();
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.rsplit_once(':').map_or(host, |(h, _)| h).to_owned()
}

/// The pool directory for `uri` when testbed has to create its pool:
/// [`SYSTEM_POOL_DIR`] for `…/system`, and for a local `…/session` the
/// folder beside libvirt's own session images. `None` for a remote session
/// (its home is unknown here): define a pool named [`POOL_NAME`] there.
pub fn default_pool_dir(uri: &str, home: Option<&Path>) -> Option<PathBuf> {
    let path = uri
        .split_once("://")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
        .map(|p| p.split('?').next().unwrap_or(p))
        .unwrap_or("");
    if path.trim_end_matches('/') == "/session" {
        if uri_is_remote(uri) {
            return None;
        }
        return home.map(|h| h.join(".local/share/libvirt/images/testbed"));
    }
    Some(PathBuf::from(SYSTEM_POOL_DIR))
}

/// One connection to one libvirt URI.
///
/// The connection serves the supervisor's calls only: every stream (a
/// node's console, its agent channel) opens a connection of its own, so
/// that no call waits behind a thread blocked in a stream's receive.
#[derive(Debug)]
pub struct LibvirtHost {
    uri: String,
    conn: Arc<Connect>,
}

/// The suffix of the empty volume whose creator uploads an entry.
const UPLOADING: &str = ".uploading";
/// The suffix of the empty volume that says an entry is complete.
const COMPLETE: &str = ".complete";
/// How long an upload may show no progress before a waiter takes it over.
const UPLOAD_STALE: std::time::Duration = std::time::Duration::from_secs(120);
/// How often a waiter looks at another process's upload.
const UPLOAD_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// A new volume's XML. World-readable: QEMU runs as its own user
/// (libvirt-qemu) and only reads these files; nothing in them is secret (no
/// per-node data is ever in an image).
fn volume_xml(name: &str, size: u64) -> String {
    format!(
        "<volume>\n  <name>{}</name>\n  <capacity unit='bytes'>{size}</capacity>\n  <allocation unit='bytes'>0</allocation>\n  <target>\n    <format type='raw'/>\n    <permissions>\n      <mode>0644</mode>\n    </permissions>\n  </target>\n</volume>\n",
        escape(name)
    )
}

/// One store entry's volumes in a host's pool.
struct Entry<'a> {
    host: &'a LibvirtHost,
    pool: &'a StoragePool,
    key: &'a str,
}

impl Entry<'_> {
    /// The volume of `file` (a boot file, or a suffix such as
    /// [`COMPLETE`]).
    fn name(&self, file: &str) -> String {
        if file.starts_with('.') {
            format!("{}{file}", self.key)
        } else {
            format!("{}-{file}", self.key)
        }
    }

    fn lookup(&self, name: &str) -> Result<Option<StorageVol>, LibvirtError> {
        match self.pool.lookup_storage_vol_by_name(name) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is(&e, ErrorNumber::NoStorageVolume) => Ok(None),
            Err(e) => Err(self.host.storage_err(&format!("volume {name}"), "look up")(
                e,
            )),
        }
    }

    /// The paths of the boot files when the entry is complete, with each
    /// volume of its local file's size.
    fn complete(&self, sizes: &[u64]) -> Result<Option<Vec<String>>, LibvirtError> {
        // A refresh sees what changed outside libvirt (a volume's file
        // removed by hand). While a volume's upload finishes (another
        // cluster's, often) libvirt refuses it: the pool is then in its own
        // hands and its list of volumes is already current.
        match self.pool.refresh(0) {
            Ok(_) => {}
            Err(e) if pool_busy(&e) => {}
            Err(e) => {
                let what = format!("storage pool {POOL_NAME}");
                return Err(self.host.storage_err(&what, "refresh")(e));
            }
        }
        if self.lookup(&self.name(COMPLETE))?.is_none() {
            return Ok(None);
        }
        let mut paths = Vec::new();
        for (file, size) in IMAGE_FILES.iter().zip(sizes) {
            let name = self.name(file);
            let Some(vol) = self.lookup(&name)? else {
                return Ok(None);
            };
            let what = format!("volume {name}");
            let info = vol.info().map_err(self.host.storage_err(&what, "query"))?;
            if info.capacity != *size {
                return Ok(None);
            }
            paths.push(vol.path().map_err(self.host.storage_err(&what, "query"))?);
        }
        Ok(Some(paths))
    }

    /// What changes while an upload goes on: which volumes of the entry
    /// exist, and how much of each boot file is written.
    fn progress(&self) -> Result<Vec<Option<u64>>, LibvirtError> {
        let mut seen = Vec::new();
        for file in [UPLOADING, COMPLETE].into_iter().chain(IMAGE_FILES) {
            let name = self.name(file);
            let vol = self.lookup(&name)?;
            seen.push(vol.map(|v| v.info().map(|i| i.allocation).unwrap_or(u64::MAX)));
        }
        Ok(seen)
    }

    /// Deletes whatever is there of the entry (but the lock) and uploads
    /// it; the boot files' paths.
    fn upload(&self, dir: &Path, sizes: &[u64]) -> Result<Vec<String>, LibvirtError> {
        let names =
            std::iter::once(self.name(COMPLETE)).chain(IMAGE_FILES.iter().map(|f| self.name(f)));
        for name in names {
            if let Some(vol) = self.lookup(&name)? {
                vol.delete(0).map_err(
                    self.host
                        .storage_err(&format!("volume {name}"), "delete leftover"),
                )?;
            }
        }
        let mut paths = Vec::new();
        for (file, size) in IMAGE_FILES.iter().zip(sizes) {
            let name = self.name(file);
            let vol = self.host.create_volume(self.pool, &name, *size)?;
            self.host.upload(&vol, &name, &dir.join(file), *size)?;
            paths.push(
                vol.path()
                    .map_err(self.host.storage_err(&format!("volume {name}"), "query"))?,
            );
        }
        self.host
            .create_volume(self.pool, &self.name(COMPLETE), 0)?;
        Ok(paths)
    }
}

fn is(e: &VirtError, code: ErrorNumber) -> bool {
    e.code().is(code)
}

/// libvirt's refusal to refresh a pool while one of its volumes has an
/// asynchronous job (an upload's end) running. It has no error number of
/// its own: an internal error with this message (libvirt's
/// `storagePoolRefresh`).
fn pool_busy(e: &VirtError) -> bool {
    is(e, ErrorNumber::InternalError) && e.message().contains("asynchronous jobs")
}

impl LibvirtHost {
    /// Connects to `uri` (read-write).
    pub fn connect(uri: &str) -> Result<LibvirtHost, LibvirtError> {
        // libvirt's default error handler prints every error on stderr;
        // errors come back as values here instead.
        virt::error::clear_error_callback();
        let conn = open_connection(uri)?;
        Ok(LibvirtHost {
            uri: uri.to_string(),
            conn: Arc::new(conn),
        })
    }

    /// The URI this host was connected with.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Whether the URI reaches the daemon over a network transport
    /// ([`uri_is_remote`]).
    pub fn is_remote(&self) -> bool {
        uri_is_remote(&self.uri)
    }

    fn domain_err(
        &self,
        domain: &str,
        action: &'static str,
    ) -> impl FnOnce(VirtError) -> LibvirtError {
        let (uri, domain) = (self.uri.clone(), domain.to_string());
        move |source| LibvirtError::Domain {
            uri,
            domain,
            action,
            source,
        }
    }

    fn storage_err(
        &self,
        what: &str,
        action: &'static str,
    ) -> impl FnOnce(VirtError) -> LibvirtError {
        let (uri, what) = (self.uri.clone(), what.to_string());
        move |source| LibvirtError::Storage {
            uri,
            what,
            action,
            source,
        }
    }

    fn io_err(&self, action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LibvirtError {
        let (uri, path) = (self.uri.clone(), path.to_path_buf());
        move |source| LibvirtError::Io {
            uri,
            action,
            path,
            source,
        }
    }

    // ---- images -------------------------------------------------------

    /// testbed's pool on this host, defined, built and started if needed.
    fn pool(&self) -> Result<StoragePool, LibvirtError> {
        let what = format!("storage pool {POOL_NAME}");
        let pool = match self.conn.lookup_storage_pool_by_name(POOL_NAME) {
            Ok(pool) => pool,
            Err(e) if is(&e, ErrorNumber::NoStoragePool) => {
                let home = std::env::var_os("HOME").map(PathBuf::from);
                let dir = default_pool_dir(&self.uri, home.as_deref()).ok_or_else(|| {
                    LibvirtError::Image {
                        uri: self.uri.clone(),
                        what: what.clone(),
                        reason: format!(
                            "no pool named {POOL_NAME} on this remote session daemon; define a directory pool named {POOL_NAME} there"
                        ),
                    }
                })?;
                let xml = format!(
                    "<pool type='dir'>\n  <name>{POOL_NAME}</name>\n  <target>\n    <path>{}</path>\n    <permissions>\n      <mode>0755</mode>\n    </permissions>\n  </target>\n</pool>\n",
                    escape(&dir.to_string_lossy())
                );
                let pool = self
                    .conn
                    .define_storage_pool_xml(&xml, 0)
                    .map_err(self.storage_err(&what, "define"))?;
                pool.build(0).map_err(self.storage_err(&what, "build"))?;
                pool.set_autostart(true)
                    .map_err(self.storage_err(&what, "set autostart of"))?;
                pool
            }
            Err(e) => return Err(self.storage_err(&what, "look up")(e)),
        };
        if !pool.is_active().map_err(self.storage_err(&what, "query"))? {
            pool.create(0).map_err(self.storage_err(&what, "start"))?;
        }
        Ok(pool)
    }

    /// Makes the boot files of the store entry `key` (a content hash; the
    /// folder `dir` holds `kernel`, `initramfs` and `rootfs.erofs`) present
    /// in testbed's storage pool on this host, and says where they are.
    ///
    /// Volumes are named `<key>-<file>`, so an entry is uploaded once per
    /// host whatever the roles or clusters using it. An upload can stop
    /// half-way (a crash, a lost connection), and libvirt cannot rename a
    /// volume into place; so a fourth, empty volume `<key>.complete` is
    /// created only after all three uploads finished, and the files count
    /// as present only when it exists and each volume has the local file's
    /// size. Otherwise whatever exists of the entry is deleted and uploaded
    /// again.
    ///
    /// Several clusters, of one user or of several, on this machine or on
    /// others, may want the same entry on the same host at once. The one
    /// that creates the empty volume `<key>.uploading` (libvirt creates a
    /// name once) uploads; the others wait for `<key>.complete`. An
    /// uploader that died leaves its `.uploading` behind: when neither it
    /// nor the entry's volumes changed for [`UPLOAD_STALE`], a waiter
    /// removes it and takes over.
    pub fn ensure_images(&self, key: &str, dir: &Path) -> Result<HostImage, LibvirtError> {
        self.ensure_images_within(key, dir, UPLOAD_STALE)
    }

    /// [`ensure_images`](Self::ensure_images), where an upload that
    /// shows no progress for `stale` is taken over (tests use seconds).
    pub fn ensure_images_within(
        &self,
        key: &str,
        dir: &Path,
        stale: std::time::Duration,
    ) -> Result<HostImage, LibvirtError> {
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(LibvirtError::Image {
                uri: self.uri.clone(),
                what: format!("image {key}"),
                reason: "a store key is made of letters, digits, - and _".into(),
            });
        }
        let mut sizes = Vec::new();
        for file in IMAGE_FILES {
            let local = dir.join(file);
            let meta = std::fs::metadata(&local).map_err(self.io_err("read", &local))?;
            sizes.push(meta.len());
        }
        let pool = self.pool()?;
        let entry = Entry {
            host: self,
            pool: &pool,
            key,
        };
        // What the waiter saw last, and since when.
        let mut seen: Option<(Vec<Option<u64>>, std::time::Instant)> = None;
        loop {
            if let Some(paths) = entry.complete(&sizes)? {
                return Ok(HostImage {
                    kernel: PathBuf::from(&paths[0]),
                    initramfs: PathBuf::from(&paths[1]),
                    rootfs: PathBuf::from(&paths[2]),
                    uploaded: false,
                });
            }
            let lock = entry.name(UPLOADING);
            let xml = volume_xml(&lock, 0);
            match StorageVol::create_xml(&pool, &xml, 0) {
                Ok(lock_vol) => {
                    let uploaded = entry.upload(dir, &sizes);
                    // Whatever happened: a waiter must not wait for it.
                    let unlocked = lock_vol
                        .delete(0)
                        .map_err(self.storage_err(&format!("volume {lock}"), "delete"));
                    let paths = uploaded?;
                    unlocked?;
                    return Ok(HostImage {
                        kernel: PathBuf::from(&paths[0]),
                        initramfs: PathBuf::from(&paths[1]),
                        rootfs: PathBuf::from(&paths[2]),
                        uploaded: true,
                    });
                }
                Err(e) if is(&e, ErrorNumber::StorageVolExist) => {
                    let now = entry.progress()?;
                    match &seen {
                        Some((then, since)) if *then == now && since.elapsed() >= stale => {
                            // Its uploader is gone: take over (if another
                            // waiter did first, the next round sees it).
                            if let Some(vol) = entry.lookup(&lock)? {
                                let _ = vol.delete(0);
                            }
                            seen = None;
                        }
                        Some((then, _)) if *then == now => {}
                        _ => seen = Some((now, std::time::Instant::now())),
                    }
                    std::thread::sleep(UPLOAD_POLL);
                }
                Err(e) => {
                    return Err(self.storage_err(&format!("volume {lock}"), "create")(e));
                }
            }
        }
    }

    /// Deletes the volumes of the store entry `key` from testbed's pool on
    /// this host (the marker first, so a concurrent
    /// [`ensure_images`](Self::ensure_images) never sees a complete entry
    /// with files missing). Domains still running from them keep their
    /// open files.
    pub fn remove_images(&self, key: &str) -> Result<(), LibvirtError> {
        let pool = self.pool()?;
        let names = std::iter::once(format!("{key}.complete"))
            .chain(IMAGE_FILES.iter().map(|f| format!("{key}-{f}")));
        for name in names {
            let what = format!("volume {name}");
            match pool.lookup_storage_vol_by_name(&name) {
                Ok(vol) => vol.delete(0).map_err(self.storage_err(&what, "delete"))?,
                Err(e) if is(&e, ErrorNumber::NoStorageVolume) => {}
                Err(e) => return Err(self.storage_err(&what, "look up")(e)),
            }
        }
        Ok(())
    }

    fn create_volume(
        &self,
        pool: &StoragePool,
        name: &str,
        size: u64,
    ) -> Result<StorageVol, LibvirtError> {
        let xml = volume_xml(name, size);
        StorageVol::create_xml(pool, &xml, 0)
            .map_err(self.storage_err(&format!("volume {name}"), "create"))
    }

    fn upload(
        &self,
        vol: &StorageVol,
        name: &str,
        local: &Path,
        size: u64,
    ) -> Result<(), LibvirtError> {
        let what = format!("volume {name}");
        let mut file = File::open(local).map_err(self.io_err("read", local))?;
        let stream =
            Stream::new(&self.conn, 0).map_err(self.storage_err(&what, "open a stream to"))?;
        vol.upload(&stream, 0, size, 0)
            .map_err(self.storage_err(&what, "upload to"))?;
        let mut buf = vec![0u8; CHUNK];
        let mut sent_total = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = stream.abort();
                    return Err(self.io_err("read", local)(e));
                }
            };
            let mut off = 0;
            while off < n {
                match stream.send(&buf[off..n]) {
                    Ok(k) if k > 0 => off += k as usize,
                    Ok(_) => {
                        let _ = stream.abort();
                        return Err(LibvirtError::Image {
                            uri: self.uri.clone(),
                            what,
                            reason: "the stream stopped accepting data".into(),
                        });
                    }
                    Err(e) => {
                        let _ = stream.abort();
                        return Err(self.storage_err(&what, "upload to")(e));
                    }
                }
            }
            sent_total += n as u64;
        }
        if sent_total != size {
            let _ = stream.abort();
            return Err(LibvirtError::Image {
                uri: self.uri.clone(),
                what,
                reason: format!(
                    "{} changed during the upload ({size} bytes expected, {sent_total} read)",
                    local.display()
                ),
            });
        }
        stream
            .finish()
            .map_err(self.storage_err(&what, "finish the upload to"))
    }

    // ---- domains ------------------------------------------------------

    fn lookup(&self, name: &str) -> Result<Option<Domain>, LibvirtError> {
        match self.conn.lookup_domain_by_name(name) {
            Ok(d) => Ok(Some(d)),
            Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(self.domain_err(name, "look up")(e)),
        }
    }

    fn metadata_of(
        &self,
        dom: &Domain,
        name: &str,
    ) -> Result<Option<DomainMetadata>, LibvirtError> {
        match dom.metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(METADATA_NS),
            0,
        ) {
            Ok(xml) => Ok(parse_metadata_element(&xml)),
            Err(e) if is(&e, ErrorNumber::NoDomainMetadata) => Ok(None),
            // Gone between listing and asking.
            Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(self.domain_err(name, "read the metadata of")(e)),
        }
    }

    /// The domain `name` if it exists and carries testbed's metadata;
    /// [`LibvirtError::NotOurs`] if it exists without.
    fn owned(&self, name: &str) -> Result<Option<(Domain, DomainMetadata)>, LibvirtError> {
        let Some(dom) = self.lookup(name)? else {
            return Ok(None);
        };
        match self.metadata_of(&dom, name)? {
            Some(meta) => Ok(Some((dom, meta))),
            None => Err(LibvirtError::NotOurs {
                uri: self.uri.clone(),
                domain: name.to_string(),
            }),
        }
    }

    /// Starts the domain of `config` and returns its name: a transient
    /// domain (`virDomainCreateXML`), created paused; its serial console
    /// is attached and copied to `config.console_log` (appended, on this
    /// machine) by a thread, and only then the guest runs, so the log has
    /// the whole boot. The thread ends when the domain does.
    pub fn start(&self, config: &DomainConfig) -> Result<String, LibvirtError> {
        let name = config.name();
        config
            .check()
            .map_err(|reason| LibvirtError::InvalidConfig {
                uri: self.uri.clone(),
                domain: name.clone(),
                reason,
            })?;
        let log = self.console_log(config)?;
        let mut flags = sys::VIR_DOMAIN_START_PAUSED;
        if config.autodestroy {
            flags |= sys::VIR_DOMAIN_START_AUTODESTROY;
        }
        let dom = self
            .conn
            .create_domain_xml(&domain_xml(config), flags)
            .map_err(self.domain_err(&name, "create"))?;
        self.attach_and_run(&dom, &name, log)?;
        Ok(name)
    }

    /// The console log of `config`'s domain, opened to append.
    fn console_log(&self, config: &DomainConfig) -> Result<File, LibvirtError> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.console_log)
            .map_err(self.io_err("open the console log", &config.console_log))
    }

    /// Attaches the console of the paused domain `dom` (named `name`) to
    /// `log` through a thread, then lets the guest run; a domain this
    /// fails for is destroyed.
    fn attach_and_run(&self, dom: &Domain, name: &str, mut log: File) -> Result<(), LibvirtError> {
        let name = name.to_owned();
        let attach = || -> Result<(), LibvirtError> {
            // The console stream has a connection of its own, as the agent
            // channel does, so that the supervisor's calls never share a
            // connection with a stream; it is pumped by libvirt's event
            // loop (see `pump`), and ends with the domain.
            let conn = open_connection(&self.uri)?;
            let own = conn
                .lookup_domain_by_name(&name)
                .map_err(self.domain_err(&name, "look up"))?;
            let stream = pump::nonblocking_stream(&conn)
                .map_err(self.domain_err(&name, "open a console stream for"))?;
            own.open_console(None, &stream, sys::VIR_DOMAIN_CONSOLE_FORCE)
                .map_err(self.domain_err(&name, "attach the console of"))?;
            // Ends at the end of the stream (the domain ended), on a
            // stream error, or when the log cannot be written.
            pump::pump_from(&stream, CHUNK, move |data| log.write_all(data).is_ok())
                .map_err(self.domain_err(&name, "watch the console stream of"))?;
            dom.resume().map_err(self.domain_err(&name, "resume"))
        };
        if let Err(e) = attach() {
            // Never leave a half-started domain behind.
            let _ = dom.destroy();
            return Err(e);
        }
        Ok(())
    }

    /// Saves the whole machine of the running testbed domain `name` into
    /// `file` (a path on the libvirt host), RAM and devices, and leaves
    /// the domain as it was (running or paused): an external memory
    /// snapshot without libvirt metadata, whose file is in the format of
    /// `virDomainSave`, so [`LibvirtHost::restore`] reads it. The root
    /// disk is read-only and not part of it.
    pub fn save_machine(&self, name: &str, file: &Path) -> Result<(), LibvirtError> {
        let dom = self.existing(name)?;
        let xml = format!(
            "<domainsnapshot>\n  <memory snapshot='external' file='{}'/>\n  <disks>\n    <disk name='vda' snapshot='no'/>\n  </disks>\n</domainsnapshot>\n",
            escape(&file.to_string_lossy())
        );
        dom.create_snapshot_xml(&xml, sys::VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
            .map_err(self.domain_err(name, "save the machine of"))?;
        Ok(())
    }

    /// Whether the guest of domain `name` holds the agent's port open, as
    /// libvirt last heard from QEMU; `None` when libvirt does not say.
    pub fn agent_port_connected(&self, name: &str) -> Result<Option<bool>, LibvirtError> {
        let xml = self
            .existing(name)?
            .xml_desc(0)
            .map_err(self.domain_err(name, "read the XML of"))?;
        Ok(agent_port_connected(&xml))
    }

    /// Starts the domain of `config` from the machine saved in `file` (a
    /// path on the libvirt host) by [`LibvirtHost::save_machine`]: the
    /// saved domain, with this run's metadata and switch ports
    /// ([`restore_xml`]), restored paused, its console attached to
    /// `config.console_log`, then running on from where it was saved.
    pub fn restore(&self, config: &DomainConfig, file: &Path) -> Result<String, LibvirtError> {
        let name = config.name();
        let path = file.to_string_lossy();
        let saved = self
            .conn
            .save_image_xml_desc(&path, sys::VIR_DOMAIN_SAVE_IMAGE_XML_SECURE)
            .map_err(self.domain_err(&name, "read the saved machine of"))?;
        let xml = restore_xml(&saved, config).map_err(|reason| LibvirtError::InvalidConfig {
            uri: self.uri.clone(),
            domain: name.clone(),
            reason,
        })?;
        let log = self.console_log(config)?;
        self.conn
            .restore_domain_flags(&path, Some(&xml), sys::VIR_DOMAIN_SAVE_PAUSED)
            .map_err(self.domain_err(&name, "restore"))?;
        let dom = self
            .conn
            .lookup_domain_by_name(&name)
            .map_err(self.domain_err(&name, "look up"))?;
        self.attach_and_run(&dom, &name, log)?;
        Ok(name)
    }

    /// Opens the agent's virtio-serial channel of domain `name`.
    ///
    /// The channel is a libvirt stream (`virDomainOpenChannel`), so it
    /// works for remote URIs too. Two threads pump it to and from a local
    /// socket pair; the returned handles are the caller's end. Opening
    /// again takes the channel over (the older stream is closed by
    /// libvirt, and its threads end). The threads also end when the domain
    /// ends; the pump towards the agent ends when the caller drops both
    /// handles.
    pub fn open_agent(&self, name: &str) -> Result<AgentChannel, LibvirtError> {
        if self.owned(name)?.is_none() {
            return Err(LibvirtError::NoDomain {
                uri: self.uri.clone(),
                domain: name.to_string(),
            });
        }
        // A connection of the channel's own: the streams of every node
        // (agents, consoles) and the supervisor's calls on one connection
        // share one socket and one client lock, and an agent's reply was
        // seen to wait minutes behind them under load. The stream holds
        // its connection open; it closes when the stream is freed.
        let conn = open_connection(&self.uri)?;
        let dom = conn
            .lookup_domain_by_name(name)
            .map_err(self.domain_err(name, "look up"))?;
        let stream = pump::nonblocking_stream(&conn)
            .map_err(self.domain_err(name, "open an agent stream for"))?;
        dom.open_channel(
            Some(testbed_proto::VIRTIO_PORT_NAME),
            &stream,
            sys::VIR_DOMAIN_CHANNEL_FORCE,
        )
        .map_err(self.domain_err(name, "open the agent channel of"))?;
        let what = PathBuf::from(format!("the agent channel of {name}"));
        let (ours, theirs) =
            UnixStream::pair().map_err(self.io_err("create a socket pair for", &what))?;
        let mut to_caller = theirs
            .try_clone()
            .map_err(self.io_err("clone a socket for", &what))?;
        let mut from_caller = theirs;
        // From the guest: the event loop hands what the stream has to a
        // thread of this channel, which writes it to the caller, so that a
        // caller slow to read never stalls the event loop.
        let (chunks, received) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name(format!("agent-out-{name}"))
            .spawn(move || {
                for chunk in received {
                    if to_caller.write_all(&chunk).is_err() {
                        break;
                    }
                }
                // The stream ended (its pump dropped the sender) or the
                // caller is gone: the caller reads the end.
                let _ = to_caller.shutdown(std::net::Shutdown::Write);
            })
            .map_err(self.io_err("start a thread for", &what))?;
        let closer = pump::pump_from(&stream, CHUNK, move |data| {
            chunks.send(data.to_vec()).is_ok()
        })
        .map_err(self.domain_err(name, "watch the agent stream of"))?;
        // To the guest: a send on a non-blocking remote stream queues the
        // data and never waits for the guest, so a thread reading the
        // caller's end does it; the caller's end closes the stream.
        std::thread::Builder::new()
            .name(format!("agent-in-{name}"))
            .spawn(move || {
                let mut buf = vec![0u8; CHUNK];
                'pump: loop {
                    let n = match from_caller.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    let mut off = 0;
                    while off < n {
                        if closer.is_closed() {
                            break 'pump;
                        }
                        match stream.send(&buf[off..n]) {
                            Ok(k) if k > 0 => off += k as usize,
                            // Would block: libvirt's queue is full.
                            Ok(-2) => std::thread::sleep(std::time::Duration::from_millis(2)),
                            _ => break 'pump,
                        }
                    }
                }
                closer.close();
            })
            .map_err(self.io_err("start a thread for", &what))?;
        let writer = ours
            .try_clone()
            .map_err(self.io_err("clone a socket for", &what))?;
        Ok(AgentChannel {
            reader: ours,
            writer,
        })
    }

    /// Destroys (stops at once) the testbed domain `name`; being transient,
    /// it is then gone. A domain that does not exist is not an error; one
    /// without testbed's metadata is ([`LibvirtError::NotOurs`]) and is
    /// left alone.
    pub fn destroy(&self, name: &str) -> Result<(), LibvirtError> {
        let Some((dom, _)) = self.owned(name)? else {
            return Ok(());
        };
        match dom.destroy() {
            Ok(()) => Ok(()),
            // It ended by itself in the meantime.
            Err(e) if is(&e, ErrorNumber::NoDomain) || is(&e, ErrorNumber::OperationInvalid) => {
                Ok(())
            }
            Err(e) => Err(self.domain_err(name, "destroy")(e)),
        }
    }

    fn existing(&self, name: &str) -> Result<Domain, LibvirtError> {
        match self.owned(name)? {
            Some((dom, _)) => Ok(dom),
            None => Err(LibvirtError::NoDomain {
                uri: self.uri.clone(),
                domain: name.to_string(),
            }),
        }
    }

    /// Pauses the testbed domain `name` (its vCPUs stop; the fault "pause").
    pub fn suspend(&self, name: &str) -> Result<(), LibvirtError> {
        self.existing(name)?
            .suspend()
            .map_err(self.domain_err(name, "suspend"))
    }

    /// Resumes the paused testbed domain `name`.
    pub fn resume(&self, name: &str) -> Result<(), LibvirtError> {
        self.existing(name)?
            .resume()
            .map_err(self.domain_err(name, "resume"))
    }

    /// Whether the domain `name` exists and runs (paused counts as
    /// running). A domain ends when the guest powers off, reboots or
    /// crashes (all `destroy`), or is destroyed; being transient it then
    /// disappears, so polling this is how an end is noticed.
    pub fn is_running(&self, name: &str) -> Result<bool, LibvirtError> {
        let Some(dom) = self.lookup(name)? else {
            return Ok(false);
        };
        match dom.is_active() {
            Ok(active) => Ok(active),
            Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(false),
            Err(e) => Err(self.domain_err(name, "query")(e)),
        }
    }

    /// The domains testbed created for `cluster` on this host (running or
    /// not), by their metadata; domains without testbed's metadata, or of
    /// another cluster, are not listed. Sorted by name.
    pub fn list(&self, cluster: &str) -> Result<Vec<TestbedDomain>, LibvirtError> {
        let all = self
            .conn
            .list_all_domains(0)
            .map_err(self.domain_err("*", "list"))?;
        let mut found = Vec::new();
        for dom in all {
            let name = match dom.name() {
                Ok(n) => n,
                Err(_) => continue,
            };
            let Some(metadata) = self.metadata_of(&dom, &name)? else {
                continue;
            };
            if metadata.cluster != cluster {
                continue;
            }
            let active = dom.is_active().unwrap_or(false);
            found.push(TestbedDomain {
                name,
                metadata,
                active,
            });
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }
}
