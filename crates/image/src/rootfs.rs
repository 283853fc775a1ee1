//! The root filesystem of one image: mmdebstrap from exactly the locked
//! package versions, then the role's static files and the agent, then the
//! normalization that makes two builds bit-identical.
//!
//! Exact versions: mmdebstrap's `apt` variant installs the essential set by
//! `apt-get dist-upgrade` on an empty system, which takes each package's
//! candidate version. An apt preferences file pinning every locked version at
//! priority 1001 (installed by a setup hook, removed afterwards) makes those
//! candidates the locked ones, and every locked package is also passed as
//! `--include=name=version`. The result is checked against the lock by
//! reading the image's dpkg status.
//!
//! The only source mmdebstrap sees is a local flat repository holding
//! exactly the locked `.deb`s, each checked against the lock's digest
//! ([`crate::debs::local_repo`]): the build reads no network, and where a
//! package came from (cache, vendor folder, mirror, snapshot archive) cannot
//! change the image. mmdebstrap's `file-mirror-automount` hook makes the
//! repository visible inside the chroot for the packages apt installs there.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use testbed_proto::install;

use crate::error::{ImageError, IoContext, Result};
use crate::lock::{LockedPackage, RoleLock};
use crate::spec::StaticFile;
use crate::tools::{self, MMDEBSTRAP};

/// Where the guest agent is installed in every image: the path its unit's
/// `ExecStart` names, so both come from `testbed_proto::install`.
pub const AGENT_PATH: &str = install::INSTALL_PATH;

/// Where the agent's unit is installed.
pub const AGENT_UNIT_PATH: &str = "/etc/systemd/system/testbed-agent.service";

/// Units that stay enabled: the systemd defaults that cost nothing at boot.
/// Every other unit enabled by a package's maintainer scripts is disabled,
/// because activation starts the role's services and, under TCG, timers
/// such as `apt-daily` only slow the nodes down. `getty@tty1` is not kept:
/// VMs have no display, and the serial console gets its getty from
/// systemd's generator (`console=ttyS0`).
const KEEP_ENABLED: &[&str] = &["remote-fs.target"];

/// Units masked in every image (docs/boot.md, "Units trimmed in every
/// image"): each costs boot time under TCG and none is of use to a test
/// node.
/// `dev-hugepages.mount`, `sys-fs-fuse-connections.mount` and
/// `sys-kernel-config.mount` are kept: roles may need hugepages, FUSE or
/// configfs, and an image cannot tell whether they do.
pub const MASKED: &[&str] = &[
    // Starts getty@tty2..6 when dbus/logind are absent: five gettys on
    // consoles nobody sees.
    "getty-static.service",
    // Nothing persistent to collect from in a VM.
    "systemd-pstore.service",
    // debugfs and tracefs: unused, ~1 s of contended CPU each under TCG.
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
];

/// journald's drop-in: the root's writable layer is a tmpfs, so a
/// persistent journal has nowhere to persist to, and the flush to
/// `/var/log/journal` is work for nothing.
pub const JOURNALD_DROPIN: (&str, &str) = (
    "/etc/systemd/journald.conf.d/testbed.conf",
    "# Written by testbed: the root's writable layer is a tmpfs.\n[Journal]\nStorage=volatile\n",
);

/// sshd checks its configuration (`sshd -t`, Debian's `ExecStartPre=`)
/// before it starts: under TCG that doubles the start of the one service
/// every node runs, on the path of every activation. sshd itself refuses a
/// bad configuration or key, and activation then names the failed unit
/// with its journal, so the check adds nothing.
pub const SSH_DROPIN: (&str, &str) = (
    "/etc/systemd/system/ssh.service.d/testbed.conf",
    "# Written by testbed: sshd -t before each start doubles it under TCG;\n\
     # sshd refuses a bad configuration itself.\n[Service]\nExecStartPre=\n",
);

/// mmdebstrap's hooks that make `file://` repositories visible inside the
/// chroot (Debian's mmdebstrap package ships them).
const AUTOMOUNT_HOOKS: &str = "/usr/share/mmdebstrap/hooks/file-mirror-automount";

/// What mmdebstrap needs for one role.
#[derive(Debug)]
pub(crate) struct Bootstrap<'a> {
    pub role: &'a str,
    pub lock: &'a RoleLock,
    /// The local repository of the locked packages.
    pub repo: &'a Path,
    /// Lines for `debconf-set-selections`, given once the essential
    /// packages are in and before the role's packages are configured.
    pub debconf: &'a [String],
    /// mmdebstrap's unshare mode (as a user, crate::rootless) rather than
    /// its root mode.
    pub unshare: bool,
}

