//! A private apt: the host's `apt-get` run against a directory of our own
//! (sources, lists, cache, an empty dpkg status), so that locking and
//! checking never touch the host's package state and need no root.
//!
//! apt is pointed at the private tree with `APT_CONFIG`, which apt reads
//! *before* `/etc/apt/apt.conf.d`; because that file moves `Dir::Etc::Parts`
//! to the private tree, the host's hooks (`DPkg::Post-Invoke`,
//! `APT::Update::Post-Invoke`, ...) never run. Only the host's network
//! settings (proxies, `Check-Valid-Until`, ...) are carried over, taken from
//! `apt-config dump`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{ImageError, IoContext, Result};
use crate::tools::{self, APT_GET};

/// The keyring Debian's archive is signed with, when it is installed.
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Debian's keys of the past (expired or retired), which old archive
/// states are signed with.
const DEBIAN_REMOVED_KEYS: &str = "/usr/share/keyrings/debian-archive-removed-keys.gpg";

/// The keyrings a Debian archive state of any age is checked with, as a
/// `signed-by` list: the current keys and, when installed, the removed
/// ones. `None` when Debian's keyring is not installed.
pub fn debian_keyrings() -> Option<String> {
    if !Path::new(DEBIAN_KEYRING).is_file() {
        return None;
    }
    let mut list = DEBIAN_KEYRING.to_string();
    if Path::new(DEBIAN_REMOVED_KEYS).is_file() {
        list.push(',');
        list.push_str(DEBIAN_REMOVED_KEYS);
    }
    Some(list)
}

/// One `deb` source, in one-line form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceLine {
    /// The archive URI.
    pub uri: String,
    /// The suite, e.g. `bookworm-updates`.
    pub suite: String,
    /// The components, e.g. `main`.
    pub components: Vec<String>,
    /// The keyring the archive is signed with.
    pub signed_by: Option<String>,
    /// `trusted=yes`: apt accepts the archive unsigned (a local mirror).
    pub trusted: bool,
}

impl SourceLine {
    /// The line as `sources.list` and mmdebstrap's mirror arguments take it.
    pub fn one_line(&self) -> String {
        let mut opts: Vec<String> = Vec::new();
        if let Some(k) = &self.signed_by {
            opts.push(format!("signed-by={k}"));
        }
        if self.trusted {
            opts.push("trusted=yes".into());
        }
        let opts = if opts.is_empty() {
            String::new()
        } else {
            format!(" [{}]", opts.join(" "))
        };
        format!(
            "deb{opts} {} {} {}",
            self.uri,
            self.suite,
            self.components.join(" ")
        )
    }
}

/// The environment variable naming a sources file (one-line `.list` or
/// deb822 `.sources`) to read instead of the host's `/etc/apt` sources:
/// a local mirror for CI, or a machine whose apt points elsewhere.
pub const SOURCES_ENV: &str = "TESTBED_APT_SOURCES";

/// The sources a spec resolves against: the `mirror` if set (its suite only,
/// so that a snapshot URL pins everything), otherwise every source of the
/// host (or of [`SOURCES_ENV`]) whose suite is `suite` or `suite-*`
/// (updates, security).
pub fn sources_for(vendor: &str, suite: &str, mirror: Option<&str>) -> Result<Vec<SourceLine>> {
    if let Some(mirror) = mirror {
        let signed_by = (vendor == "debian" && Path::new(DEBIAN_KEYRING).is_file())
            .then(|| DEBIAN_KEYRING.to_string());
        return Ok(vec![SourceLine {
            uri: mirror.trim_end_matches('/').to_string(),
            suite: suite.to_string(),
            components: vec!["main".into()],
            signed_by,
            trusted: false,
        }]);
    }
    let all = match std::env::var_os(SOURCES_ENV).filter(|v| !v.is_empty()) {
        Some(file) => sources_file(Path::new(&file))?,
        None => host_sources(Path::new("/etc/apt"))?,
    };
    let wanted = filter_suite(all, suite);
    if wanted.is_empty() {
        return Err(ImageError::NoSources {
            vendor: vendor.into(),
            suite: suite.into(),
        });
    }
    Ok(wanted)
}

