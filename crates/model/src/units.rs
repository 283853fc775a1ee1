//! Small value syntaxes of the format: sizes, durations, modes, owners, names.
//! Each parser returns a message and a help text that the validator attaches
//! to the span of the offending value.

use std::time::Duration;

/// A parse failure: what is wrong and what would be valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// What is wrong.
    pub message: String,
    /// What would be valid.
    pub help: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.help)
    }
}

impl std::error::Error for Invalid {}

fn invalid(message: impl Into<String>, help: impl Into<String>) -> Invalid {
    Invalid {
        message: message.into(),
        help: help.into(),
    }
}

/// Parses `"512MiB"`, `"1GiB"`, `"1536 MiB"` into MiB. Decimal units (MB, GB)
/// are refused rather than guessed, because guests see binary sizes.
pub(crate) fn parse_memory(text: &str) -> Result<u64, Invalid> {
    const HELP: &str = "use a whole number with KiB, MiB, GiB or TiB, e.g. \"512MiB\" or \"2GiB\"";
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit = unit.trim();
    if digits.is_empty() {
        return Err(invalid(format!("bad memory size \"{text}\""), HELP));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| invalid(format!("memory size \"{text}\" is too large"), HELP))?;
    let kib = match unit {
        "KiB" => Some(n),
        "MiB" => n.checked_mul(1024),
        "GiB" => n.checked_mul(1024 * 1024),
        "TiB" => n.checked_mul(1024 * 1024 * 1024),
        "" => return Err(invalid(format!("memory size \"{text}\" has no unit"), HELP)),
        other => {
            let hint = match other.to_ascii_lowercase().as_str() {
                "k" | "kb" => " (did you mean KiB?)",
                "m" | "mb" => " (did you mean MiB?)",
                "g" | "gb" => " (did you mean GiB?)",
                "t" | "tb" => " (did you mean TiB?)",
                _ => "",
            };
            return Err(invalid(
                format!("bad memory unit \"{other}\" in \"{text}\"{hint}"),
                HELP,
            ));
        }
    };
    let kib = kib.ok_or_else(|| invalid(format!("memory size \"{text}\" is too large"), HELP))?;
    if kib % 1024 != 0 {
        return Err(invalid(
            format!("memory size \"{text}\" is not a whole number of MiB"),
            HELP,
        ));
    }
    let mib = kib / 1024;
    if mib < 128 {
        return Err(invalid(
            format!("memory size \"{text}\" is too small to boot a node"),
            "use at least \"128MiB\"",
        ));
    }
    if mib > 1024 * 1024 {
        return Err(invalid(
            format!("memory size \"{text}\" is too large"),
            "use at most \"1TiB\"",
        ));
    }
    Ok(mib)
}

/// Parses `"90s"`, `"30m"`, `"2h"`, `"1h30m"` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, Invalid> {
    const HELP: &str = "use a number with s, m or h, e.g. \"90s\", \"30m\" or \"1h30m\"";
    let t = text.trim();
    if t.is_empty() {
        return Err(invalid("empty duration", HELP));
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, tail) = rest.split_at(split);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let n: u64 = digits
            .parse()
            .map_err(|_| invalid(format!("bad duration \"{text}\""), HELP))?;
        let factor = match unit {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            _ => return Err(invalid(format!("bad duration \"{text}\""), HELP)),
        };
        total = n
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| invalid(format!("duration \"{text}\" is too long"), HELP))?;
        rest = tail;
    }
    if total == 0 {
        return Err(invalid("a zero duration allows nothing to run", HELP));
    }
    Ok(Duration::from_secs(total))
}

/// Splits `"12.5ms"` into `(12.5, "ms")`.
fn number_and_unit(t: &str) -> Option<(f64, &str)> {
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    n.is_finite().then_some((n, unit.trim()))
}

