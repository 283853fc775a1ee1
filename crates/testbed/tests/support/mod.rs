//! Test infrastructure for the CLI's integration tests, which run the
//! `testbed` binary as a user does:
//!
//! - [`testbed_command`]: the binary under test, in a given folder, without
//!   colours; each test adds the environment it needs.
//! - [`Env`]: a copy of one of `examples/` in a temporary directory, without
//!   its lock (so it is locked against today's archive and does not break
//!   when Debian publishes a point release), with its own state directory
//!   and the store shared by this crate's tests (so images are built once).
//!   [`Env::testbed`] runs a verb there and echoes it with its output on
//!   stderr; dropping the `Env` takes down whatever it left running.
//! - [`start_tag`], [`start_tags`] and [`attr`] to read the JUnit reports
//!   of `testbed test`, and [`check_passed_reports`].
//!
//! Helpers other crates' tests need too (`text`, `copy_example`,
//! `agent_binary`, polling) are in `testbed-test-support`.

// Each test binary uses part of this module; `Env::testbed` echoes every
// command and its output on stderr, which is what a failed VM test's log
// needs.
#![allow(dead_code, clippy::print_stderr)]

pub mod chaos;
pub mod containers;
pub mod python;
pub mod secrets;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use testbed_test_support::{agent_binary, copy_example, output_within, text};

/// How long a verb may take before the test calls it a hang: verbs that
/// may build images and boot a whole cluster get 20 minutes (a cold
/// build of an example's images with a slow mirror, and TCG), the others
/// 5 (a reboot under TCG takes about one).
pub fn limit(args: &[&str]) -> Duration {
    let long = ["up", "test", "build", "lock", "ci"];
    let verb = args.iter().find(|a| !a.starts_with('-')).copied();
    if verb.is_some_and(|v| long.contains(&v)) {
        Duration::from_secs(20 * 60)
    } else {
        Duration::from_secs(5 * 60)
    }
}

/// The store shared by this crate's tests, so images are built once.
pub fn store() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("store")
}

/// `testbed ARGS` run in `cwd` with `NO_COLOR`, so that its output can be
/// compared with plain strings.
pub fn testbed_command(args: &[&str], cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_testbed"));
    cmd.args(args).current_dir(cwd).env("NO_COLOR", "1");
    cmd
}

/// A copy of an example in a temporary directory, and the state directory
/// of the clusters started from it.
#[derive(Debug)]
pub struct Env {
    _tmp: tempfile::TempDir,
    /// The composition's folder.
    pub comp: PathBuf,
    /// `TESTBED_STATE_DIR` of every command run by [`Env::testbed`].
    pub state: PathBuf,
    /// The names of the files copied from the example.
    pub copied: Vec<String>,
    /// Everything every command printed (stdout, then stderr), for the
    /// secrets scan.
    pub printed: std::sync::Mutex<Vec<u8>>,
    /// The user [`Env::testbed`] runs as (see [`Env::run_as`]); None: as
    /// the test runs.
    pub user: Option<String>,
    /// The store of every command, if not the one the tests share
    /// ([`store`]; see [`Env::with_store`]).
    pub store: Option<PathBuf>,
    /// More environment variables of every command ([`Env::with_var`]).
    pub vars: Vec<(String, String)>,
}

impl Env {
    /// A copy of `examples/NAME` without its lock, in a folder named NAME.
    pub fn example(name: &str) -> Env {
        Env::edited_example(name, name, |t| t)
    }

    /// Like [`Env::example`], with `edit` applied to its testbed.toml and
    /// the composition in a folder named `folder` (the state directory is
    /// derived from the folder too).
    pub fn edited_example(name: &str, folder: &str, edit: impl Fn(String) -> String) -> Env {
        let tmp = tempfile::tempdir().expect("tmp");
        let comp = tmp.path().join(folder);
        let copied = copy_example(name, &comp, edit);
        let state = tmp.path().join("run");
        Env {
            _tmp: tmp,
            comp,
            state,
            copied,
            printed: std::sync::Mutex::new(Vec::new()),
            user: None,
            store: None,
            vars: Vec::new(),
        }
    }

