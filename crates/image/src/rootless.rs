//! Image builds without root (docs/rootless.md).
//!
//! mmdebstrap's unshare mode builds the tree in a user namespace that maps
//! root to the user's first block of subordinate ids (`/etc/subuid`,
//! `/etc/subgid`): on the host, the tree's files belong to those ids. The
//! steps after mmdebstrap (the check against the lock, the static files and
//! the agent, normalization, the listing and the boot artifacts) run in a
//! user namespace with the very same mapping, so each file has there the
//! owner it would have in a root build, and the artifacts are bit-identical
//! to a root build's: same store key, same digests. That namespace also
//! maps the user's own id (to [`Mapping::inner_self`]), which lets its root
//! write the outputs into the user's store and give them to the user.
//!
//! The steps after mmdebstrap are Rust code: the namespace runs a helper,
//! the program that registered itself with [`register_helper`] (the
//! `testbed` CLI, through a hidden subcommand), which calls [`finish`].
//!
//! The tree cannot live in the store: the subordinate root that mmdebstrap
//! runs as must reach it, and the store is usually under a private home.
//! It is built in a scratch folder of the temporary directory, mode 0711
//! (others may pass, not list), named after the build's process so that a
//! later build removes what a killed one left.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{ImageError, IoContext, Result};
use crate::lock::LockedPackage;
use crate::progress::Step;
use crate::spec::StaticFile;

/// Fewer subordinate ids than this cannot hold a Debian system's users
/// (`nobody` is 65534).
pub const MIN_IDS: u32 = 65536;

/// A block of subordinate ids: host ids `start..start + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdBlock {
    /// The first host id.
    pub start: u32,
    /// How many.
    pub count: u32,
}

/// The user namespace of a rootless build: root and every id below
/// `count` to the user's subordinate ids, as mmdebstrap maps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The user's name (mmdebstrap looks the blocks up by name).
    pub user: String,
    /// The user's id.
    pub uid: u32,
    /// The user's primary group.
    pub gid: u32,
    /// Subordinate user ids.
    pub uids: IdBlock,
    /// Subordinate group ids.
    pub gids: IdBlock,
}

/// Why a rootless build cannot run here, and what fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What is missing.
    pub what: String,
    /// What to do about it.
    pub fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.what, self.fix)
    }
}

/// The first block of `name` in a subordinate id file's text, as
/// mmdebstrap reads it: the first line whose first field is the name.
fn first_block(text: &str, name: &str) -> Option<std::result::Result<IdBlock, String>> {
    let line = text.lines().find(|l| l.split(':').next() == Some(name))?;
    let mut fields = line.split(':').skip(1);
    let parse = |f: Option<&str>| f.and_then(|s| s.trim().parse::<u32>().ok());
    Some(match (parse(fields.next()), parse(fields.next())) {
        (Some(start), Some(count)) => Ok(IdBlock { start, count }),
        _ => Err(format!("the line `{line}` is not NAME:START:COUNT")),
    })
}

/// The user's name, from the password database.
fn user_name(uid: u32) -> Option<String> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[0].to_owned())
    })
}

