//! The small value syntaxes of the script API: durations, link rates and
//! loss fractions, and how durations are written back in messages.

use std::time::Duration;

/// Parses a duration: a plain number of seconds (`2`, `0.5`) or a number
/// with a unit, `ms`, `s`, `m`/`min` or `h`, possibly several (`1m30s`,
/// `500ms`, `1.5s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || {
        format!("bad duration {text:?}: use seconds or a number with ms, s, m or h, e.g. \"500ms\", \"2s\", \"5m\"")
    };
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<f64>() {
        return seconds(secs).ok_or_else(bad);
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(split);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let n: f64 = number.parse().map_err(|_| bad())?;
        let factor = match unit.trim() {
            "ms" => 0.001,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total = total
            .checked_add(seconds(n * factor).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        rest = tail;
    }
    Ok(total)
}

/// A non-negative, finite number of seconds as a `Duration`.
pub fn seconds(secs: f64) -> Option<Duration> {
    if secs.is_finite() && secs >= 0.0 {
        Duration::try_from_secs_f64(secs).ok()
    } else {
        None
    }
}

/// Parses a bandwidth in bits per second with the composition's syntax
/// (`10mbit`, `512kbit`, `1gbit`, `800bit`; see
/// [`testbed_model::units::parse_rate`]); `0` means no limit.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    if text.trim() == "0" {
        return Ok(0);
    }
    testbed_model::units::parse_rate(text).map_err(|e| e.to_string())
}

/// Parses a loss given as text: a fraction (`0.1`) or a percentage (`10%`).
pub fn parse_loss(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let value = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    };
    match value {
        Ok(v) => check_loss(v),
        Err(_) => Err(format!(
            "bad loss {text:?}: use a fraction from 0 to 1 or a percentage, e.g. 0.1 or \"10%\""
        )),
    }
}

/// A loss fraction must be within 0..=1.
pub fn check_loss(v: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("loss must be a fraction from 0 to 1, got {v}"))
    }
}

/// A duration the way people write it: `500ms`, `2s`, `1.5s`, `5m`,
/// `1h30m`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    if secs < 60 || secs % 60 != 0 && secs < 600 {
        let s = d.as_secs_f64();
        let text = format!("{s:.1}");
        return format!("{}s", text.trim_end_matches(".0"));
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "-1", "1d", "1.2.3s", "nan", "inf", "1e400"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.starts_with("bad duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn rates_and_losses() {
        assert_eq!(parse_rate("10mbit"), Ok(10_000_000));
        assert_eq!(parse_rate("512kbit"), Ok(512_000));
        assert_eq!(parse_rate("1Gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("800bit"), Ok(800));
        assert_eq!(parse_rate("1.5mbit"), Ok(1_500_000));
        assert_eq!(parse_rate("0"), Ok(0));
        for bad in ["", "mbit", "10mb", "-1mbit", "10 tbit"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_loss("10%"), Ok(0.1));
        assert_eq!(parse_loss("0.25"), Ok(0.25));
        assert!(parse_loss("150%").is_err());
        assert!(parse_loss("x").is_err());
        assert!(check_loss(-0.1).is_err());
    }

    #[test]
    fn durations_read_back() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(1800)), "30m");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(900)), "15m");
    }
}