    /// A composition written by the test into `comp` (inside `tmp`, which
    /// the environment keeps until it is dropped).
    pub fn at(tmp: tempfile::TempDir, comp: PathBuf) -> Env {
        let state = tmp.path().join("run");
        Env {
            _tmp: tmp,
            comp,
            state,
            copied: Vec::new(),
            printed: std::sync::Mutex::new(Vec::new()),
            user: None,
            store: None,
            vars: Vec::new(),
        }
    }

    /// `testbed ARGS` in the composition's folder, with the shared store
    /// and this environment's state directory; the command, its exit code
    /// and its output are echoed on stderr.
    ///
    /// Every command is bounded ([`limit`]): one that hangs is killed and
    /// fails the test with its output so far and the end of every log of
    /// the environment's clusters (supervisor, consoles), so a hang costs
    /// minutes and says where it was.
    pub fn testbed(&self, args: &[&str]) -> Output {
        agent_binary();
        let store = self.store.clone().unwrap_or_else(store);
        let Some(user) = &self.user else {
            let mut cmd = testbed_command(args, &self.comp);
            // The user's config file (docs/cache.md) is not the tests'.
            cmd.env("TESTBED_STORE", &store)
                .env("TESTBED_STATE_DIR", &self.state)
                .env("XDG_CONFIG_HOME", self._tmp.path().join(".config"))
                .envs(self.vars.iter().map(|(k, v)| (k, v)));
            return self.run_echoed("testbed", args, &mut cmd, limit(args));
        };
        // As the user, with a clean environment: its home, its cache
        // folder in the environment's own folder, the binaries copied
        // there (the build's folder may be closed to others). A store root
        // wrote is used read-only (docs/rootless.md).
        let tmp = self._tmp.path();
        // The user's own home, where its engines keep their state
        // (rootless podman's images and containers), as the tests' own
        // `runuser` calls see it.
        let account = Account::get(user);
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", user, "--", "env", "-i"])
            .arg(format!("HOME={}", account.home.display()))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .arg("NO_COLOR=1")
            .arg(format!("XDG_CACHE_HOME={}", tmp.join(".cache").display()))
            .arg(format!("XDG_CONFIG_HOME={}", tmp.join(".config").display()))
            .arg(format!("TESTBED_STORE={}", store.display()))
            .arg(format!("TESTBED_STATE_DIR={}", self.state.display()))
            .args(self.vars.iter().map(|(k, v)| format!("{k}={v}")));
        // What a login session gives the user where the administrator set
        // it up (scripts/setup-users.sh): its runtime folder, and the
        // cgroup delegated to it (on a cgroup v1 host, in the name=systemd
        // hierarchy), which the command enters first.
        let runtime = PathBuf::from(format!("/run/user/{}", account.uid));
        if runtime.is_dir() {
            cmd.arg(format!("XDG_RUNTIME_DIR={}", runtime.display()));
        }
        let delegated = Path::new("/sys/fs/cgroup/systemd").join(user);
        if delegated.join("cgroup.procs").is_file() {
            cmd.args(["sh", "-c", "echo $$ > \"$0\" && exec \"$@\""])
                .arg(delegated.join("cgroup.procs"));
        }
        cmd.arg(tmp.join("bin/testbed"))
            .args(args)
            .current_dir(&self.comp);
        self.run_echoed(&format!("(as {user}) testbed"), args, &mut cmd, limit(args))
    }