/// Single-quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs mmdebstrap into `target` (which must not exist); `work` holds the
/// pin file and mmdebstrap's log.
pub(crate) fn bootstrap(b: &Bootstrap<'_>, target: &Path, work: &Path) -> Result<()> {
    let mmdebstrap = tools::find(MMDEBSTRAP)?;
    let prefs = work.join("preferences");
    let mut pins = String::new();
    for p in &b.lock.packages {
        pins.push_str(&format!(
            "Package: {}\nPin: version {}\nPin-Priority: 1001\n\n",
            p.name, p.version
        ));
    }
    fs::write(&prefs, pins).at("cannot write", &prefs)?;
    // Read by the hooks, which run as the subordinate root in unshare mode.
    fs::set_permissions(&prefs, fs::Permissions::from_mode(0o644))
        .at("cannot set the mode of", &prefs)?;
    let includes: Vec<String> = b
        .lock
        .packages
        .iter()
        .map(|p| format!("{}={}", p.name, p.version))
        .collect();
    let prefs_q = sh_quote(&prefs.to_string_lossy());
    let mut cmd = Command::new(mmdebstrap);
    // Either mode gives the same tree: the unshare mode's subordinate root
    // owns on the host what root owns in a root build, and the steps after
    // this one see it through the same mapping (crate::rootless).
    cmd.arg(if b.unshare {
        "--mode=unshare"
    } else {
        "--mode=root"
    })
    .arg("--variant=apt")
    .arg("--format=directory")
    .arg(format!("--architectures={}", b.lock.architecture))
    .arg(format!("--hook-dir={AUTOMOUNT_HOOKS}"))
    // fsync after every file only slows the build: the result is hashed
    // and renamed into the store afterwards.
    .arg("--dpkgopt=force-unsafe-io")
    .arg(format!("--include={}", includes.join(",")))
    .arg(format!(
        "--setup-hook=cp {prefs_q} \"$1/etc/apt/preferences.d/testbed\""
    ));
    if !b.debconf.is_empty() {
        let answers = work.join("debconf");
        let mut text = b.debconf.join("\n");
        text.push('\n');
        fs::write(&answers, text).at("cannot write", &answers)?;
        fs::set_permissions(&answers, fs::Permissions::from_mode(0o644))
            .at("cannot set the mode of", &answers)?;
        // The hook runs on the host, so the redirection reads the host's
        // file; debconf is among the essential packages of every variant.
        cmd.arg(format!(
            "--essential-hook=chroot \"$1\" debconf-set-selections < {}",
            sh_quote(&answers.to_string_lossy())
        ));
    }
    // The automount hook bind-mounts the repository at the same path inside
    // the chroot, creating its directories there, and leaves them behind.
    // Seen through a symlink in a fresh folder of /tmp, which normalization
    // empties, the repository leaves no trace in the image whatever the
    // store's path.
    let link_dir = tempfile::Builder::new()
        .prefix(".testbed-repo-")
        .tempdir_in("/tmp")
        .at("cannot create a temporary directory in", "/tmp")?;
    fs::set_permissions(link_dir.path(), fs::Permissions::from_mode(0o755))
        .at("cannot set the mode of", link_dir.path())?;
    let link = link_dir.path().join("repo");
    std::os::unix::fs::symlink(b.repo, &link).at("cannot create", &link)?;
    cmd.arg(&b.lock.suite)
        .arg(target)
        .arg(format!("deb [trusted=yes] file://{} ./", link.display()));
    // A clean, fixed environment: maintainer scripts see the same locale,
    // time zone and epoch on every host. `INITRD=No` stops the kernel's
    // postinst from generating an initramfs-tools initrd, which we do not
    // use (the stage-1 is our own) and which takes seconds to build.
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .env("LC_ALL", "C.UTF-8")
        .env("TZ", "UTC")
        .env("SOURCE_DATE_EPOCH", b.lock.source_date_epoch.to_string())
        .env("INITRD", "No")
        .env("DEBIAN_FRONTEND", "noninteractive");
    if let Some(v) = std::env::var_os("TMPDIR") {
        cmd.env("TMPDIR", v);
    }
    let out = cmd.output().map_err(|e| ImageError::Command {
        what: format!("mmdebstrap for role {}", b.role),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    let log = work.join("mmdebstrap.log");
    fs::write(&log, &out.stderr).at("cannot write", &log)?;
    if !out.status.success() {
        return Err(ImageError::Command {
            what: format!("mmdebstrap for role {}", b.role),
            status: out.status.to_string(),
            stderr: tools::tail(&out.stderr, 25),
        });
    }
    Ok(())
}

/// Checks that the image's dpkg status lists exactly the locked packages.
pub(crate) fn check_installed(role: &str, rootfs: &Path, locked: &[LockedPackage]) -> Result<()> {
    let status = rootfs.join("var/lib/dpkg/status");
    let text = fs::read_to_string(&status).at("cannot read", &status)?;
    let installed = parse_status(&text);
    let want: BTreeMap<&str, &str> = locked
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    let mismatch = |detail: String| ImageError::RootfsMismatch {
        role: role.into(),
        detail,
    };
    for (name, version) in &want {
        match installed.get(*name) {
            None => return Err(mismatch(format!("`{name}` is not installed"))),
            Some(v) if v != version => {
                return Err(mismatch(format!(
                    "`{name}` is installed at {v}, the lock says {version}"
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = installed.keys().find(|n| !want.contains_key(n.as_str())) {
        return Err(mismatch(format!(
            "`{extra}` is installed but not in the lock"
        )));
    }
    Ok(())
}

/// Installed packages and versions from a dpkg status file.
fn parse_status(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let mut name = None;
        let mut version = None;
        let mut installed = false;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        if let (Some(n), Some(v), true) = (name, version, installed) {
            out.insert(n, v);
        }
    }
    out
}

/// Resolves `guest` (an absolute guest path) to a host path inside
/// `rootfs`, following the image's symlinks as the guest would, so that an
/// absolute symlink in the image can never make us write outside it.
pub(crate) fn resolve_in_root(rootfs: &Path, guest: &str) -> std::result::Result<PathBuf, String> {
    let mut parts: Vec<String> = Vec::new();
    let mut todo: Vec<String> = guest_components(guest)?.into_iter().rev().collect();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            parts.pop();
            continue;
        }
        let host = rootfs.join(parts.iter().collect::<PathBuf>()).join(&part);
        // The last component is what we create; only intermediate symlinks
        // are followed.
        if !todo.is_empty() {
            if let Ok(target) = fs::read_link(&host) {
                hops += 1;
                if hops > 40 {
                    return Err("too many levels of symbolic links".into());
                }
                let target = target.to_string_lossy().to_string();
                if target.starts_with('/') {
                    parts.clear();
                }
                for c in target.split('/').rev() {
                    if !c.is_empty() && c != "." {
                        todo.push(c.to_string());
                    }
                }
                continue;
            }
        }
        parts.push(part);
    }
    Ok(rootfs.join(parts.iter().collect::<PathBuf>()))
}

fn guest_components(guest: &str) -> std::result::Result<Vec<String>, String> {
    let path = Path::new(guest);
    if !path.is_absolute() {
        return Err("the path must be absolute".into());
    }
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("the path must not contain `..`".into()),
            Component::Normal(n) => out.push(n.to_string_lossy().to_string()),
            Component::Prefix(_) => return Err("not a Unix path".into()),
        }
    }
    if out.is_empty() {
        return Err("the path names the root directory".into());
    }
    Ok(out)
}

/// Looks `name` up in the image's `/etc/passwd` or `/etc/group`.
fn lookup_id(rootfs: &Path, db: &str, name: &str) -> Option<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Some(n);
    }
    let text = fs::read_to_string(rootfs.join("etc").join(db)).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.next()?;
        f.next()?.parse().ok()
    })
}

