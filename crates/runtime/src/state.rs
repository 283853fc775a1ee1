//! The state directory of one running cluster, and how `down` cleans it
//! up when the supervisor is gone.
//!
//! The layout (where the API socket, the spec, the pids and the nodes'
//! folders are) is `testbed_api::state`, which every client of a cluster
//! needs; it is re-exported here. What stays here kills processes and
//! calls the backends: a directory whose supervisor is gone (killed with
//! SIGKILL, say) is cleaned up by [`teardown`] from its recorded pids alone
//! (and, for containers and libvirt domains, which outlive their
//! supervisor, from the engine's labels or the domains' metadata).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

pub use testbed_api::state::{
    cluster_key, read_pid, root, write_atomic, NodeDir, StateDir, StateError, MAX_SOCKET_PATH,
};

/// Whether process `pid` is alive and its command line mentions `marker`
/// (the state directory's path): a recycled pid never matches, so nothing
/// outside the cluster is ever signalled.
pub fn process_matches(pid: i32, marker: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie has an empty command line; it is already dead.
    let marker = marker.as_os_str().as_encoded_bytes();
    !cmdline.is_empty() && cmdline.windows(marker.len()).any(|w| w == marker)
}

/// What [`teardown`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Teardown {
    /// Processes that were still running and were killed (`(what, pid)`).
    pub killed: Vec<(String, i32)>,
    /// Whether the directory existed and was removed.
    pub removed: bool,
    /// What was removed from (or kept in) a container engine.
    pub engine: Vec<String>,
}

/// Kills whatever the cluster left running (the supervisor, then every
/// node's QEMU, identified by pid *and* command line) and removes the state
/// directory. Works whether or not the supervisor is alive; used by `down`
/// when the supervisor does not answer, and by `up` on a stale directory.
pub fn teardown(dir: &StateDir) -> Result<Teardown, StateError> {
    let mut report = Teardown::default();
    if !dir.exists() {
        return Ok(report);
    }
    let mut victims = Vec::new();
    if let Some(pid) = read_pid(&dir.supervisor_pid()) {
        victims.push(("supervisor".to_owned(), pid));
    }
    if let Ok(entries) = fs::read_dir(dir.nodes_dir()) {
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        for name in names {
            if let Some(pid) = read_pid(&dir.node(&name).pid_file()) {
                victims.push((format!("node {name}"), pid));
            }
        }
    }
    for (what, pid) in victims {
        if process_matches(pid, dir.path()) {
            kill_and_wait(pid, dir.path());
            report.killed.push((what, pid));
        }
    }
    // Containers and libvirt domains outlive their supervisor: the engine
    // or the libvirt daemon owns them; they are found by their labels or
    // metadata naming this state directory.
    if let Ok(spec) = crate::spec::ClusterSpec::read(&dir.spec()) {
        report.engine = crate::backend::reap(&spec, dir);
    }
    fs::remove_dir_all(dir.path()).map_err(|source| StateError::Io {
        what: "remove",
        path: dir.path().to_path_buf(),
        source,
    })?;
    report.removed = true;
    Ok(report)
}

/// SIGKILL, then wait (bounded) until the process is gone: it is not our
/// child, so it cannot be reaped here; its parent (or init) does that.
fn kill_and_wait(pid: i32, marker: &Path) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_matches(pid, marker) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teardown_removes_the_dir_and_spares_unrelated_pids() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path().join("c"));
        dir.create().unwrap();
        // Our own pid does not mention the directory: it must survive.
        write_atomic(
            &dir.supervisor_pid(),
            std::process::id().to_string().as_bytes(),
            0o600,
        )
        .unwrap();
        let report = teardown(&dir).unwrap();
        assert!(report.removed);
        assert!(report.killed.is_empty());
        assert!(!dir.exists());
        // A second teardown has nothing to do.
        assert_eq!(teardown(&dir).unwrap(), Teardown::default());
    }

    #[test]
    fn teardown_kills_a_process_that_belongs_to_the_cluster() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path().join("c"));
        dir.create().unwrap();
        let node = dir.node("n1");
        fs::create_dir_all(&node.path).unwrap();
        // A shell with the state directory in its command line, like QEMU
        // with its socket paths; its short sleeps end on their own.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("while :; do sleep 0.1; done")
            .arg(dir.path())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        write_atomic(&node.pid_file(), pid.to_string().as_bytes(), 0o600).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let report = teardown(&dir).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(report.killed, vec![("node n1".to_owned(), pid)]);
        assert!(!status.success());
        assert!(!dir.exists());
    }
}
