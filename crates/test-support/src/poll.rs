//! Polling with a deadline.

use std::time::{Duration, Instant};

/// How long [`wait_until`] sleeps between two attempts.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `attempt` until it returns `Some`, and returns that value; `None`
/// if it has not by the time `timeout` has passed.
///
/// `attempt` runs at once, then every [`POLL_INTERVAL`], and once more when
/// the deadline is reached: the last answer, given at the deadline, decides.
pub fn wait_until<T>(timeout: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = attempt() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// Whether `condition` holds within `timeout`: [`wait_until`] for a
/// condition, polled the same way (the answer at the deadline decides).
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    wait_until(timeout, || condition().then_some(())).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value() {
        let mut calls = 0;
        let got = wait_until(Duration::from_secs(5), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(got, Some(3));
    }

    #[test]
    fn tries_at_the_deadline_and_gives_up() {
        let start = Instant::now();
        let timeout = Duration::from_millis(120);
        let mut last = start;
        assert_eq!(
            wait_until(timeout, || -> Option<()> {
                last = Instant::now();
                None
            }),
            None
        );
        assert!(last.duration_since(start) >= timeout);
        assert!(!eventually(Duration::ZERO, || false));
        assert!(eventually(Duration::ZERO, || true));
    }
}