/// Writes the role's static files and the agent into the image.
fn install_files(
    role: &str,
    rootfs: &Path,
    files: &[StaticFile],
    agent: Option<&Path>,
) -> Result<()> {
    let mut all: Vec<(String, Vec<u8>, u32, Option<String>)> = files
        .iter()
        .map(|f| (f.path.clone(), f.content.clone(), f.mode, f.owner.clone()))
        .collect();
    if let Some(agent) = agent {
        let bytes = fs::read(agent).at("cannot read the agent binary", agent)?;
        all.push((AGENT_PATH.to_string(), bytes, 0o755, None));
    }
    for (guest, content, mode, owner) in all {
        let bad = |message: String| ImageError::BadStaticFile {
            role: role.into(),
            path: guest.clone(),
            message,
        };
        let host = resolve_in_root(rootfs, &guest).map_err(bad)?;
        let (uid, gid) = match owner.as_deref() {
            None => (0, 0),
            Some(spec) => {
                let (user, group) = spec.split_once(':').unwrap_or((spec, ""));
                let uid = lookup_id(rootfs, "passwd", user)
                    .ok_or_else(|| bad(format!("owner `{user}` does not exist in the image")))?;
                let gid = if group.is_empty() {
                    // Like chown's `user:`, the user's primary group.
                    let text = fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
                    text.lines()
                        .find_map(|l| {
                            let f: Vec<&str> = l.split(':').collect();
                            (f.len() > 3 && f[2] == uid.to_string())
                                .then(|| f[3].parse().ok())
                                .flatten()
                        })
                        .unwrap_or(0)
                } else {
                    lookup_id(rootfs, "group", group).ok_or_else(|| {
                        bad(format!("group `{group}` does not exist in the image"))
                    })?
                };
                (uid, gid)
            }
        };
        if let Some(parent) = host.parent() {
            create_dirs(rootfs, parent)?;
        }
        if host.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            return Err(bad("a directory of that name exists in the image".into()));
        }
        // Replace rather than write through: the path may be a symlink in
        // the image (e.g. /etc/resolv.conf), which must not be followed.
        let _ = fs::remove_file(&host);
        fs::write(&host, &content).at("cannot write", &host)?;
        fs::set_permissions(&host, fs::Permissions::from_mode(mode & 0o7777))
            .at("cannot set the mode of", &host)?;
        std::os::unix::fs::lchown(&host, Some(uid), Some(gid)).at("cannot chown", &host)?;
        // chown clears set-id bits; put them back.
        if mode & 0o7000 != 0 {
            fs::set_permissions(&host, fs::Permissions::from_mode(mode & 0o7777))
                .at("cannot set the mode of", &host)?;
        }
    }
    Ok(())
}

/// Creates `dir` (a host path inside `rootfs`) and its missing parents,
/// each with mode 0755: not the builder's umask, which would make the
/// image depend on the shell it was started from.
fn create_dirs(rootfs: &Path, dir: &Path) -> Result<()> {
    if dir.exists() || dir == rootfs {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(rootfs, parent)?;
    }
    fs::create_dir(dir).at("cannot create", dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).at("cannot set the mode of", dir)
}

