//! Snapshot archives: an archive's past states, by time.
//!
//! A snapshot archive serves the state an archive was in at a given time
//! under `<base>/archive/<archive>/<YYYYMMDDTHHMMSSZ>/`, with the archive's
//! usual layout below (`dists/`, `pool/`); asked for a time between two of
//! its snapshots it serves the earlier one. That is the layout of Debian's
//! public snapshot service, the default for `debian/*` distributions, and
//! what a mirror of it or a folder served over HTTP can provide.
//!
//! A lock records per role the time of the archive state it was resolved
//! against (its *snapshot point*) and the archives by name
//! (`debian-security bookworm-security main`), so that the snapshot sources
//! of a role can be written down years later without knowing which mirror
//! the lock was made with.

use crate::apt::SourceLine;

/// Debian's public snapshot service: the fallback for `debian/*` when
/// neither the composition nor [`SNAPSHOT_ENV`] says otherwise.
pub const DEBIAN_SNAPSHOT: &str = "https://snapshot.debian.org";

/// The environment variable that overrides the snapshot archive's base URL
/// (or disables the fallback with `off`), over the composition's
/// `snapshot` key.
pub const SNAPSHOT_ENV: &str = "TESTBED_SNAPSHOT";

/// The environment variable that accepts a snapshot archive whose indices
/// are not signed by the distribution's keys (`1`): a local test archive.
/// The lock's digests are then the only check of what is installed, and a
/// lock can be edited in the same commit as the `snapshot` URL, so this is
/// never the default.
pub const SNAPSHOT_UNSIGNED_ENV: &str = "TESTBED_SNAPSHOT_UNSIGNED";

/// A snapshot archive imports an archive's state some hours after the
/// archive published it, so the snapshot *at* a lock's point may still be
/// the state before it. The points asked, in order: the lock's, then a day
/// later (by then the state of the lock's point has been imported, and an
/// archive rarely drops a version within a day).
pub const LATER_POINTS: &[u64] = &[0, 86_400];

/// The snapshot archive's base URL for a distribution `vendor`: the
/// environment's, else the composition's (`setting`, where `off` disables
/// it), else Debian's for `debian`. `None` means no snapshot fallback.
pub fn base_url(vendor: &str, setting: Option<&str>) -> Option<String> {
    choose(std::env::var(SNAPSHOT_ENV).ok().as_deref(), setting, vendor)
}

fn choose(env: Option<&str>, setting: Option<&str>, vendor: &str) -> Option<String> {
    let env = env.filter(|v| !v.trim().is_empty());
    let chosen = env.or(setting);
    match chosen.map(str::trim) {
        Some("off") => None,
        Some(url) => Some(url.trim_end_matches('/').to_string()),
        None => (vendor == "debian").then(|| DEBIAN_SNAPSHOT.to_string()),
    }
}

/// The archive name a source URI stands for: the `<archive>` of a snapshot
/// URL (`.../archive/debian-security/20250101T000000Z`), else the URI's
/// last path segment (`http://mirror/debian-security` → `debian-security`;
/// apt's mirror lists, `mirror+file:///etc/apt/mirrors/debian.list` as
/// Debian's cloud images have them, → `debian`).
pub fn archive_name(uri: &str) -> String {
    let uri = uri.strip_prefix("mirror+").unwrap_or(uri);
    let path = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let path = path.strip_suffix(".list").unwrap_or(path);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(i) = segments.iter().position(|s| *s == "archive") {
        if let (Some(name), Some(ts)) = (segments.get(i + 1), segments.get(i + 2)) {
            if parse_timestamp(ts).is_some() {
                return name.to_string();
            }
        }
    }
    match segments.as_slice() {
        [_host, .., last] => last.to_string(),
        _ => "debian".to_string(),
    }
}

/// The archives of `sources` as a lock records them: `name suite
/// components...`, in order, without duplicates.
pub fn archives(sources: &[SourceLine]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in sources {
        let mut line = format!("{} {}", archive_name(&s.uri), s.suite);
        for c in &s.components {
            line.push(' ');
            line.push_str(c);
        }
        if !out.contains(&line) {
            out.push(line);
        }
    }
    out
}

/// The sources of `archives` (as [`archives`] writes them) in the snapshot
/// archive at `base`, at `point`, checked with the keyrings `signed_by`
/// (a `signed-by` list), or accepted unsigned when it is `None`.
pub fn sources_at(
    base: &str,
    archives: &[String],
    point: &str,
    signed_by: Option<&str>,
) -> Vec<SourceLine> {
    archives
        .iter()
        .filter_map(|a| {
            let mut words = a.split_whitespace();
            let (name, suite) = (words.next()?, words.next()?);
            Some(SourceLine {
                uri: format!("{}/archive/{name}/{point}", base.trim_end_matches('/')),
                suite: suite.to_string(),
                components: words.map(str::to_string).collect(),
                signed_by: signed_by.map(str::to_string),
                trusted: signed_by.is_none(),
            })
        })
        .collect()
}

