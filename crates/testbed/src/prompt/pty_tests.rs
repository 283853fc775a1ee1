//! The prompt in a real (pseudo-)terminal: keystrokes in, what the session
//! evaluated out. The editor reads the process's own terminal, so the
//! prompt runs in a child process: this test binary again, running only
//! this same test with the pty as its terminal and [`CHILD`] set, which
//! makes it the child's side ([`prompt_in_a_terminal`]).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcsetwinsize, Winsize};

use super::tests::Fake;

/// Set for the child: the history key of its session.
const CHILD: &str = "TESTBED_PROMPT_TEST_KEY";
const KEY: &str = "t-0123abcd";
/// Plenty for a debug build on a busy machine; only a failure waits it out.
const TIMEOUT: Duration = Duration::from_secs(30);

const UP: &str = "\x1b[A";
const TAB: &str = "\t";
const ENTER: &str = "\r";
const CTRL_D: &str = "\x04";

/// The child's side: the prompt on the fake session, in a session of its
/// own whose controlling terminal is the pty, as from a shell (the editor
/// opens `/dev/tty`).
fn prompt_in_a_terminal(key: &str) {
    rustix::process::setsid().expect("setsid");
    rustix::process::ioctl_tiocsctty(std::io::stdin()).expect("TIOCSCTTY");
    let mut fake = Fake {
        print: true,
        ..Fake::default()
    };
    super::run(&mut fake, super::history_file(key)).expect("prompt");
}

/// The parent's side: a child on a new pty, and what it wrote so far.
struct Terminal {
    child: Child,
    master: File,
    output: Receiver<Vec<u8>>,
    seen: Vec<u8>,
    /// Where the next `expect` starts looking.
    cursor: usize,
}

impl Terminal {
    fn start(state_home: &Path) -> Terminal {
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        tcsetwinsize(
            &master,
            Winsize {
                ws_row: 24,
                ws_col: 100,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .expect("window size");
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
            .open(name.to_str().expect("pty name"))
            .expect("open the pty");
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "prompt::pty_tests::editing_history_and_completion_in_a_terminal",
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "--quiet",
            ])
            .env(CHILD, KEY)
            .env("XDG_STATE_HOME", state_home)
            .env("TERM", "xterm")
            .stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("start the prompt");
        // Only the child holds the pty's other side now: reading ends
        // (EIO) when it exits.
        let master = File::from(master);
        let mut reader = master.try_clone().expect("dup");
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Terminal {
            child,
            master,
            output,
            seen: Vec::new(),
            cursor: 0,
        }
    }

    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.seen)
            .escape_debug()
            .to_string()
    }

    /// Reads until `text` shows after the previous match.
    fn expect(&mut self, text: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(at) = self.seen[self.cursor..]
                .windows(text.len())
                .position(|w| w == text.as_bytes())
            {
                self.cursor += at + text.len();
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.seen.extend_from_slice(&bytes),
                Err(e) => panic!(
                    "no {:?} in the terminal ({e}); it shows: {}",
                    text,
                    self.shown()
                ),
            }
        }
    }

    /// Types `keys` at the next prompt.
    fn type_at_prompt(&mut self, keys: &str) {
        self.expect("> ");
        self.master.write_all(keys.as_bytes()).expect("type");
    }

    /// Waits for the child to end: its side of the terminal closes.
    fn wait(mut self) -> ExitStatus {
        loop {
            match self.output.recv_timeout(TIMEOUT) {
                Ok(bytes) => self.seen.extend_from_slice(&bytes),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the prompt did not end; it shows: {}", self.shown())
                }
            }
        }
        self.child.wait().expect("wait")
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn history_path(state_home: &Path) -> PathBuf {
    state_home.join("testbed/history").join(KEY)
}

#[test]
fn editing_history_and_completion_in_a_terminal() {
    if let Ok(key) = std::env::var(CHILD) {
        return prompt_in_a_terminal(&key);
    }
    let tmp = tempfile::tempdir().unwrap();
    let state_home = tmp.path().join("state");

    let mut t = Terminal::start(&state_home);
    // An entry, then the same again from the history.
    t.type_at_prompt(&format!("let a = 1{ENTER}"));
    t.expect("eval[let a = 1]");
    t.type_at_prompt(&format!("{UP}{ENTER}"));
    t.expect("eval[let a = 1]");
    // An open block waits for more lines under `. `.
    t.type_at_prompt(&format!("{{{ENTER}"));
    t.expect(". ");
    t.master.write_all(format!("}}{ENTER}").as_bytes()).unwrap();
    t.expect("eval[{ | }]");
    // A node name, then a node method.
    t.type_at_prompt(&format!("ct{TAB}.suc{TAB}\"true\"){ENTER}"));
    t.expect("eval[ctl.succeed(\"true\")]");
    // A global function, with its `(`.
    t.type_at_prompt(&format!("start_{TAB}){ENTER}"));
    t.expect("eval[start_all()]");
    // Arrows move within the line.
    t.type_at_prompt(&format!("compute1.crsh()\x1b[D\x1b[D\x1b[D\x1b[Da{ENTER}"));
    t.expect("eval[compute1.crash()]");
    // Ctrl-C drops what was typed.
    t.type_at_prompt("dropped\x03");
    t.type_at_prompt(&format!(".exit{ENTER}"));
    assert!(t.wait().success());

    let path = history_path(&state_home);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text, "#V2\nlet a = 1\n{\\n}\nctl.succeed(\"true\")\nstart_all()\ncompute1.crash()\n",
        "one entry per piece evaluated, consecutive repeats once"
    );

    // A new session starts with that history; Ctrl-D leaves.
    let mut t = Terminal::start(&state_home);
    t.type_at_prompt(&format!("{UP}{UP}{ENTER}"));
    t.expect("eval[start_all()]");
    t.type_at_prompt(CTRL_D);
    assert!(t.wait().success());
}
