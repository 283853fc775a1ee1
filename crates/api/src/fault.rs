//! The values of the switch's fault table as the API carries them: a
//! link's rule, a change to it, and an entry of the fault history.
//!
//! The switch that applies them (`testbed_runtime::switch`) validates
//! every rule; these types only describe one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A rule on the link between two nodes (both directions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkRule {
    /// The link carries nothing.
    #[serde(default)]
    pub down: bool,
    /// Fraction of frames dropped, 0.0 to 1.0.
    #[serde(default)]
    pub loss: f64,
    /// Added one-way delay.
    #[serde(default, with = "duration_ms")]
    pub delay: Duration,
    /// Delay varies uniformly within ± this.
    #[serde(default, with = "duration_ms")]
    pub jitter: Duration,
    /// Bandwidth limit in bits per second.
    #[serde(default)]
    pub rate_bps: Option<u64>,
}

impl LinkRule {
    /// Whether the rule is no fault at all (the default).
    pub fn is_noop(&self) -> bool {
        *self == LinkRule::default()
    }
}

/// A change to one link's rule: the fields given replace the current ones,
/// the others stay (so `delay` then `loss` gives a link with both);
/// `clear` starts from no rule at all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkChange {
    /// Start from the default rule (no fault) before applying the rest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Added one-way delay, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<f64>,
    /// Jitter, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    /// Bandwidth limit in bits per second; 0 removes the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bps: Option<u64>,
}

impl LinkChange {
    /// The rule that results from applying this change to `current`.
    pub fn apply(&self, current: &LinkRule) -> Result<LinkRule, String> {
        let mut rule = if self.clear {
            LinkRule::default()
        } else {
            current.clone()
        };
        let ms = |v: f64, what: &str| {
            Duration::try_from_secs_f64(v / 1000.0)
                .map_err(|_| format!("{what} must be a non-negative number of milliseconds"))
        };
        if let Some(d) = self.down {
            rule.down = d;
        }
        if let Some(l) = self.loss {
            rule.loss = l;
        }
        if let Some(d) = self.delay_ms {
            rule.delay = ms(d, "delay")?;
            // A new delay without a jitter keeps the jitter only if it
            // still fits.
            if self.jitter_ms.is_none() && rule.jitter > rule.delay {
                rule.jitter = Duration::ZERO;
            }
        }
        if let Some(j) = self.jitter_ms {
            rule.jitter = ms(j, "jitter")?;
        }
        if let Some(r) = self.rate_bps {
            rule.rate_bps = (r > 0).then_some(r);
        }
        Ok(rule)
    }
}

/// The faults in force, as data: what a cluster snapshot saves. A
/// partition lists every node (its groups as the switch holds them).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultState {
    #[serde(default)]
    pub blocked: Vec<String>,
    #[serde(default)]
    pub partition: Vec<Vec<String>>,
    #[serde(default)]
    pub links: Vec<SavedLink>,
}

/// One link's rule in a [`FaultState`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedLink {
    pub a: String,
    pub b: String,
    pub rule: LinkRule,
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1000.0).map_err(serde::de::Error::custom)
    }
}

/// One change to the faults, as kept in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// Seconds since the Unix epoch.
    pub at: f64,
    /// What changed, e.g. `partition [a,b] [c]` or `link a-b delay=50ms`.
    pub change: String,
}