/// Keeps the sources of `suite` and its `suite-*` companions, deduplicated,
/// in their original order.
fn filter_suite(all: Vec<SourceLine>, suite: &str) -> Vec<SourceLine> {
    let prefix = format!("{suite}-");
    let mut seen = BTreeSet::new();
    all.into_iter()
        .filter(|s| s.suite == suite || s.suite.starts_with(&prefix))
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// Reads one sources file: deb822 when it ends in `.sources`, one-line
/// otherwise.
pub fn sources_file(path: &Path) -> Result<Vec<SourceLine>> {
    let text = fs::read_to_string(path).at("cannot read the apt sources", path)?;
    Ok(if path.extension().is_some_and(|e| e == "sources") {
        parse_deb822(&text)
    } else {
        parse_one_line(&text)
    })
}

/// Reads the host's `deb` sources, one-line and deb822 forms alike.
pub fn host_sources(etc_apt: &Path) -> Result<Vec<SourceLine>> {
    let mut out = Vec::new();
    let main = etc_apt.join("sources.list");
    if main.is_file() {
        let text = fs::read_to_string(&main).at("cannot read", &main)?;
        out.extend(parse_one_line(&text));
    }
    let parts = etc_apt.join("sources.list.d");
    if parts.is_dir() {
        let mut names: Vec<PathBuf> = fs::read_dir(&parts)
            .at("cannot list", &parts)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for path in names {
            let text = match path.extension().and_then(|e| e.to_str()) {
                Some("list") | Some("sources") => {
                    fs::read_to_string(&path).at("cannot read", &path)?
                }
                _ => continue,
            };
            if path.extension().and_then(|e| e.to_str()) == Some("list") {
                out.extend(parse_one_line(&text));
            } else {
                out.extend(parse_deb822(&text));
            }
        }
    }
    Ok(out)
}

/// Parses one-line `sources.list` entries; `deb-src` and comments are
/// skipped.
pub(crate) fn parse_one_line(text: &str) -> Vec<SourceLine> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim();
        let mut signed_by = None;
        let mut trusted = false;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, after)) = opts.split_once(']') else {
                continue;
            };
            for opt in opts.split_whitespace() {
                if let Some(k) = opt.strip_prefix("signed-by=") {
                    signed_by = Some(k.to_string());
                }
                if opt == "trusted=yes" {
                    trusted = true;
                }
            }
            rest = after.trim();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(SourceLine {
            uri: uri.trim_end_matches('/').to_string(),
            suite: suite.to_string(),
            components: words.map(str::to_string).collect(),
            signed_by,
            trusted,
        });
    }
    out
}