impl Mapping {
    /// The current user's mapping, or everything that stands in the way of
    /// one (read from the files only: [`probe`] also tries it).
    pub fn current() -> std::result::Result<Mapping, Vec<Problem>> {
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let mut problems = Vec::new();
        let Some(user) = user_name(uid) else {
            return Err(vec![Problem {
                what: format!("user id {uid} has no name in /etc/passwd"),
                fix: "subordinate ids are given by user name: run as a user with an entry in /etc/passwd".into(),
            }]);
        };
        let mut block = |file: &str, what: &str| -> Option<IdBlock> {
            let fix = format!(
                "as root: `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}`, with a block no other user has"
            );
            let text = match fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(Problem {
                        what: format!("cannot read {file}: {e}"),
                        fix,
                    });
                    return None;
                }
            };
            match first_block(&text, &user) {
                None => {
                    problems.push(Problem {
                        what: format!("{file} gives {user} no subordinate {what} ids"),
                        fix,
                    });
                    None
                }
                Some(Err(e)) => {
                    problems.push(Problem {
                        what: format!("{file}: {e}"),
                        fix,
                    });
                    None
                }
                Some(Ok(b)) if b.count < MIN_IDS => {
                    problems.push(Problem {
                        what: format!(
                            "{file} gives {user} {} subordinate {what} ids in its first block; a Debian system needs {MIN_IDS}",
                            b.count
                        ),
                        fix,
                    });
                    None
                }
                Some(Ok(b)) => Some(b),
            }
        };
        let uids = block("/etc/subuid", "user");
        let gids = block("/etc/subgid", "group");
        for tool in ["newuidmap", "newgidmap"] {
            if crate::tools::find(crate::tools::Tool {
                name: tool,
                package: "uidmap",
            })
            .is_err()
            {
                problems.push(Problem {
                    what: format!("`{tool}` is not installed"),
                    fix: "install Debian's `uidmap` package (scripts/setup-host.sh does)".into(),
                });
            }
        }
        if fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone")
            .is_ok_and(|v| v.trim() == "0")
        {
            problems.push(Problem {
                what: "unprivileged user namespaces are off (kernel.unprivileged_userns_clone = 0)"
                    .into(),
                fix: "as root: `sysctl kernel.unprivileged_userns_clone=1` (and in /etc/sysctl.d to keep it)".into(),
            });
        }
        if fs::read_to_string("/proc/sys/user/max_user_namespaces").is_ok_and(|v| v.trim() == "0") {
            problems.push(Problem {
                what: "user namespaces are off (user.max_user_namespaces = 0)".into(),
                fix: "as root: `sysctl user.max_user_namespaces=15000`".into(),
            });
        }
        match (uids, gids) {
            (Some(uids), Some(gids)) if problems.is_empty() => Ok(Mapping {
                user,
                uid,
                gid,
                uids,
                gids,
            }),
            _ => Err(problems),
        }
    }

    /// The id the user has inside the namespace: just above both blocks.
    pub fn inner_self(&self) -> u32 {
        self.uids.count.max(self.gids.count).saturating_add(1)
    }

    /// `program` run as root of the namespace (`unshare` from util-linux,
    /// which maps through `newuidmap` and `newgidmap`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let inner = self.inner_self();
        let mut cmd = Command::new("unshare");
        cmd.arg(format!(
            "--map-users={},0,{}",
            self.uids.start, self.uids.count
        ))
        .arg(format!(
            "--map-groups={},0,{}",
            self.gids.start, self.gids.count
        ))
        .arg(format!("--map-user={inner}"))
        .arg(format!("--map-group={inner}"))
        .args(["--setuid", "0", "--setgid", "0", "--"])
        .arg(program);
        cmd
    }

    /// The `uid_map` lines a process of the namespace sees: whether this
    /// process is in it.
    fn seen_inside(&self, uid_map: &str) -> bool {
        let lines: Vec<Vec<u64>> = uid_map
            .lines()
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .collect();
        let has = |inner: u64, outer: u64, count: u64| {
            lines.iter().any(|l| l[..] == [inner, outer, count])
        };
        has(0, self.uids.start.into(), self.uids.count.into())
            && has(self.inner_self().into(), self.uid.into(), 1)
    }
}

/// What a user namespace probe found: usable, or the problems.
pub fn probe() -> std::result::Result<Mapping, Vec<Problem>> {
    let mapping = Mapping::current()?;
    let out = mapping
        .command("cat")
        .arg("/proc/self/uid_map")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() && mapping.seen_inside(&String::from_utf8_lossy(&o.stdout)) => {
            Ok(mapping)
        }
        Ok(o) => Err(vec![Problem {
            what: format!(
                "cannot enter a user namespace with the subordinate ids ({}): {}",
                o.status,
                crate::tools::tail(&o.stderr, 3)
            ),
            fix: "check that newuidmap and newgidmap are setuid root, that the blocks in /etc/subuid and /etc/subgid are the user's, and that no security module forbids unprivileged user namespaces".into(),
        }]),
        Err(e) => Err(vec![Problem {
            what: format!("cannot run `unshare`: {e}"),
            fix: "install Debian's `util-linux` package".into(),
        }]),
    }
}

/// The program, and its leading arguments, that runs [`finish`] in the
/// namespace: `PROGRAM ARGS... REQUEST.json`.
#[derive(Debug, Clone)]
pub struct Helper {
    /// The program.
    pub program: PathBuf,
    /// Its arguments before the request's path.
    pub args: Vec<OsString>,
}

static HELPER: OnceLock<Helper> = OnceLock::new();

/// Registers the program that runs [`finish`]; the first registration
/// stays. The CLI registers itself.
pub fn register_helper(helper: Helper) {
    let _ = HELPER.set(helper);
}