    /// This environment with `name=value` in the environment of every
    /// later command (replacing an earlier value of `name`).
    pub fn with_var(mut self, name: &str, value: &str) -> Env {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.to_owned(), value.to_owned()));
        self
    }

    /// This environment with `store` as the store of every command.
    pub fn with_store(mut self, store: &Path) -> Env {
        self.store = Some(store.to_owned());
        self
    }

    /// This environment with every later [`Env::testbed`] run as `user`
    /// (made by scripts/setup-users.sh), which is given its folders.
    pub fn run_as(mut self, user: &str) -> Env {
        Account::get(user);
        let bin = self._tmp.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (from, name) in [
            (Path::new(env!("CARGO_BIN_EXE_testbed")), "testbed"),
            (agent_binary(), "testbed-agent"),
        ] {
            std::fs::copy(from, bin.join(name)).unwrap();
        }
        let out = Command::new("chown")
            .args(["-R", &format!("{user}:{user}")])
            .arg(self._tmp.path())
            .output()
            .expect("chown");
        assert!(out.status.success(), "chown: {}", text(&out.stderr));
        self.user = Some(user.to_owned());
        self
    }

    /// Runs `cmd` (the program `what` with `args`) for at most `limit`,
    /// keeps its output for the secrets scan and echoes it on stderr; a
    /// hang fails the test with the end of every log of the environment's
    /// clusters.
    pub fn run_echoed(
        &self,
        what: &str,
        args: &[&str],
        cmd: &mut Command,
        limit: Duration,
    ) -> Output {
        let result = output_within(cmd, limit);
        let (Ok(out) | Err(out)) = &result;
        if let Ok(mut printed) = self.printed.lock() {
            printed.extend_from_slice(&out.stdout);
            printed.extend_from_slice(&out.stderr);
        }
        eprintln!(
            "$ {what} {}\n-> {:?}\n{}{}",
            args.join(" "),
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        match result {
            Ok(out) => out,
            Err(_) => panic!(
                "{what} {} did not end within {limit:?}; the cluster's logs:\n{}",
                args.join(" "),
                self.log_tails()
            ),
        }
    }

    /// The last lines of every log under the state directory.
    pub fn log_tails(&self) -> String {
        let mut logs = Vec::new();
        let mut dirs = vec![self.state.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "log") {
                    logs.push(path);
                }
            }
        }
        logs.sort();
        let mut said = String::new();
        for log in logs {
            let content = text(&std::fs::read(&log).unwrap_or_default());
            let lines: Vec<&str> = content.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            said.push_str(&format!("== {}\n{}\n", log.display(), tail.join("\n")));
        }
        said
    }

    /// `testbed test ARGS... --junit report.xml --json report.json`, the
    /// reports in the composition's folder: the output and the two
    /// reports' paths.
    pub fn test_with_reports(&self, args: &[&str]) -> (Output, PathBuf, PathBuf) {
        let junit = self.comp.join("report.xml");
        let json = self.comp.join("report.json");
        let mut all = vec!["test"];
        all.extend_from_slice(args);
        all.extend([
            "--junit",
            junit.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ]);
        let out = self.testbed(&all);
        (out, junit, json)
    }

    /// Whether a cluster of this environment has state left (is running,
    /// or died without being taken down).
    pub fn running(&self) -> bool {
        self.state
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }

    /// Every process whose command line mentions the state directory.
    pub fn leftovers(&self) -> Vec<String> {
        let marker = self.state.to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&marker) {
                found.push(format!(
                    "{} {}",
                    entry.file_name().to_string_lossy(),
                    cmdline
                ));
            }
        }
        found
    }
}

impl Drop for Env {
    /// A failed assertion must not leave VMs running.
    fn drop(&mut self) {
        if self.running() {
            let _ = self.testbed(&["down"]);
        }
    }
}

/// The attributes of every `<ELEMENT ...>` start tag of `xml` (the text
/// between the element's name and `>`), in order.
pub fn start_tags<'a>(xml: &'a str, element: &str) -> Vec<&'a str> {
    xml.split(&format!("<{element} "))
        .skip(1)
        .map(|c| c.split('>').next().unwrap_or(""))
        .collect()
}

/// The attributes of the first `<ELEMENT ...>` start tag of `xml`.
pub fn start_tag<'a>(xml: &'a str, element: &str) -> Option<&'a str> {
    start_tags(xml, element).into_iter().next()
}

/// The value of `name="..."` among the attributes of an XML start tag
/// (with or without its `<tag`).
pub fn attr<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let start = if attrs.starts_with(&key) {
        key.len()
    } else {
        attrs.find(&format!(" {key}"))? + key.len() + 1
    };
    let end = attrs[start..].find('"')? + start;
    Some(&attrs[start..end])
}

/// The subtests of `examples/slurm/test.rhai` on a VM backend, in order.
pub const SLURM_SUBTESTS: [&str; 6] = [
    "every compute node is idle in sinfo",
    "/home is shared over NFS",
    "an array job spreads over every compute node",
    "an MPI job runs across nodes",
    "a crashed node goes down, its job is requeued, and it comes back",
    "a partitioned node loses its controller until healed",
];