/// Everything the builder does to a tree between mmdebstrap and
/// [`normalize`], in this order:
///
/// 1. the trims of docs/boot.md ([`MASKED`] units masked, journald's
///    [`JOURNALD_DROPIN`], sshd's [`SSH_DROPIN`]), first so that a role's
///    static file at one of those paths wins;
/// 2. the role's static files and the agent binary;
/// 3. every unit enabled by maintainer scripts disabled (activation starts
///    the role's services);
/// 4. when an agent is installed, its unit, enabled for the targets its
///    `[Install]` section names: last, so nothing above can disable or
///    overwrite it.
pub fn customize(
    role: &str,
    rootfs: &Path,
    files: &[StaticFile],
    agent: Option<&Path>,
) -> Result<()> {
    trim_units(role, rootfs)?;
    install_files(role, rootfs, files, agent)?;
    disable_services(rootfs)?;
    if agent.is_some() {
        install_agent_unit(role, rootfs)?;
    }
    Ok(())
}

/// What goes at a path the builder writes itself.
enum SystemFile<'a> {
    File(&'a [u8]),
    Symlink(&'a str),
}

/// Writes a root-owned file (mode 0644) or symlink at `guest`, replacing
/// whatever file or link is there.
fn put_system_file(role: &str, rootfs: &Path, guest: &str, what: SystemFile<'_>) -> Result<()> {
    let bad = |message: String| ImageError::BadSystemFile {
        role: role.into(),
        path: guest.into(),
        message,
    };
    let host = resolve_in_root(rootfs, guest).map_err(bad)?;
    if let Some(parent) = host.parent() {
        create_dirs(rootfs, parent)?;
    }
    if host.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Err(bad("a directory of that name exists in the image".into()));
    }
    let _ = fs::remove_file(&host);
    match what {
        SystemFile::File(content) => {
            fs::write(&host, content).at("cannot write", &host)?;
            fs::set_permissions(&host, fs::Permissions::from_mode(0o644))
                .at("cannot set the mode of", &host)?;
        }
        SystemFile::Symlink(target) => {
            std::os::unix::fs::symlink(target, &host).at("cannot create the link", &host)?;
        }
    }
    std::os::unix::fs::lchown(&host, Some(0), Some(0)).at("cannot chown", &host)
}

/// Masks [`MASKED`] (a link to `/dev/null` in `/etc/systemd/system`, which
/// overrides the unit wherever it is installed and whoever wants it) and
/// writes journald's and sshd's drop-ins.
fn trim_units(role: &str, rootfs: &Path) -> Result<()> {
    for unit in MASKED {
        let guest = format!("/etc/systemd/system/{unit}");
        put_system_file(role, rootfs, &guest, SystemFile::Symlink("/dev/null"))?;
    }
    for (path, content) in [JOURNALD_DROPIN, SSH_DROPIN] {
        put_system_file(role, rootfs, path, SystemFile::File(content.as_bytes()))?;
    }
    Ok(())
}

/// The targets a unit's `[Install]` section says it is wanted by.
fn wanted_by(unit: &str) -> Vec<&str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("WantedBy="))
        .flat_map(str::split_whitespace)
        .collect()
}

/// Installs the agent's unit and enables it the way `systemctl enable`
/// would: a link in `<target>.wants` for each `WantedBy=` target
/// (`sysinit.target`, so the agent starts before the rest of the boot and
/// can report on a boot that is stuck).
fn install_agent_unit(role: &str, rootfs: &Path) -> Result<()> {
    let unit = install::SERVICE_UNIT;
    put_system_file(
        role,
        rootfs,
        AGENT_UNIT_PATH,
        SystemFile::File(unit.as_bytes()),
    )?;
    let name = AGENT_UNIT_PATH
        .rsplit('/')
        .next()
        .unwrap_or(AGENT_UNIT_PATH);
    let targets = wanted_by(unit);
    if targets.is_empty() {
        return Err(ImageError::BadSystemFile {
            role: role.into(),
            path: AGENT_UNIT_PATH.into(),
            message: "the agent's unit has no `WantedBy=`, so nothing would start it".into(),
        });
    }
    for target in targets {
        let link = format!("/etc/systemd/system/{target}.wants/{name}");
        put_system_file(role, rootfs, &link, SystemFile::Symlink(AGENT_UNIT_PATH))?;
    }
    Ok(())
}

/// The runlevel folders whose `S??name` links make systemd's SysV
/// generator start an init script that has no native unit (Debian's
/// `gridengine-master`, `exim4`) in `multi-user.target` or
/// `graphical.target`.
const SYSV_START_DIRS: &[&str] = &["etc/rc2.d", "etc/rc3.d", "etc/rc4.d", "etc/rc5.d"];