/// Parses deb822 `.sources` stanzas; every URI × suite pair becomes a line.
pub(crate) fn parse_deb822(text: &str) -> Vec<SourceLine> {
    let mut out = Vec::new();
    for stanza in stanzas(text) {
        let get = |k: &str| {
            stanza
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let types = get("Types").unwrap_or("");
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        if get("Enabled").is_some_and(|v| v.trim() == "no") {
            continue;
        }
        let components: Vec<String> = get("Components")
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        // An inline key block cannot be passed on a one-line entry; apt then
        // falls back to its trusted keyrings.
        let signed_by = get("Signed-By")
            .map(str::trim)
            .filter(|k| k.starts_with('/') && !k.contains('\n'))
            .map(str::to_string);
        let trusted = get("Trusted").is_some_and(|v| v.trim() == "yes");
        for uri in get("URIs").unwrap_or("").split_whitespace() {
            for suite in get("Suites").unwrap_or("").split_whitespace() {
                out.push(SourceLine {
                    uri: uri.trim_end_matches('/').to_string(),
                    suite: suite.to_string(),
                    components: components.clone(),
                    signed_by: signed_by.clone(),
                    trusted,
                });
            }
        }
    }
    out
}

/// Splits deb822 text into stanzas of (field, value); continuation lines are
/// joined with newlines and comment lines dropped.
fn stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some((_, v)) = cur.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The host's native Debian architecture.
pub fn host_arch() -> Result<String> {
    let out = tools::run(
        Command::new("dpkg").arg("--print-architecture"),
        "dpkg --print-architecture",
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The host's apt network settings (proxies, date checks, retries) as
/// `apt.conf` lines, so that the private apt reaches the archive the same
/// way the host's does.
pub fn host_network_config() -> Result<Vec<String>> {
    let tool = tools::find(APT_GET)?;
    let apt_config = tool.with_file_name("apt-config");
    let out = tools::run(
        Command::new(apt_config)
            .arg("dump")
            .env_remove("APT_CONFIG"),
        "apt-config dump",
    )?;
    Ok(network_lines(&String::from_utf8_lossy(&out.stdout)))
}

fn network_lines(dump: &str) -> Vec<String> {
    const KEEP: &[&str] = &[
        "Acquire::http::",
        "Acquire::https::",
        "Acquire::ftp::",
        "Acquire::Check-Valid-Until ",
        "Acquire::Check-Date ",
        "Acquire::Retries ",
        "Acquire::ForceIPv4 ",
        "Acquire::ForceIPv6 ",
    ];
    dump.lines()
        .filter(|l| KEEP.iter().any(|k| l.starts_with(k)))
        .map(str::to_string)
        .collect()
}

/// A private apt tree: sources, lists, cache and an empty dpkg status.
#[derive(Debug)]
pub struct AptRoot {
    dir: PathBuf,
    config: PathBuf,
    sources: Vec<SourceLine>,
    arch: String,
}

impl AptRoot {
    /// Creates the tree under `dir` (which must be writable and private).
    pub fn create(
        dir: &Path,
        sources: &[SourceLine],
        arch: &str,
        network: &[String],
    ) -> Result<AptRoot> {
        for sub in [
            "etc/apt/apt.conf.d",
            "etc/apt/sources.list.d",
            "etc/apt/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
            "log",
        ] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).at("cannot create", &p)?;
        }
        let status = dir.join("status");
        fs::write(&status, b"").at("cannot write", &status)?;
        let list = dir.join("etc/apt/sources.list");
        let text: String = sources.iter().map(|s| s.one_line() + "\n").collect();
        fs::write(&list, text).at("cannot write", &list)?;
        let d = dir.display();
        let mut conf = format!(
            "Dir \"{d}/\";\n\
             Dir::Etc \"{d}/etc/apt/\";\n\
             Dir::Etc::Parts \"{d}/etc/apt/apt.conf.d/\";\n\
             Dir::State \"{d}/state/\";\n\
             Dir::State::status \"{d}/status\";\n\
             Dir::Cache \"{d}/cache/\";\n\
             Dir::Log \"{d}/log/\";\n\
             APT::Architecture \"{arch}\";\n\
             APT::Architectures {{ \"{arch}\"; }};\n\
             APT::Install-Recommends \"false\";\n\
             APT::Install-Suggests \"false\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::GzipIndexes \"false\";\n\
             Debug::NoLocking \"true\";\n"
        );
        if rustix::process::geteuid().is_root() {
            // apt drops to `_apt` for downloads, which cannot write into a
            // directory private to root.
            conf.push_str("APT::Sandbox::User \"root\";\n");
        }
        for line in network {
            conf.push_str(line);
            conf.push('\n');
        }
        let config = dir.join("apt.conf");
        fs::write(&config, conf).at("cannot write", &config)?;
        Ok(AptRoot {
            dir: dir.to_path_buf(),
            config,
            sources: sources.to_vec(),
            arch: arch.to_string(),
        })
    }

    /// The sources this tree resolves against.
    pub fn sources(&self) -> &[SourceLine] {
        &self.sources
    }

    /// The architecture this tree resolves for.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Where apt keeps the downloaded indices.
    pub fn lists_dir(&self) -> PathBuf {
        self.dir.join("state/lists")
    }

    fn apt_get(&self) -> Result<Command> {
        let mut cmd = Command::new(tools::find(APT_GET)?);
        cmd.env("APT_CONFIG", &self.config)
            .env("LC_ALL", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive");
        Ok(cmd)
    }

    /// Downloads the package indices.
    pub fn update(&self) -> Result<()> {
        let mut cmd = self.apt_get()?;
        cmd.args(["-q", "update", "-o", "APT::Update::Error-Mode=any"]);
        tools::run(&mut cmd, "apt-get update")?;
        Ok(())
    }

    /// Downloads exact package versions into `dir` (apt checks each file
    /// against the index it came from).
    pub fn download(&self, dir: &Path, packages: &[&crate::lock::LockedPackage]) -> Result<()> {
        let mut cmd = self.apt_get()?;
        cmd.current_dir(dir).args(["-q", "download"]);
        for p in packages {
            cmd.arg(format!("{}={}", p.name, p.version));
        }
        tools::run(
            &mut cmd,
            format!("apt-get download ({} packages)", packages.len()),
        )?;
        Ok(())
    }

    /// Reads the downloaded indices.
    pub fn index(&self) -> Result<PackageIndex> {
        PackageIndex::read(&self.lists_dir())
    }

    /// Asks apt which packages installing `names` on an empty system pulls
    /// in; returns apt's own explanation when it cannot.
    pub fn simulate_install(&self, names: &[String]) -> Result<Vec<Resolved>, String> {
        let mut cmd = self.apt_get().map_err(|e| e.to_string())?;
        cmd.args(["-q", "-s", "install", "--no-install-recommends"])
            .args(names);
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let mut msg: Vec<&str> = stdout
                .lines()
                .skip_while(|l| !l.contains("unmet dependencies") && !l.starts_with("E:"))
                .collect();
            let stderr = String::from_utf8_lossy(&out.stderr);
            msg.extend(stderr.lines());
            let msg: Vec<&str> = msg
                .into_iter()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            return Err(msg.join("; "));
        }
        Ok(parse_simulation(&stdout))
    }
}

/// One package apt would install.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Resolved {
    /// The package name.
    pub name: String,
    /// The exact version.
    pub version: String,
    /// Its architecture (`all` or the native one).
    pub arch: String,
}