/// Checks the reports `testbed test` wrote for an example that passed: a
/// JUnit suite named `suite` whose test cases are `subtests`, in order,
/// none failed, and a JSON report that says it passed, case by case.
/// Returns the JSON report's cases, for checks of their logs.
pub fn check_passed_reports(
    junit: &Path,
    json: &Path,
    suite: &str,
    subtests: &[&str],
) -> Vec<serde_json::Value> {
    let xml = std::fs::read_to_string(junit).expect("junit written");
    let head = start_tag(&xml, "testsuite").expect("a testsuite element");
    assert_eq!(attr(head, "name"), Some(suite), "{head}");
    let count = subtests.len().to_string();
    assert_eq!(attr(head, "tests"), Some(count.as_str()), "{head}");
    assert_eq!(attr(head, "failures"), Some("0"), "{head}");
    assert_eq!(attr(head, "errors"), Some("0"), "{head}");
    let names: Vec<&str> = start_tags(&xml, "testcase")
        .into_iter()
        .filter_map(|c| attr(c, "name"))
        .collect();
    assert_eq!(names, subtests, "{xml}");
    assert!(!xml.contains("<failure"), "{xml}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json).expect("json written")).expect("json");
    assert_eq!(report["passed"], true, "{report}");
    let cases = report["cases"].as_array().expect("cases").clone();
    assert_eq!(cases.len(), subtests.len(), "{report}");
    for case in &cases {
        assert_eq!(case["passed"], true, "{case}");
    }
    cases
}

/// A user account made by scripts/setup-users.sh, as `getent passwd`
/// and `id` see it.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub home: PathBuf,
    pub groups: Vec<String>,
}

impl Account {
    /// `name`; fails the test saying where it comes from if it is missing.
    pub fn get(name: &str) -> Account {
        let out = Command::new("getent")
            .args(["passwd", name])
            .output()
            .expect("getent");
        assert!(
            out.status.success(),
            "no user {name}: scripts/setup-users.sh makes it (scripts/test.sh runs it)"
        );
        let line = text(&out.stdout);
        let fields: Vec<&str> = line.trim().split(':').collect();
        let groups = text(
            &Command::new("id")
                .args(["-nG", name])
                .output()
                .expect("id")
                .stdout,
        );
        Account {
            name: name.to_owned(),
            uid: fields[2].parse().expect("uid"),
            home: PathBuf::from(fields[5]),
            groups: groups.split_whitespace().map(str::to_owned).collect(),
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Not root, and in none of the groups that are root in another name
    /// (`sudo`, `wheel`, `adm`), nor in `also`.
    pub fn check_unprivileged(&self, also: &[&str]) {
        assert_ne!(self.uid, 0, "{} is root", self.name);
        for group in ["root", "sudo", "wheel", "adm"].iter().chain(also) {
            assert!(!self.in_group(group), "{} is in {group}", self.name);
        }
    }

    /// The user's processes, but zombies (an ended daemon waits for init
    /// to collect it) and those whose command line contains one of
    /// `except`.
    pub fn processes(&self, except: &[&str]) -> String {
        let out = Command::new("ps")
            .args(["-u", &self.name, "-o", "stat=,pid=,args="])
            .output()
            .expect("ps");
        text(&out.stdout)
            .lines()
            .filter(|l| !l.trim_start().starts_with('Z'))
            .filter(|l| !except.iter().any(|e| l.contains(e)))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Fails the test if processes of the user (but `except`) are still
    /// there after 30 s.
    pub fn check_no_processes(&self, except: &[&str]) {
        let gone = testbed_test_support::wait_until(Duration::from_secs(30), || {
            self.processes(except).trim().is_empty().then_some(())
        });
        assert!(
            gone.is_some(),
            "{}'s processes left: {}",
            self.name,
            self.processes(except)
        );
    }

    /// Ends every process of the user (daemons that probes leave by their
    /// own design), and waits until they are gone.
    pub fn stop_processes(&self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .status();
        self.check_no_processes(&[]);
    }
}

/// A store in `/tmp` that every user may read (root fills it; a user
/// uses it read-only, docs/rootless.md).
pub fn readable_store(what: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let store = tempfile::Builder::new()
        .prefix(&format!("testbed-{what}-store-"))
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    store
}

/// The check `name` of `doctor --json`'s output.
pub fn doctor_check(out: &Output, name: &str) -> serde_json::Value {
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    checks
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {checks}"))
        .clone()
}