/// A Unix time as a snapshot timestamp, `YYYYMMDDTHHMMSSZ`.
pub fn format_timestamp(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil from days, Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A snapshot timestamp as a Unix time; `None` unless it is exactly of the
/// form `YYYYMMDDTHHMMSSZ` and a valid time.
pub fn parse_timestamp(ts: &str) -> Option<u64> {
    let b = ts.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = ts.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, m, s) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 59 {
        return None;
    }
    let y = year as i64 - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let unix = days * 86_400 + h * 3600 + m * 60 + s;
    // 31 February and the like come back as another date.
    (format_timestamp(unix) == ts).then_some(unix)
}

/// The points to ask for a lock's `point`, per [`LATER_POINTS`].
pub fn points(point: &str) -> Vec<String> {
    match parse_timestamp(point) {
        Some(t) => LATER_POINTS
            .iter()
            .map(|d| format_timestamp(t + d))
            .collect(),
        None => vec![point.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_reject_what_is_not_one() {
        assert_eq!(format_timestamp(0), "19700101T000000Z");
        assert_eq!(format_timestamp(1_746_869_602), "20250510T093322Z");
        assert_eq!(format_timestamp(951_825_600), "20000229T120000Z");
        for t in [0, 951_825_600, 1_746_869_602, 4_102_444_799] {
            assert_eq!(parse_timestamp(&format_timestamp(t)), Some(t));
        }
        for bad in [
            "2025-05-10",
            "20250510T093322",
            "20250231T000000Z",
            "20251301T000000Z",
            "2025051OT093322Z",
            "20250510T246000Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        assert_eq!(
            points("20250510T093322Z"),
            ["20250510T093322Z", "20250511T093322Z"]
        );
    }

    #[test]
    fn archives_are_named_without_their_host() {
        let line = |uri: &str, suite: &str| SourceLine {
            uri: uri.into(),
            suite: suite.into(),
            components: vec!["main".into(), "contrib".into()],
            signed_by: None,
            trusted: false,
        };
        let sources = [
            line("http://mirror.example.invalid/debian", "bookworm"),
            line("http://mirror.example.invalid/debian", "bookworm-updates"),
            line(
                "https://m.example.invalid/debian-security/",
                "bookworm-security",
            ),
            line("http://m.example.invalid/debian", "bookworm"),
            line(
                "http://snap.example.invalid/archive/debian-ports/20240101T000000Z",
                "sid",
            ),
        ];
        let named = archives(&sources);
        assert_eq!(
            named,
            [
                "debian bookworm main contrib",
                "debian bookworm-updates main contrib",
                "debian-security bookworm-security main contrib",
                "debian-ports sid main contrib",
            ]
        );
        assert_eq!(archive_name("http://host.example.invalid"), "debian");
        assert_eq!(
            archive_name("mirror+file:///etc/apt/mirrors/debian-security.list"),
            "debian-security"
        );
        let unsigned = sources_at(
            "http://127.0.0.1:8/snap/",
            &named[2..3],
            "20250510T093322Z",
            None,
        );
        assert_eq!(
            unsigned[0].one_line(),
            "deb [trusted=yes] http://127.0.0.1:8/snap/archive/debian-security/20250510T093322Z bookworm-security main contrib"
        );
        let signed = sources_at(
            "http://s",
            &named[..1],
            "20250510T093322Z",
            Some("/k.gpg,/r.gpg"),
        );
        assert_eq!(
            signed[0].one_line(),
            "deb [signed-by=/k.gpg,/r.gpg] http://s/archive/debian/20250510T093322Z bookworm main contrib"
        );
    }

    #[test]
    fn the_base_url_comes_from_the_environment_the_setting_or_debian() {
        assert_eq!(
            choose(None, None, "debian").as_deref(),
            Some(DEBIAN_SNAPSHOT)
        );
        assert_eq!(
            choose(Some(""), None, "debian").as_deref(),
            Some(DEBIAN_SNAPSHOT)
        );
        assert_eq!(choose(None, None, "ubuntu"), None);
        assert_eq!(choose(None, Some("off"), "debian"), None);
        assert_eq!(
            choose(None, Some("http://127.0.0.1:9/s/"), "debian").as_deref(),
            Some("http://127.0.0.1:9/s")
        );
        // The environment wins over the composition, both ways.
        assert_eq!(
            choose(Some("off"), Some("http://127.0.0.1:9/s"), "debian"),
            None
        );
        assert_eq!(
            choose(Some("http://127.0.0.1:7"), Some("off"), "debian").as_deref(),
            Some("http://127.0.0.1:7")
        );
    }
}
