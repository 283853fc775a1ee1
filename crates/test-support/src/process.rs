//! Commands and processes.

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` and returns its standard output; fails the test, with the
/// command, its status and its output, if it cannot run or fails.
pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out.stdout
}

/// Runs `cmd` (standard input closed, output captured) for at most
/// `limit`: its output, or, once `limit` has passed, `Err` with what it
/// had printed by then, after killing it. A hang then fails a test within
/// minutes, with the output so far, instead of running into CI's limit.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    wait_within(child, limit)
}

/// [`output_within`] for a process already started (with its output
/// piped, or what it printed is not in the result): waits at most
/// `limit` from now.
pub fn wait_within(mut child: Child, limit: Duration) -> Result<Output, Output> {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let (status, finished) = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break (status, true);
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            break (child.wait().expect("wait for the killed command"), false);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // A daemon the command started may hold its pipes open: what the
    // command printed itself is read, for a bounded time.
    let collect = |reader: std::thread::JoinHandle<Vec<u8>>| {
        let until = Instant::now() + Duration::from_secs(5);
        while !reader.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if reader.is_finished() {
            reader.join().unwrap_or_default()
        } else {
            b"(output not closed: a process the command started holds it)".to_vec()
        }
    };
    let out = Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    };
    if finished {
        Ok(out)
    } else {
        Err(out)
    }
}

/// Bytes of a command's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether process `pid` is alive: present in `/proc` and not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .map(|rest| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(is_alive(std::process::id()));
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        assert!(!is_alive(pid));
    }

    #[test]
    fn output_within_returns_the_output_or_kills_the_command_at_its_limit() {
        let out = output_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(60),
        )
        .expect("finished");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(
            (text(&out.stdout), text(&out.stderr)),
            ("out\n".into(), "err\n".into())
        );

        let start = Instant::now();
        let out = output_within(
            Command::new("sh").args(["-c", "echo started; exec sleep 600"]),
            Duration::from_millis(500),
        )
        .expect_err("killed");
        assert!(start.elapsed() < Duration::from_secs(30));
        assert_eq!(text(&out.stdout), "started\n");
        assert!(!out.status.success());
    }

    #[test]
    fn run_ok_returns_stdout() {
        assert_eq!(run_ok(Command::new("echo").arg("hi")), b"hi\n");
    }
}