/// Disables every unit enabled by maintainer scripts except
/// [`KEEP_ENABLED`], and every SysV init script's start links (those
/// `update-rc.d` made), so a package's daemon never starts at boot before
/// activation has written its configuration; returns the removed links
/// (guest paths), sorted.
fn disable_services(rootfs: &Path) -> Result<Vec<String>> {
    let mut removed = disable_sysv_start_links(rootfs)?;
    let system = rootfs.join("etc/systemd/system");
    let Ok(dirs) = sorted_entries(&system) else {
        return Ok(removed);
    };
    for (dir, name) in dirs {
        // Only `.wants`/`.requires` links enable a unit; other links in
        // /etc/systemd/system are aliases or masks and stay.
        if !(name.ends_with(".wants") || name.ends_with(".requires")) || !dir.is_dir() {
            continue;
        }
        for (link, unit) in sorted_entries(&dir).at("cannot list", &dir)? {
            if KEEP_ENABLED.contains(&unit.as_str()) {
                continue;
            }
            fs::remove_file(&link).at("cannot remove", &link)?;
            removed.push(format!("/etc/systemd/system/{name}/{unit}"));
        }
        if fs::read_dir(&dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
        {
            fs::remove_dir(&dir).at("cannot remove", &dir)?;
        }
    }
    removed.sort();
    Ok(removed)
}

/// The entries of `dir`, each as its path and file name, sorted by name.
fn sorted_entries(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut entries: Vec<(PathBuf, String)> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
        .collect();
    entries.sort();
    Ok(entries)
}

/// Removes the `S??name` links of [`SYSV_START_DIRS`]; the `K` links and the
/// scripts stay, so `systemctl start name` still works at activation.
fn disable_sysv_start_links(rootfs: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for dir in SYSV_START_DIRS {
        let Ok(links) = sorted_entries(&rootfs.join(dir)) else {
            continue;
        };
        for (link, name) in links {
            let is_link = link.symlink_metadata().map(|m| m.file_type().is_symlink());
            if name.starts_with('S') && is_link.unwrap_or(false) {
                fs::remove_file(&link).at("cannot remove", &link)?;
                removed.push(format!("/{dir}/{name}"));
            }
        }
    }
    Ok(removed)
}

/// Files that differ between builds or between hosts, or that are ours
/// rather than the image's, removed after the build. Paths are relative to
/// the root.
const REMOVE: &[&str] = &[
    // Copied from the host by mmdebstrap; activation writes the node's own.
    "etc/resolv.conf",
    // Our pins and mmdebstrap's copies of the options we passed.
    "etc/apt/preferences.d/testbed",
    "etc/apt/apt.conf.d/99mmdebstrap",
    "etc/dpkg/dpkg.cfg.d/99mmdebstrap",
    // Lock files and backups written with the time of the build.
    "etc/.pwd.lock",
    "etc/passwd-",
    "etc/group-",
    "etc/shadow-",
    "etc/gshadow-",
    "etc/subuid-",
    "etc/subgid-",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/cache/debconf/passwords.dat-old",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/statoverride-old",
    "var/lib/dpkg/lock",
    "var/lib/dpkg/lock-frontend",
    "var/lib/dpkg/triggers/Lock",
    "var/cache/apt/archives/lock",
    "var/lib/apt/lists/lock",
    // Regenerated at boot; a stale one could hide a missing library.
    "var/cache/ldconfig/aux-cache",
    // Secrets that maintainer scripts generate at random (munge's postinst
    // runs `mungekey`): per cluster, so the composition's `[secrets]`
    // provide them at activation, and never baked into a shared image.
    // SSH host keys are removed below, by pattern.
    "etc/munge/munge.key",
    // Identity: per node, generated at first boot or at activation.
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "var/lib/systemd/credential.secret",
];

/// Directories whose contents are emptied (the directories stay).
const EMPTY: &[&str] = &[
    // devtmpfs is mounted over it in VMs and the runtime provides it in
    // containers; device nodes in a container archive only cause trouble.
    "dev",
    "run",
    "tmp",
    "var/tmp",
    "var/cache/apt",
    "var/lib/apt/lists",
];

/// Directories whose files are removed but whose folders stay: packages
/// create their log folders (`/var/log/munge`, with its owner and mode) at
/// install time, and their services refuse to start without them.
const EMPTY_FILES: &[&str] = &["var/log"];

/// Removes every non-directory under `dir`, keeping the folders.
fn remove_files_keep_dirs(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).at("cannot list", dir)? {
        let path = entry.at("cannot list", dir)?.path();
        let meta = path.symlink_metadata().at("cannot stat", &path)?;
        if meta.is_dir() {
            remove_files_keep_dirs(&path)?;
        } else {
            fs::remove_file(&path).at("cannot remove", &path)?;
        }
    }
    Ok(())
}

