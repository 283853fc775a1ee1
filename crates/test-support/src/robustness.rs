//! The suite's robustness figures: each fuzz target (and the secrets scan)
//! appends one line to `robustness.txt` in the target's temporary folder,
//! which `scripts/test.sh` prints at the end of the suite.
//!
//! The folder is the caller's `env!("CARGO_TARGET_TMPDIR")`: Cargo sets it
//! only when it compiles an integration test, so this crate cannot name it
//! itself.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that overrides every fuzz target's number of
/// cases, for a longer local run (`TESTBED_FUZZ_CASES=100000 cargo test
/// --release -p testbed-proto --test fuzz`).
pub const FUZZ_CASES_VAR: &str = "TESTBED_FUZZ_CASES";

/// Appends `line` to `tmpdir/robustness.txt`. Failures are ignored: a
/// figure that cannot be written must not fail the test that measured it.
pub fn record_robustness(tmpdir: impl AsRef<Path>, line: &str) {
    let path = tmpdir.as_ref().join("robustness.txt");
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
}

/// The number of cases a fuzz target runs: `default`, or the value of
/// [`FUZZ_CASES_VAR`] when it is set to a number.
pub fn fuzz_cases(default: u32) -> u32 {
    count_from_env(FUZZ_CASES_VAR, default)
}

/// The number in the environment variable `var`, or `default` when it is
/// unset or not a number (how many cases or trials a longer local run
/// asks for).
pub fn count_from_env<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A small seeded random sequence (xorshift64*) for chaos trials: a trial
/// is reproduced from its seed, which a failure names.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// `valid` with some bytes changed, to fuzz a parser with files that are
/// nearly right: each `(position, mask)` XORs the byte at `position`
/// (modulo the length) with `mask`.
pub fn flip_bytes(valid: &[u8], flips: &[(usize, u8)]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    if !bytes.is_empty() {
        for &(position, mask) in flips {
            let len = bytes.len();
            bytes[position % len] ^= mask;
        }
    }
    bytes
}

/// Writes `bytes` as a new file at `path`, removing the old one first. A
/// fuzz target rewrites its input file at every case: rewriting it in
/// place (truncating it) makes ext4 write it to disk when it is closed
/// (`auto_da_alloc`), which costs a disk write per case.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::write(path, bytes)
}

/// One fuzz target's run: counts the cases its property body ran and, when
/// dropped, records `fuzz TARGET: N cases, C crashes`, where a crash is the
/// property failing (the test thread is unwinding then).
///
/// ```text
/// let fuzz = Fuzz::new(env!("CARGO_TARGET_TMPDIR"), "lock file");
/// proptest!(ProptestConfig::with_cases(fuzz.cases(256)), |(text in ".*")| {
///     fuzz.case();
///     let _ = Lockfile::parse(&text, Path::new("x"));
/// });
/// ```
#[derive(Debug)]
pub struct Fuzz {
    tmpdir: PathBuf,
    target: String,
    cases: AtomicU64,
}

impl Fuzz {
    pub fn new(tmpdir: impl AsRef<Path>, target: &str) -> Fuzz {
        Fuzz {
            tmpdir: tmpdir.as_ref().to_path_buf(),
            target: target.to_owned(),
            cases: AtomicU64::new(0),
        }
    }

    /// How many cases to run: [`fuzz_cases`] of `default`.
    pub fn cases(&self, default: u32) -> u32 {
        fuzz_cases(default)
    }

    /// Counts one case; call it first thing in the property's body.
    pub fn case(&self) {
        self.cases.fetch_add(1, Ordering::Relaxed);
    }

    /// The cases counted so far.
    pub fn count(&self) -> u64 {
        self.cases.load(Ordering::Relaxed)
    }
}

impl Drop for Fuzz {
    fn drop(&mut self) {
        let crashes = u32::from(std::thread::panicking());
        record_robustness(
            &self.tmpdir,
            &format!(
                "fuzz {}: {} cases, {crashes} crashes",
                self.target,
                self.count()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_records_its_cases_and_a_failure_as_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let fuzz = Fuzz::new(dir.path(), "ok");
            for _ in 0..3 {
                fuzz.case();
            }
        }
        let failed = std::panic::catch_unwind(|| {
            let fuzz = Fuzz::new(dir.path(), "bad");
            fuzz.case();
            panic!("the property failed");
        });
        assert!(failed.is_err());
        let text = std::fs::read_to_string(dir.path().join("robustness.txt")).unwrap();
        assert_eq!(
            text,
            "fuzz ok: 3 cases, 0 crashes\nfuzz bad: 1 cases, 1 crashes\n"
        );
    }
}