/// Parses a link delay or jitter: `"50ms"`, `"1.5s"`, `"200us"`, `"0"`.
/// Unlike [`parse_duration`] it takes fractions and sub-second units, and
/// zero (no delay).
pub fn parse_delay(text: &str) -> Result<Duration, Invalid> {
    const HELP: &str = "use a number with us, ms or s, e.g. \"50ms\" or \"1.5s\"";
    let t = text.trim();
    let (n, unit) =
        number_and_unit(t).ok_or_else(|| invalid(format!("bad delay \"{text}\""), HELP))?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "" if n == 0.0 => 0.0,
        "" => return Err(invalid(format!("delay \"{text}\" has no unit"), HELP)),
        _ => return Err(invalid(format!("bad delay unit in \"{text}\""), HELP)),
    };
    if secs > 3600.0 {
        return Err(invalid(
            format!("delay \"{text}\" is too long"),
            "use at most an hour",
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a bandwidth in bits per second: `"10mbit"`, `"512kbit"`,
/// `"1gbit"`, `"9600bit"`, as `tc` writes them. Byte units (`kbps`, which
/// `tc` reads as kilo*bytes*) are refused rather than guessed.
pub fn parse_rate(text: &str) -> Result<u64, Invalid> {
    const HELP: &str = "use a number with bit, kbit, mbit or gbit, e.g. \"10mbit\"";
    let t = text.trim();
    let (n, unit) =
        number_and_unit(t).ok_or_else(|| invalid(format!("bad rate \"{text}\""), HELP))?;
    let factor = match unit.to_ascii_lowercase().as_str() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "" => return Err(invalid(format!("rate \"{text}\" has no unit"), HELP)),
        other if other.ends_with("bps") || other.ends_with('b') => {
            return Err(invalid(
                format!("ambiguous rate unit in \"{text}\" (bits or bytes?)"),
                HELP,
            ))
        }
        _ => return Err(invalid(format!("bad rate unit in \"{text}\""), HELP)),
    };
    let bps = (n * factor).round();
    if !(1.0..=1e12).contains(&bps) {
        return Err(invalid(
            format!("rate \"{text}\" is out of range"),
            "use between 1bit and 1000gbit",
        ));
    }
    Ok(bps as u64)
}

/// Parses an octal mode string such as `"0644"` or `"600"`.
pub(crate) fn parse_mode(text: &str) -> Result<u32, Invalid> {
    const HELP: &str = "use octal digits as a string, e.g. \"0644\" or \"0400\"";
    let t = text.trim();
    if !(3..=4).contains(&t.len()) || !t.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(invalid(format!("bad file mode \"{text}\""), HELP));
    }
    u32::from_str_radix(t, 8).map_err(|_| invalid(format!("bad file mode \"{text}\""), HELP))
}

fn is_account_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        && s.len() <= 32
}

/// Checks `user` or `user:group`.
pub(crate) fn check_owner(text: &str) -> Result<(), Invalid> {
    let ok = match text.split_once(':') {
        Some((u, g)) => is_account_name(u) && is_account_name(g),
        None => is_account_name(text),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("bad owner \"{text}\""),
            "use \"user\" or \"user:group\" with lowercase account names, e.g. \"munge:munge\"",
        ))
    }
}

/// Names that become host names or interface names: `[a-z][a-z0-9-]*`, at
/// most `max` characters, not ending with `-`.
pub(crate) fn check_name(text: &str, what: &str, max: usize) -> Result<(), Invalid> {
    let mut chars = text.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.ends_with('-')
        && text.len() <= max;
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("bad {what} name \"{text}\""),
            format!(
                "a {what} name starts with a lowercase letter, then lowercase letters, digits or '-', at most {max} characters"
            ),
        ))
    }
}

/// Debian package names (Debian Policy 5.6.1), without version constraints:
/// versions come from the lock file.
pub(crate) fn check_package(text: &str) -> Result<(), Invalid> {
    let mut chars = text.chars();
    let ok = text.len() >= 2
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
    if ok {
        return Ok(());
    }
    let help = if text.contains('=') || text.contains(' ') {
        "give the package name only; exact versions are pinned in testbed.lock"
    } else {
        "a Debian package name has lowercase letters, digits, '+', '-' and '.'"
    };
    Err(invalid(format!("bad package name \"{text}\""), help))
}

/// What a registry cache repository looks like, for the help of every
/// problem with one.
const REPOSITORY_HELP: &str = "write HOST[:PORT]/PATH without a scheme, tag or digest, e.g. \"127.0.0.1:5000/team/slurm\": the host has a '.' or a ':' (or is localhost), the path is lowercase letters and digits separated by '.', '_', '__' or '-', in components separated by '/'";