/// Makes the tree deterministic: removes the files above, empties
/// `machine-id` (systemd then treats the boot as a first boot and makes a
/// transient id), resets apt's sources (they name the build host's
/// mirrors), removes SSH host keys (activation generates them per node),
/// pins `/etc/shadow`'s password-change dates and clamps every timestamp to
/// `epoch`.
pub fn normalize(rootfs: &Path, epoch: u64) -> Result<()> {
    for rel in REMOVE {
        let p = rootfs.join(rel);
        if p.symlink_metadata().is_ok() {
            fs::remove_file(&p).at("cannot remove", &p)?;
        }
    }
    for rel in EMPTY {
        let dir = rootfs.join(rel);
        if !dir.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&dir).at("cannot list", &dir)? {
            let path = entry.at("cannot list", &dir)?.path();
            let meta = path.symlink_metadata().at("cannot stat", &path)?;
            if meta.is_dir() {
                fs::remove_dir_all(&path).at("cannot remove", &path)?;
            } else {
                fs::remove_file(&path).at("cannot remove", &path)?;
            }
        }
    }
    for rel in EMPTY_FILES {
        let dir = rootfs.join(rel);
        if dir.is_dir() {
            remove_files_keep_dirs(&dir)?;
        }
    }
    // apt in the image is for debugging; its sources would name the build
    // host's mirrors, so they are reduced to a comment.
    let sources = rootfs.join("etc/apt/sources.list");
    if sources.exists() {
        fs::write(
            &sources,
            "# The image was built by testbed from pinned packages; add a source to use apt.\n",
        )
        .at("cannot write", &sources)?;
    }
    for rel in ["etc/apt/sources.list.d"] {
        let dir = rootfs.join(rel);
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                fs::remove_file(e.path()).at("cannot remove", e.path())?;
            }
        }
    }
    let machine_id = rootfs.join("etc/machine-id");
    fs::write(&machine_id, b"").at("cannot write", &machine_id)?;
    let hostname = rootfs.join("etc/hostname");
    fs::write(&hostname, b"localhost\n").at("cannot write", &hostname)?;
    let ssh = rootfs.join("etc/ssh");
    if let Ok(rd) = fs::read_dir(&ssh) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("ssh_host_") {
                fs::remove_file(e.path()).at("cannot remove", e.path())?;
            }
        }
    }
    normalize_shadow(&rootfs.join("etc/shadow"), epoch)?;
    clamp_mtimes(rootfs, epoch)
}

/// Sets the "last password change" field of `/etc/shadow` to the epoch's
/// day: users created by maintainer scripts otherwise get the build's date.
fn normalize_shadow(path: &Path, epoch: u64) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let day = (epoch / 86_400).to_string();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut f: Vec<&str> = line.split(':').collect();
        if f.len() > 2 && !f[2].is_empty() {
            f[2] = &day;
        }
        out.push_str(&f.join(":"));
        out.push('\n');
    }
    if out != text {
        let mode = fs::metadata(path).at("cannot stat", path)?.permissions();
        fs::write(path, out).at("cannot write", path)?;
        fs::set_permissions(path, mode).at("cannot set the mode of", path)?;
    }
    Ok(())
}

/// Clamps the modification and access times of every entry, symlinks
/// included, to at most `epoch`; files from packages keep their (older)
/// times, files written during the build get the epoch.
pub(crate) fn clamp_mtimes(root: &Path, epoch: u64) -> Result<()> {
    let epoch_i = i64::try_from(epoch).unwrap_or(i64::MAX);
    let ts = |secs: i64| rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let mut stack = vec![root.to_path_buf()];
    // Directories are clamped after their contents, since touching the
    // contents updates the directory's own mtime.
    let mut dirs = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).at("cannot list", &dir)? {
            let path = entry.at("cannot list", &dir)?.path();
            let meta = path.symlink_metadata().at("cannot stat", &path)?;
            if meta.is_dir() {
                stack.push(path);
            } else {
                let m = meta.mtime().min(epoch_i);
                set_times(&path, ts(m))?;
            }
        }
        dirs.push(dir);
    }
    for dir in dirs.into_iter().rev() {
        let meta = dir.symlink_metadata().at("cannot stat", &dir)?;
        set_times(&dir, ts(meta.mtime().min(epoch_i)))?;
    }
    Ok(())
}

fn set_times(path: &Path, t: rustix::fs::Timespec) -> Result<()> {
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(std::io::Error::from)
    .at("cannot set the times of", path)
}