/// Parses `Inst name (version release [arch])` lines of `apt-get -s`.
pub(crate) fn parse_simulation(stdout: &str) -> Vec<Resolved> {
    let mut out = Vec::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once(' ') else {
            continue;
        };
        let Some(paren) = rest.find('(') else {
            continue;
        };
        let inner = &rest[paren + 1..];
        let Some(version) = inner.split_whitespace().next() else {
            continue;
        };
        let arch = inner
            .find('[')
            .and_then(|i| inner[i + 1..].split_once(']').map(|(a, _)| a.to_string()))
            .unwrap_or_default();
        out.push(Resolved {
            name: name.to_string(),
            version: version.to_string(),
            arch,
        });
    }
    out.sort();
    out
}

/// What the archive index says about one package version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The exact version.
    pub version: String,
    /// Its architecture.
    pub arch: String,
    /// SHA-256 of the `.deb`.
    pub sha256: String,
    /// Whether it is `Essential: yes`.
    pub essential: bool,
}

/// The package names, versions and digests of the downloaded indices.
#[derive(Debug, Default)]
pub struct PackageIndex {
    packages: BTreeMap<String, Vec<IndexEntry>>,
    provided: BTreeSet<String>,
    /// The newest `Date:` of the suites' Release files, as a Unix time.
    pub release_date: Option<u64>,
}

impl PackageIndex {
    /// Reads every `*_Packages` and `*Release` file in `lists`.
    pub fn read(lists: &Path) -> Result<PackageIndex> {
        let mut index = PackageIndex::default();
        let mut files: Vec<PathBuf> = fs::read_dir(lists)
            .at("cannot list", lists)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for path in files {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with("_Packages") {
                let text = fs::read_to_string(&path).at("cannot read", &path)?;
                index.add_packages(&text);
            } else if name.ends_with("Release") {
                let text = fs::read_to_string(&path).at("cannot read", &path)?;
                if let Some(date) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Date:"))
                    .and_then(|d| parse_rfc2822(d.trim()))
                {
                    index.release_date = Some(index.release_date.map_or(date, |d| d.max(date)));
                }
            }
        }
        Ok(index)
    }