/// What the steps after mmdebstrap need, written for the helper.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The role, for messages.
    pub role: String,
    /// The tree mmdebstrap built.
    pub tree: PathBuf,
    /// Where the outputs go (the user's folder in the store).
    pub out: PathBuf,
    /// The locked packages, checked against the tree.
    pub packages: Vec<LockedPackage>,
    /// The static files.
    pub files: Vec<StaticFile>,
    /// The agent binary, copied where the namespace's root may read it.
    pub agent: Option<PathBuf>,
    /// `SOURCE_DATE_EPOCH`.
    pub epoch: u64,
    /// The user's host id and primary group, to check the namespace.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// The subordinate blocks, to check the namespace.
    pub uids: IdBlock,
    /// See `uids`.
    pub gids: IdBlock,
}

impl Request {
    fn mapping(&self) -> Mapping {
        Mapping {
            user: String::new(),
            uid: self.uid,
            gid: self.gid,
            uids: self.uids,
            gids: self.gids,
        }
    }
}

/// The steps after mmdebstrap, in the namespace: what the helper runs.
/// Each step's name is written to `steps` as it starts, one per line.
pub fn finish(request: &Path, steps: &mut dyn Write) -> Result<()> {
    let text = fs::read_to_string(request).at("cannot read", request)?;
    let req: Request = serde_json::from_str(&text).map_err(|e| ImageError::BadEntry {
        path: request.to_path_buf(),
        message: format!("not a build request: {e}"),
    })?;
    let uid_map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let mapping = req.mapping();
    if !rustix::process::geteuid().is_root() || !mapping.seen_inside(&uid_map) {
        return Err(ImageError::BadEntry {
            path: request.to_path_buf(),
            message: format!(
                "the image steps must run as root of the build's user namespace; this process's uid map is: {}",
                uid_map.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
        });
    }
    let mut step = |s: Step| {
        let _ = writeln!(steps, "{}", step_tag(s));
    };
    crate::build::finish_tree(
        &req.role,
        &req.tree,
        &req.out,
        &req.packages,
        &req.files,
        req.agent.as_deref(),
        req.epoch,
        &crate::build::DefaultArtifacts,
        &mut step,
    )?;
    // Give the outputs to the user (they belong to the namespace's root,
    // a subordinate id, until now).
    let inner = mapping.inner_self();
    for entry in fs::read_dir(&req.out).at("cannot list", &req.out)? {
        let path = entry.at("cannot list", &req.out)?.path();
        std::os::unix::fs::lchown(&path, Some(inner), Some(inner)).at("cannot chown", &path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .at("cannot set the mode of", &path)?;
    }
    Ok(())
}

fn step_tag(s: Step) -> &'static str {
    match s {
        Step::Packages => "packages",
        Step::Bootstrapping => "bootstrapping",
        Step::Customizing => "customizing",
        Step::Normalizing => "normalizing",
        Step::Artifacts => "artifacts",
        Step::Committing => "committing",
    }
}

fn step_from_tag(tag: &str) -> Option<Step> {
    [
        Step::Packages,
        Step::Bootstrapping,
        Step::Customizing,
        Step::Normalizing,
        Step::Artifacts,
        Step::Committing,
    ]
    .into_iter()
    .find(|s| step_tag(*s) == tag)
}

/// The scratch folders' prefix in the temporary directory.
const SCRATCH_PREFIX: &str = "testbed-build-";

/// A scratch folder for one rootless build, removed (through the
/// namespace: the tree is not the user's) when dropped.
#[derive(Debug)]
pub(crate) struct Scratch {
    pub(crate) dir: PathBuf,
    mapping: Mapping,
}

impl Scratch {
    /// A new scratch folder, mode 0711, after removing those of builds
    /// whose process is gone.
    pub(crate) fn new(mapping: &Mapping, label: &str) -> Result<Scratch> {
        let base = std::env::temp_dir();
        clean_stale(mapping, &base);
        let pid = std::process::id();
        for n in 0u32.. {
            let dir = base.join(format!("{SCRATCH_PREFIX}{label}-{n}-{pid}"));
            match fs::DirBuilder::new().mode(0o711).create(&dir) {
                Ok(()) => {
                    // The mode is exact whatever the umask.
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o711))
                        .at("cannot set the mode of", &dir)?;
                    return Ok(Scratch {
                        dir,
                        mapping: mapping.clone(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).at("cannot create", &dir),
            }
        }
        unreachable!("an unbounded loop ends by returning")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove(&self.mapping, &self.dir);
    }
}

/// Removes `dir` and everything in it, as root of the namespace (which
/// owns the tree and may act on the user's files).
fn remove(mapping: &Mapping, dir: &Path) {
    let _ = mapping
        .command("rm")
        .arg("-rf")
        .arg("--one-file-system")
        .arg("--")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if dir.exists() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Removes the scratch folders of this user's builds whose process is gone.
fn clean_stale(mapping: &Mapping, base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with(SCRATCH_PREFIX) {
            continue;
        }
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != mapping.uid {
            continue;
        }
        let pid = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            remove(mapping, &entry.path());
        }
    }
}

/// Runs the steps after mmdebstrap in the namespace through the helper;
/// each step it starts is passed to `step`.
pub(crate) fn finish_in_namespace(
    mapping: &Mapping,
    scratch: &Scratch,
    request: &Request,
    step: &mut dyn FnMut(Step),
) -> Result<()> {
    let helper = HELPER.get().ok_or_else(|| ImageError::Rootless {
        problems: vec![Problem {
            what: "this program cannot run the image steps in a user namespace (it registered no helper)".into(),
            fix: "build with the `testbed` command, or as root".into(),
        }],
    })?;
    let path = scratch.dir.join("request.json");
    let text = serde_json::to_string(request).unwrap_or_default();
    fs::write(&path, text).at("cannot write", &path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
        .at("cannot set the mode of", &path)?;
    let what = format!(
        "the image steps of role {} in a user namespace ({})",
        request.role,
        helper.program.display()
    );
    let mut child = mapping
        .command(&helper.program)
        .args(&helper.args)
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ImageError::Command {
            what: what.clone(),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
    let stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut s) = stderr {
            let _ = std::io::Read::read_to_end(&mut s, &mut buf);
        }
        buf
    });
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(|l| l.ok()) {
            if let Some(s) = step_from_tag(line.trim()) {
                step(s);
            }
        }
    }
    let status = child.wait().at("cannot wait for", &helper.program)?;
    let stderr = errors.join().unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::Command {
            what,
            status: status.to_string(),
            stderr: crate::tools::tail(&stderr, 20),
        })
    }
}