/// A listing of every entry of the tree (path, type, mode, owner, size,
/// mtime and SHA-256 of regular files), sorted by path: stored next to the
/// outputs so that `verify` can name the first file that differs.
pub(crate) fn listing(root: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut rows: BTreeMap<String, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut buf = vec![0u8; 1 << 16];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).at("cannot list", &dir)? {
            let path = entry.at("cannot list", &dir)?.path();
            let meta = path.symlink_metadata().at("cannot stat", &path)?;
            let rel = path
                .strip_prefix(root)
                .map(|p| format!("/{}", p.display()))
                .unwrap_or_default();
            let ft = meta.file_type();
            let what = if ft.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                let t = fs::read_link(&path).at("cannot read the link", &path)?;
                format!("link {}", t.display())
            } else if ft.is_file() {
                let mut h = Sha256::new();
                let mut f = fs::File::open(&path).at("cannot open", &path)?;
                loop {
                    let n = f.read(&mut buf).at("cannot read", &path)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                format!("file {} {}", meta.len(), hex(&h.finalize()))
            } else {
                format!("special {}", meta.rdev())
            };
            rows.insert(
                rel.clone(),
                format!(
                    "{rel}\t{:o}\t{}:{}\t{}\t{what}",
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.mtime()
                ),
            );
        }
    }
    let mut out = String::new();
    for row in rows.values() {
        out.push_str(row);
        out.push('\n');
    }
    Ok(out)
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// The installed package names of a built tree (for messages and tests).
pub fn installed_packages(rootfs: &Path) -> Result<BTreeSet<String>> {
    let status = rootfs.join("var/lib/dpkg/status");
    let text = fs::read_to_string(&status).at("cannot read", &status)?;
    Ok(parse_status(&text).into_keys().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_stay_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).expect("link");
        std::os::unix::fs::symlink("/etc", root.join("abs")).expect("link");
        assert_eq!(
            resolve_in_root(root, "/bin/x").expect("ok"),
            root.join("usr/bin/x")
        );
        assert_eq!(
            resolve_in_root(root, "/abs/passwd").expect("ok"),
            root.join("etc/passwd")
        );
        assert!(resolve_in_root(root, "relative").is_err());
        assert!(resolve_in_root(root, "/a/../b").is_err());
        assert!(resolve_in_root(root, "/").is_err());
    }

    #[test]
    fn static_files_get_mode_and_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nmunge:x:101:102::/:/bin/false\n",
        )
        .expect("w");
        fs::write(root.join("etc/group"), "root:x:0:\nmunge:x:102:\n").expect("w");
        let files = vec![StaticFile {
            path: "/etc/munge/conf".into(),
            content: b"x".to_vec(),
            mode: 0o640,
            owner: Some("munge".into()),
        }];
        install_files("ctl", root, &files, None).expect("installs");
        let meta = fs::metadata(root.join("etc/munge/conf")).expect("exists");
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), (101, 102));
        let bad = vec![StaticFile {
            owner: Some("nobody:nogroup".into()),
            ..files[0].clone()
        }];
        let err = install_files("ctl", root, &bad, None).expect_err("unknown user");
        assert_eq!(
            err.to_string(),
            "role `ctl`: static file /etc/munge/conf: owner `nobody` does not exist in the image"
        );
    }

    /// A tree with the links and files packages leave behind, then the
    /// builder's customization and normalization, as `build` runs them.
    #[test]
    fn customized_tree_has_trims_no_package_services_and_an_enabled_agent() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let system = root.join("etc/systemd/system");
        for wants in [
            "multi-user.target.wants",
            "getty.target.wants",
            "timers.target.wants",
            "sysinit.target.wants",
        ] {
            fs::create_dir_all(system.join(wants)).expect("mkdir");
        }
        let links = [
            (
                "multi-user.target.wants/ssh.service",
                "/lib/systemd/system/ssh.service",
            ),
            (
                "multi-user.target.wants/remote-fs.target",
                "/lib/systemd/system/remote-fs.target",
            ),
            (
                "getty.target.wants/getty@tty1.service",
                "/lib/systemd/system/getty@.service",
            ),
            (
                "timers.target.wants/apt-daily.timer",
                "/lib/systemd/system/apt-daily.timer",
            ),
            (
                "sysinit.target.wants/systemd-pstore.service",
                "/lib/systemd/system/systemd-pstore.service",
            ),
            // An alias, not an enablement: it stays.
            ("sshd.service", "/lib/systemd/system/ssh.service"),
        ];
        for (link, target) in links {
            symlink(target, system.join(link)).expect("link");
        }
        // A SysV-only daemon enabled by update-rc.d: its start link goes,
        // its stop link and script stay.
        fs::create_dir_all(root.join("etc/init.d")).expect("mkdir");
        fs::write(root.join("etc/init.d/gridengine-master"), "#!/bin/sh\n").expect("w");
        for dir in ["rc2.d", "rc0.d"] {
            fs::create_dir_all(root.join("etc").join(dir)).expect("mkdir");
        }
        symlink(
            "../init.d/gridengine-master",
            root.join("etc/rc2.d/S01gridengine-master"),
        )
        .expect("link");
        symlink(
            "../init.d/gridengine-master",
            root.join("etc/rc0.d/K01gridengine-master"),
        )
        .expect("link");
        fs::create_dir_all(root.join("etc/munge")).expect("mkdir");
        fs::write(root.join("etc/munge/munge.key"), "random").expect("w");
        fs::create_dir_all(root.join("etc/ssh")).expect("mkdir");
        for f in [
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
            "sshd_config",
        ] {
            fs::write(root.join("etc/ssh").join(f), f).expect("w");
        }
        let agent = dir.path().join("agent");
        fs::write(&agent, b"\x7fELF agent").expect("w");

        customize("ctl", &root, &[], Some(&agent)).expect("customizes");
        normalize(&root, 1000).expect("normalizes");

        let installed = root.join(AGENT_PATH.trim_start_matches('/'));
        assert_eq!(fs::read(&installed).expect("agent"), b"\x7fELF agent");
        assert_eq!(
            fs::metadata(&installed).expect("stat").mode() & 0o7777,
            0o755
        );
        let unit = root.join(AGENT_UNIT_PATH.trim_start_matches('/'));
        assert_eq!(
            fs::read_to_string(&unit).expect("unit"),
            install::SERVICE_UNIT
        );
        assert!(install::SERVICE_UNIT.contains(&format!("ExecStart={AGENT_PATH} ")));
        let targets = wanted_by(install::SERVICE_UNIT);
        assert!(!targets.is_empty());
        for target in targets {
            let wants = system.join(format!("{target}.wants"));
            assert_eq!(
                fs::read_link(wants.join("testbed-agent.service")).expect("enabled"),
                Path::new(AGENT_UNIT_PATH)
            );
        }
        // Package-enabled units are disabled: only the agent is left in
        // sysinit.target.wants, and emptied .wants folders are gone.
        let sysinit: Vec<String> = fs::read_dir(system.join("sysinit.target.wants"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(sysinit, ["testbed-agent.service"]);
        assert!(!system.join("multi-user.target.wants/ssh.service").exists());
        assert!(!system.join("getty.target.wants").exists());
        assert!(!system.join("timers.target.wants").exists());
        assert!(system
            .join("multi-user.target.wants/remote-fs.target")
            .symlink_metadata()
            .is_ok());
        assert!(system.join("sshd.service").symlink_metadata().is_ok());
        assert!(root
            .join("etc/rc2.d/S01gridengine-master")
            .symlink_metadata()
            .is_err());
        assert!(root
            .join("etc/rc0.d/K01gridengine-master")
            .symlink_metadata()
            .is_ok());
        assert!(root.join("etc/init.d/gridengine-master").is_file());
        for unit in MASKED {
            assert_eq!(
                fs::read_link(system.join(unit)).expect("masked"),
                Path::new("/dev/null"),
                "{unit}"
            );
        }
        let (path, content) = JOURNALD_DROPIN;
        let dropin = root.join(path.trim_start_matches('/'));
        assert_eq!(fs::read_to_string(&dropin).expect("drop-in"), content);
        assert!(content.contains("\nStorage=volatile\n"));
        let (path, content) = SSH_DROPIN;
        let ssh = fs::read_to_string(root.join(path.trim_start_matches('/'))).expect("drop-in");
        assert_eq!(ssh, content);
        assert!(content.ends_with("[Service]\nExecStartPre=\n"), "{content}");
        let conf_d = dropin.parent().expect("parent");
        assert_eq!(fs::metadata(conf_d).expect("stat").mode() & 0o7777, 0o755);
        // Generated secrets and host keys go, the configuration stays.
        assert!(!root.join("etc/munge/munge.key").exists());
        assert!(!root.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(!root.join("etc/ssh/ssh_host_ed25519_key.pub").exists());
        assert!(root.join("etc/ssh/sshd_config").exists());
        // What the builder added is clamped like the rest.
        for p in [&unit, &dropin, &installed] {
            assert_eq!(fs::symlink_metadata(p).expect("stat").mtime(), 1000);
        }
    }

    #[test]
    fn static_files_win_over_trims_but_not_over_the_agent_unit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let agent = root.join("agent");
        fs::write(&agent, b"agent").expect("w");
        let file = |path: &str| StaticFile {
            path: path.into(),
            content: b"mine\n".to_vec(),
            mode: 0o644,
            owner: None,
        };
        let files = [file(JOURNALD_DROPIN.0), file(AGENT_UNIT_PATH)];
        customize("ctl", root, &files, Some(&agent)).expect("customizes");
        let read = |p: &str| fs::read_to_string(root.join(p.trim_start_matches('/'))).expect("r");
        assert_eq!(read(JOURNALD_DROPIN.0), "mine\n");
        assert_eq!(read(AGENT_UNIT_PATH), install::SERVICE_UNIT);
        // Without an agent there is no unit to start.
        let bare = dir.path().join("bare");
        fs::create_dir(&bare).expect("mkdir");
        customize("ctl", &bare, &[], None).expect("customizes");
        assert!(!bare.join(AGENT_UNIT_PATH.trim_start_matches('/')).exists());
        assert!(!bare
            .join("etc/systemd/system/sysinit.target.wants")
            .exists());
    }

    #[test]
    fn log_files_go_but_package_log_folders_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("var/log/munge")).expect("mkdir");
        fs::create_dir_all(root.join("tmp/junk")).expect("mkdir");
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::write(root.join("etc/shadow"), "root:*:20000:0:99999:7:::\n").expect("w");
        fs::write(root.join("var/log/dpkg.log"), "x").expect("w");
        fs::write(root.join("var/log/munge/munged.log"), "x").expect("w");
        fs::write(root.join("tmp/junk/f"), "x").expect("w");
        normalize(root, 1000).expect("normalizes");
        assert!(
            root.join("var/log/munge").is_dir(),
            "munged needs its folder"
        );
        assert!(!root.join("var/log/munge/munged.log").exists());
        assert!(!root.join("var/log/dpkg.log").exists());
        assert_eq!(fs::read_dir(root.join("tmp")).expect("ls").count(), 0);
    }

    #[test]
    fn shadow_dates_and_mtimes_are_pinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("etc/sub")).expect("mkdir");
        fs::write(
            root.join("etc/shadow"),
            "root:*:20000:0:99999:7:::\nx:!::::::\n",
        )
        .expect("w");
        normalize_shadow(&root.join("etc/shadow"), 86_400 * 19_000).expect("ok");
        assert_eq!(
            fs::read_to_string(root.join("etc/shadow")).expect("r"),
            "root:*:19000:0:99999:7:::\nx:!::::::\n"
        );
        clamp_mtimes(root, 1000).expect("clamp");
        for p in ["etc", "etc/sub", "etc/shadow"] {
            assert_eq!(
                fs::symlink_metadata(root.join(p)).expect("stat").mtime(),
                1000
            );
        }
    }

    #[test]
    fn dpkg_status_parsing_skips_removed_packages() {
        let text = "Package: a\nStatus: install ok installed\nVersion: 1\n\nPackage: b\nStatus: deinstall ok config-files\nVersion: 2\n";
        let got = parse_status(text);
        assert_eq!(got.len(), 1);
        assert_eq!(got["a"], "1");
    }
}