    /// Adds the stanzas of one `Packages` file.
    pub fn add_packages(&mut self, text: &str) {
        let mut name = None;
        let mut entry = IndexEntry {
            version: String::new(),
            arch: String::new(),
            sha256: String::new(),
            essential: false,
        };
        let mut flush = |name: &mut Option<String>, entry: &mut IndexEntry| {
            if let Some(n) = name.take() {
                let e = std::mem::replace(
                    entry,
                    IndexEntry {
                        version: String::new(),
                        arch: String::new(),
                        sha256: String::new(),
                        essential: false,
                    },
                );
                let list = self.packages.entry(n).or_default();
                if !list.contains(&e) {
                    list.push(e);
                }
            }
        };
        for line in text.lines() {
            if line.is_empty() {
                flush(&mut name, &mut entry);
            } else if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                entry.version = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("Architecture: ") {
                entry.arch = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("SHA256: ") {
                entry.sha256 = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("Essential: ") {
                entry.essential = v.trim() == "yes";
            } else if let Some(v) = line.strip_prefix("Provides: ") {
                for p in v.split(',') {
                    if let Some(p) = p.split_whitespace().next() {
                        self.provided.insert(p.to_string());
                    }
                }
            }
        }
        flush(&mut name, &mut entry);
    }

    /// Whether `name` is a package or a virtual package of the archive.
    pub fn knows(&self, name: &str) -> bool {
        self.packages.contains_key(name) || self.provided.contains(name)
    }

    /// The index entry of an exact package version.
    pub fn find(&self, name: &str, version: &str, arch: &str) -> Option<&IndexEntry> {
        self.packages
            .get(name)?
            .iter()
            .find(|e| e.version == version && e.arch == arch)
    }

    /// Names of all `Essential: yes` packages.
    pub fn essential(&self) -> Vec<String> {
        self.packages
            .iter()
            .filter(|(_, v)| v.iter().any(|e| e.essential))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The existing names closest to `name`, best first.
    pub fn suggest(&self, name: &str, max: usize) -> Vec<String> {
        let mut scored: Vec<(f64, &String)> = self
            .packages
            .keys()
            .chain(self.provided.iter())
            .map(|cand| {
                // Jaro-Winkler favours shared prefixes, which is how package
                // names are usually mistyped (`slurmd` vs `slurm-d`); a
                // substring match ranks high too (`nginx` → `nginx-full`).
                let mut score = strsim::jaro_winkler(name, cand);
                if cand.contains(name) || name.contains(cand.as_str()) {
                    score = score.max(0.9);
                }
                (score, cand)
            })
            .filter(|(s, _)| *s >= 0.8)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.len().cmp(&b.1.len())));
        let mut out: Vec<String> = Vec::new();
        for (_, cand) in scored {
            if !out.contains(cand) {
                out.push(cand.clone());
            }
            if out.len() == max {
                break;
            }
        }
        out
    }
}

/// Parses an RFC 2822 date as Release files write it, e.g.
/// `Sat, 10 May 2025 09:33:22 UTC`, into a Unix time.
pub(crate) fn parse_rfc2822(s: &str) -> Option<u64> {
    let s = s.split_once(',').map_or(s, |(_, rest)| rest).trim();
    let mut w = s.split_whitespace();
    let day: u64 = w.next()?.parse().ok()?;
    let month = match w.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = w.next()?.parse().ok()?;
    let mut hms = w.next()?.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    // Days from civil, Howard Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_source_formats_and_filters_the_suite() {
        let one = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://a/debian/ bookworm main contrib\ndeb-src http://a/debian bookworm main\n";
        let deb822 = "Types: deb\nURIs: http://a/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\nTypes: deb\nURIs: http://b/x\nSuites: nodistro\nComponents: main\n";
        let mut all = parse_one_line(one);
        all.extend(parse_deb822(deb822));
        let kept = filter_suite(all, "bookworm");
        let lines: Vec<String> = kept.iter().map(SourceLine::one_line).collect();
        assert_eq!(
            lines,
            [
                "deb [signed-by=/k.gpg] http://a/debian bookworm main contrib",
                "deb [signed-by=/k.gpg] http://a/debian bookworm main",
                "deb [signed-by=/k.gpg] http://a/debian bookworm-updates main",
            ]
        );
    }

    #[test]
    fn parses_apt_simulation_output() {
        let out = "NOTE: This is only a simulation!\nInst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []\nInst base-files (12.4+deb12u1 Debian:12.15/oldstable [amd64])\nConf libc6 (2.36-9 Debian [amd64])\n";
        let got = parse_simulation(out);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, "base-files");
        assert_eq!(got[1].version, "2.36-9+deb12u14");
        assert_eq!(got[1].arch, "amd64");
    }

    #[test]
    fn index_finds_versions_and_suggests_names() {
        let mut idx = PackageIndex::default();
        idx.add_packages("Package: slurmd\nVersion: 22.05\nArchitecture: amd64\nSHA256: aa\n\nPackage: slurm-client\nVersion: 22.05\nArchitecture: amd64\nSHA256: bb\nProvides: slurm-client-any\n\nPackage: dash\nEssential: yes\nVersion: 0.5\nArchitecture: amd64\nSHA256: cc\n");
        assert_eq!(
            idx.find("slurmd", "22.05", "amd64")
                .map(|e| e.sha256.as_str()),
            Some("aa")
        );
        assert!(idx.knows("slurm-client-any"));
        assert_eq!(idx.essential(), ["dash"]);
        assert_eq!(idx.suggest("slurmdd", 3)[0], "slurmd");
    }

    #[test]
    fn parses_release_dates() {
        assert_eq!(
            parse_rfc2822("Sat, 10 May 2025 09:33:22 UTC"),
            Some(1_746_869_602)
        );
        assert_eq!(parse_rfc2822("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
    }

    #[test]
    fn keeps_only_network_settings() {
        let dump = "Acquire::Check-Valid-Until \"false\";\nAcquire::http::Proxy \"http://p:3128\";\nDPkg::Post-Invoke:: \"rm -f x\";\nAcquire::GzipIndexes \"true\";\n";
        assert_eq!(
            network_lines(dump),
            [
                "Acquire::Check-Valid-Until \"false\";",
                "Acquire::http::Proxy \"http://p:3128\";"
            ]
        );
    }
}