/// Whether builds run rootless: when this process is not root.
pub fn needed() -> bool {
    !rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_block_of_the_user_is_taken_as_mmdebstrap_takes_it() {
        let text = "alice:100000:65536\nbob:165536:65536\nbob:300000:10\n";
        assert_eq!(
            first_block(text, "bob"),
            Some(Ok(IdBlock {
                start: 165536,
                count: 65536
            }))
        );
        assert_eq!(first_block(text, "carol"), None);
        assert!(matches!(first_block("bob:x:1\n", "bob"), Some(Err(_))));
        // A name that is a prefix of another is not it.
        assert_eq!(first_block("bobby:1:2\n", "bob"), None);
    }

    #[test]
    fn the_namespace_is_recognized_by_its_uid_map() {
        let m = Mapping {
            user: "bob".into(),
            uid: 1001,
            gid: 1001,
            uids: IdBlock {
                start: 165536,
                count: 65536,
            },
            gids: IdBlock {
                start: 165536,
                count: 65536,
            },
        };
        assert_eq!(m.inner_self(), 65537);
        let inside = "     65537       1001          1\n         0     165536      65536\n";
        assert!(m.seen_inside(inside));
        assert!(!m.seen_inside("         0          0 4294967295\n"));
        // mmdebstrap's own namespace maps no user: not ours.
        assert!(!m.seen_inside("         0     165536      65536\n"));
        let args: Vec<String> = m
            .command("true")
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--map-users=165536,0,65536",
                "--map-groups=165536,0,65536",
                "--map-user=65537",
                "--map-group=65537",
                "--setuid",
                "0",
                "--setgid",
                "0",
                "--",
                "true"
            ]
        );
    }

    #[test]
    fn step_tags_round_trip() {
        for s in [
            Step::Packages,
            Step::Bootstrapping,
            Step::Customizing,
            Step::Normalizing,
            Step::Artifacts,
            Step::Committing,
        ] {
            assert_eq!(step_from_tag(step_tag(s)), Some(s));
        }
    }
}
