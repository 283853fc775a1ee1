//! Time limits of script calls, and the factor that stretches them on slow
//! machines.
//!
//! Every timeout a call uses, default or given by the script, is multiplied
//! by the timeout factor: 1 with KVM, 5 under TCG (software emulation runs
//! guests several times slower), or `$TESTBED_TIMEOUT_FACTOR`. So a script
//! tuned on a KVM machine keeps passing under emulation. Sleeps are not
//! stretched, and neither is the limit of the whole test.

use std::time::Duration;

use crate::error::DriverError;

/// The variable that overrides the factor.
pub const FACTOR_ENV: &str = "TESTBED_TIMEOUT_FACTOR";

/// The factor under TCG.
pub const TCG_FACTOR: f64 = 5.0;

/// The timeout factor for a cluster running with `accel` (`kvm`, `tcg`,
/// or `none` for containers), unless `env` (the value of [`FACTOR_ENV`]) sets one.
pub fn timeout_factor(accel: &str, env: Option<&str>) -> Result<f64, DriverError> {
    if let Some(text) = env.map(str::trim).filter(|t| !t.is_empty()) {
        return match text.parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 && f <= 1000.0 => Ok(f),
            _ => Err(DriverError::Config(format!(
                "{FACTOR_ENV} must be a number above 0 and at most 1000, got {text:?}"
            ))),
        };
    }
    // Emulation is what is slow; KVM and containers ("none") run natively.
    Ok(if accel == "tcg" { TCG_FACTOR } else { 1.0 })
}

/// The default time limits, before the factor.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// `succeed`, `fail`, `execute`: how long one command may run.
    pub command: Duration,
    /// `wait_until_*`, `wait_for_*`.
    pub wait: Duration,
    /// How often `wait_until_*` retries.
    pub retry_interval: Duration,
    /// How often node states are polled while nodes boot.
    pub poll_interval: Duration,
    /// Commands the artifact collector runs (journals).
    pub artifact_command: Duration,
    /// The multiplier applied to every timeout.
    pub factor: f64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(300),
            wait: Duration::from_secs(300),
            retry_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(500),
            artifact_command: Duration::from_secs(30),
            factor: 1.0,
        }
    }
}

impl Timeouts {
    /// `d` multiplied by the factor.
    pub fn scale(&self, d: Duration) -> Duration {
        Duration::try_from_secs_f64(d.as_secs_f64() * self.factor).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_factor_follows_the_accelerator_unless_overridden() {
        assert_eq!(timeout_factor("kvm", None).unwrap(), 1.0);
        assert_eq!(timeout_factor("none", None).unwrap(), 1.0);
        assert_eq!(timeout_factor("tcg", None).unwrap(), 5.0);
        assert_eq!(timeout_factor("tcg", Some("")).unwrap(), 5.0);
        assert_eq!(timeout_factor("kvm", Some("2.5")).unwrap(), 2.5);
        for bad in ["0", "-1", "x", "nan", "inf", "1e9"] {
            let err = timeout_factor("kvm", Some(bad)).unwrap_err();
            assert!(err.to_string().contains(FACTOR_ENV), "{err}");
        }
    }

    #[test]
    fn scaling_multiplies() {
        let t = Timeouts {
            factor: 5.0,
            ..Timeouts::default()
        };
        assert_eq!(t.scale(Duration::from_secs(60)), Duration::from_secs(300));
    }
}