/// Checks the repository of a registry cache (`[cluster] cache`, and the
/// user's config file): `HOST[:PORT]/PATH`, with no scheme, tag or digest.
///
/// This is the syntax `testbed_cache::Registry::open` accepts (its own
/// checks, then the OCI distribution reference grammar of `oci-spec`),
/// written out here because the model stays pure and light: it cannot
/// depend on the cache crate (an HTTP client, an async runtime, TLS) to
/// validate a string. Whatever this accepts, the cache client accepts too,
/// so a composition that passes `testbed check` never fails to open its
/// cache for its syntax; the only inputs the client takes that this
/// refuses are hosts with a '_' (which its grammar lets through when
/// it reads the host as a path component, and which no host name has).
pub fn check_repository(text: &str) -> Result<(), Invalid> {
    let bad = |reason: &str| {
        invalid(
            format!("bad cache repository \"{text}\": {reason}"),
            REPOSITORY_HELP,
        )
    };
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    if text.contains("://") {
        return Err(bad("a repository has no scheme (a registry on this machine is spoken to in plain HTTP, any other over HTTPS)"));
    }
    if text.contains('@') {
        return Err(bad("a repository has no digest"));
    }
    let Some((host, path)) = text.split_once('/') else {
        return Err(bad("it names no registry host"));
    };
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return Err(bad(
            "its first part must be a registry host, such as 127.0.0.1:5000",
        ));
    }
    if host.starts_with('[') {
        return Err(bad(
            "the registry cannot be an IPv6 address (the OCI reference grammar has none); use a host name or an IPv4 address",
        ));
    }
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(&format!("bad registry port \"{port}\"")));
        }
    }
    // Host labels: letters, digits and '-' inside (IPv4 addresses too).
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !name.split('.').all(label_ok) {
        return Err(bad(&format!("bad registry host \"{name}\"")));
    }
    if path.is_empty() {
        return Err(bad("it has no path after the host"));
    }
    if path.contains(':') {
        return Err(bad(
            "a repository has no tag: the store key of each image is its tag",
        ));
    }
    if path.len() > 255 {
        return Err(bad("its path is longer than 255 characters"));
    }
    for component in path.split('/') {
        if !is_path_component(component) {
            let shown = if component.is_empty() {
                "an empty path component".to_string()
            } else {
                format!("bad path component \"{component}\"")
            };
            return Err(bad(&shown));
        }
    }
    Ok(())
}

/// One component of a repository's path, as the OCI distribution grammar
/// has it: `[a-z0-9]+` runs joined by one '.', one or two '_', or any
/// number of '-'.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// The debconf types `debconf-set-selections` accepts.
const DEBCONF_TYPES: &[&str] = &[
    "boolean",
    "string",
    "select",
    "multiselect",
    "note",
    "text",
    "password",
    "title",
    "error",
];

/// One line of `debconf-set-selections`: `package question type value`
/// (the value may be empty or hold spaces; a boolean is `true` or `false`).
pub(crate) fn check_debconf(text: &str) -> Result<(), Invalid> {
    const FORM: &str = "write \"package question type value\", e.g. \"gridengine-common shared/gridengineconfig boolean false\"";
    if text.contains(['\n', '\r']) {
        return Err(invalid(
            format!("debconf answer {text:?} spans several lines"),
            "give one answer per list item",
        ));
    }
    let mut fields = text.split_whitespace();
    let (Some(owner), Some(question), Some(kind)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(invalid(
            format!("debconf answer \"{text}\" is missing fields"),
            FORM,
        ));
    };
    if check_package(owner).is_err() {
        return Err(invalid(
            format!("debconf answer \"{text}\": \"{owner}\" is not a package name"),
            FORM,
        ));
    }
    if !question.contains('/') || question.starts_with('/') || question.ends_with('/') {
        return Err(invalid(
            format!("debconf answer \"{text}\": \"{question}\" is not a question name"),
            "questions are named like \"shared/gridengineconfig\" or \"postfix/main_mailer_type\"",
        ));
    }
    if !DEBCONF_TYPES.contains(&kind) {
        return Err(invalid(
            format!("debconf answer \"{text}\": unknown type \"{kind}\""),
            format!("use one of: {}", DEBCONF_TYPES.join(", ")),
        ));
    }
    let value: Vec<&str> = fields.collect();
    if kind == "boolean" && !matches!(value.as_slice(), ["true"] | ["false"]) {
        return Err(invalid(
            format!("debconf answer \"{text}\": a boolean is true or false"),
            FORM,
        ));
    }
    Ok(())
}

/// systemd unit names; a name without a suffix means `.service`.
pub(crate) fn check_unit(text: &str) -> Result<(), Invalid> {
    let ok = !text.is_empty()
        && text.len() <= 255
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '@' | '-' | '\\'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("bad systemd unit name \"{text}\""),
            "use a unit name such as \"slurmd\" or \"slurmd.service\"",
        ))
    }
}

/// Absolute guest paths: no `.`/`..` components, not `/` itself.
pub(crate) fn check_guest_path(text: &str) -> Result<(), Invalid> {
    let ok = text.starts_with('/')
        && text.len() > 1
        && !text.ends_with('/')
        && !text.contains('\0')
        && text
            .split('/')
            .skip(1)
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("bad guest path \"{text}\""),
            "use an absolute file path without '.' or '..', e.g. \"/etc/slurm/slurm.conf\"",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_repositories_are_host_and_lowercase_path_without_tag() {
        for good in [
            "127.0.0.1:5000/team/slurm",
            "localhost/x",
            "localhost:5000/a/b/c",
            "registry.example.org/team/slurm",
            "ghcr.io/some-org/a.b_c__d---e",
            "registry-1.example:443/x0",
        ] {
            assert_eq!(check_repository(good), Ok(()), "{good}");
        }
        for (bad, reason) in [
            ("", "it is empty"),
            ("http://127.0.0.1:5000/x", "a repository has no scheme"),
            ("slurm", "it names no registry host"),
            ("team/slurm", "its first part must be a registry host"),
            ("127.0.0.1:5000/slurm:v1", "a repository has no tag"),
            ("127.0.0.1:5000/x@sha256:00", "a repository has no digest"),
            ("127.0.0.1:5000/", "it has no path after the host"),
            ("127.0.0.1:50a0/x", "bad registry port \"50a0\""),
            ("127.0.0.1:/x", "bad registry port \"\""),
            ("-bad.example/x", "bad registry host \"-bad.example\""),
            ("[::1]:5000/x", "the registry cannot be an IPv6 address"),
            ("127.0.0.1:5000/Team/slurm", "bad path component \"Team\""),
            ("127.0.0.1:5000/team//slurm", "an empty path component"),
            ("127.0.0.1:5000/team/slurm/", "an empty path component"),
            ("127.0.0.1:5000/a..b", "bad path component \"a..b\""),
            ("127.0.0.1:5000/a___b", "bad path component \"a___b\""),
            ("127.0.0.1:5000/-a", "bad path component \"-a\""),
            ("127.0.0.1:5000/a b", "bad path component \"a b\""),
        ] {
            let e = check_repository(bad).expect_err(bad);
            assert!(
                e.message
                    .starts_with(&format!("bad cache repository \"{bad}\": {reason}")),
                "{bad}: {}",
                e.message
            );
            assert!(e.help.contains("HOST[:PORT]/PATH"), "{}", e.help);
        }
        let long = format!("localhost/{}", "a".repeat(256));
        assert!(check_repository(&long).is_err());
    }

    #[test]
    fn delays_take_fractions_and_small_units() {
        assert_eq!(parse_delay("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_delay("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_delay("200us"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_delay("0"), Ok(Duration::ZERO));
        assert!(parse_delay("50").unwrap_err().message.contains("no unit"));
        assert!(parse_delay("-5ms").is_err());
        assert!(parse_delay("5 minutes").is_err());
        assert!(parse_delay("2h").is_err());
    }

    #[test]
    fn rates_are_bits_per_second() {
        assert_eq!(parse_rate("10mbit"), Ok(10_000_000));
        assert_eq!(parse_rate("512kbit"), Ok(512_000));
        assert_eq!(parse_rate("1.5Gbit"), Ok(1_500_000_000));
        assert_eq!(parse_rate("9600bit"), Ok(9600));
        assert!(parse_rate("10kbps")
            .unwrap_err()
            .message
            .contains("bits or bytes"));
        assert!(parse_rate("10MB")
            .unwrap_err()
            .message
            .contains("bits or bytes"));
        assert!(parse_rate("0bit")
            .unwrap_err()
            .message
            .contains("out of range"));
        assert!(parse_rate("10").unwrap_err().message.contains("no unit"));
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512MiB"), Ok(512));
        assert_eq!(parse_memory("1GiB"), Ok(1024));
        assert_eq!(parse_memory("1536 MiB"), Ok(1536));
        assert_eq!(parse_memory("262144KiB"), Ok(256));
        let e = parse_memory("512MB").unwrap_err();
        assert_eq!(
            e.message,
            "bad memory unit \"MB\" in \"512MB\" (did you mean MiB?)"
        );
        assert!(parse_memory("512")
            .unwrap_err()
            .message
            .contains("has no unit"));
        assert!(parse_memory("MiB").is_err());
        assert!(parse_memory("64MiB")
            .unwrap_err()
            .message
            .contains("too small"));
        assert!(parse_memory("99999999999999999999GiB").is_err());
        assert!(parse_memory("18446744073709551615TiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn modes_owners_names() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert!(parse_mode("0o644").is_err());
        assert!(parse_mode("0999").is_err());
        assert!(check_owner("munge:munge").is_ok());
        assert!(check_owner("root").is_ok());
        assert!(check_owner("Root").is_err());
        assert!(check_owner("a:b:c").is_err());
        assert!(check_name("compute", "role", 40).is_ok());
        assert!(check_name("Compute", "role", 40).is_err());
        assert!(check_name("c-", "role", 40).is_err());
        assert!(check_name("1c", "role", 40).is_err());
        assert!(check_package("slurm-client").is_ok());
        assert!(check_package("libstdc++6").is_ok());
        assert!(check_package("slurmd=22.05")
            .unwrap_err()
            .help
            .contains("testbed.lock"));
        assert!(check_unit("serial-getty@ttyS0.service").is_ok());
        assert!(check_unit("a b").is_err());
        assert!(check_guest_path("/etc/x.conf").is_ok());
        assert!(check_guest_path("etc/x").is_err());
        assert!(check_guest_path("/etc/../x").is_err());
        assert!(check_guest_path("/").is_err());
    }
}
