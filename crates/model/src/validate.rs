//! Stage two of parsing: from [`RawComposition`] to [`Composition`].
//!
//! Every check reports into a [`Sink`] instead of returning at the first
//! problem, so that one `testbed check` shows every mistake in the file.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use toml::Spanned;

use crate::composition::*;
use crate::confine::{self, ConfineError, Confinement};
use crate::diag::{Diagnostic, Diagnostics, Sink, SourceFile};
use crate::net::Subnet;
use crate::raw::*;
use crate::template;
use crate::units::{self, Invalid};

/// The longest role name: node names add up to four digits and must stay
/// valid host name labels (63).
const MAX_ROLE_NAME: usize = 40;
/// Network names become interface-ish identifiers; keep them short.
const MAX_NETWORK_NAME: usize = 15;
/// The most networks a composition may declare (MACs carry the index in a byte).
const MAX_NETWORKS: usize = 64;
/// Host names are labels of the user's choosing; keep them host-name-like.
const MAX_HOST_NAME: usize = 63;
/// The most nodes one role may have.
pub(crate) const MAX_COUNT: i64 = 4096;

struct Ctx<'a> {
    src: &'a SourceFile,
    dir: &'a Path,
    /// Where `source` and `template` files may come from; set once
    /// `[cluster]` is read.
    confine: Confinement,
    sink: Sink,
}

impl Ctx<'_> {
    fn err(&mut self, span: Range<usize>, message: impl Into<String>, help: Option<String>) {
        let mut d = Diagnostic::at(self.src, span, message);
        d.help = help;
        self.sink.push(d);
    }

    fn invalid(&mut self, span: Range<usize>, e: Invalid) {
        self.err(span, e.message, Some(e.help));
    }

    /// Parses a spanned string, reporting a failure at the value.
    fn parse<T>(
        &mut self,
        v: &Spanned<String>,
        f: impl FnOnce(&str) -> Result<T, Invalid>,
    ) -> Option<T> {
        match f(v.get_ref()) {
            Ok(value) => Some(value),
            Err(e) => {
                self.invalid(v.span(), e);
                None
            }
        }
    }

    /// Runs a check on a spanned string, reporting its failure at the value.
    fn check(&mut self, v: &Spanned<String>, f: impl FnOnce(&str) -> Result<(), Invalid>) -> bool {
        match f(v.get_ref()) {
            Ok(()) => true,
            Err(e) => {
                self.invalid(v.span(), e);
                false
            }
        }
    }
}

/// Parses and validates a composition's text. `dir` is the folder relative
/// paths are resolved against; `default_name` is the cluster name used when
/// `[cluster] name` is absent (normally the folder name).
pub fn parse(
    src: Arc<SourceFile>,
    dir: &Path,
    default_name: Option<&str>,
) -> Result<Composition, Diagnostics> {
    let raw: RawComposition = match toml::from_str(&src.text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim_end_matches('\n').to_string();
            let help = if message.starts_with("unknown field") {
                Some("see docs/composition.md or `testbed schema` for the valid keys".to_string())
            } else {
                None
            };
            let mut d = Diagnostic::at(&src, span, message);
            d.help = help;
            return Err(d.into());
        }
    };
    // A folder that cannot be resolved stays as given: canonical paths do
    // not start with it, so no file is allowed (the check fails closed).
    let root = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut cx = Ctx {
        src: &src,
        dir,
        confine: Confinement::from_canonical(root, Vec::new()),
        sink: Sink::default(),
    };
    let cluster = cluster(&mut cx, raw.cluster.as_ref(), default_name);
    let networks = networks(&mut cx, raw.networks.as_ref());
    let network_names: Vec<String> = networks.iter().map(|n| n.name.clone()).collect();
    let hosts = hosts(&mut cx, raw.hosts.as_ref());
    let host_names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();

    let defaults = raw.defaults.as_ref().map(|d| d.get_ref());
    if let Some(d) = defaults {
        for diag in check_defaults(cx.src, cx.dir, &cx.confine, d) {
            cx.sink.push(diag);
        }
        // Checked once here; roles inherit it quietly.
        if let Some(h) = &d.host {
            host_ref(&mut cx, h, &host_names, "[defaults]");
        }
    }
    if raw.roles.is_empty() {
        let span = raw.defaults.as_ref().map_or(0..0, |d| d.span());
        cx.err(
            span,
            "the composition has no roles",
            Some("add at least one role, e.g. [roles.node] with count = 2".to_string()),
        );
    }
    let mut roles = Vec::new();
    for (name, role) in &raw.roles {
        let names = Names {
            networks: &network_names,
            hosts: &host_names,
        };
        if let Some(r) = self::role(&mut cx, name, role.get_ref(), defaults, &names) {
            roles.push(r);
        }
    }
    let role_names: Vec<String> = raw.roles.keys().map(|k| k.get_ref().clone()).collect();
    let secrets = secrets(&mut cx, &raw.secrets, &role_names);
    let test = raw.test.as_ref().map(|t| test(&mut cx, t.get_ref()));
    let sink = cx.sink;
    sink.finish(Composition {
        source: src.clone(),
        dir: dir.to_path_buf(),
        confinement: cx.confine,
        cluster,
        roles,
        secrets,
        networks,
        hosts,
        test,
    })
}

/// `[[hosts]]`: names (given or `hostN`) checked and unique, URIs with a scheme.
fn hosts(cx: &mut Ctx<'_>, raw: Option<&Spanned<Vec<RawHost>>>) -> Vec<Host> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    let mut out: Vec<Host> = Vec::new();
    for (i, h) in raw.get_ref().iter().enumerate() {
        let position = i + 1;
        let name = match &h.name {
            Some(n) => {
                cx.check(n, |s| units::check_name(s, "host", MAX_HOST_NAME));
                n.get_ref().clone()
            }
            None => format!("host{position}"),
        };
        if let Some(first) = out.iter().position(|o| o.name == name) {
            // A default name has no text of its own: point at the entry's uri.
            let (span, how) = match &h.name {
                Some(n) => (n.span(), String::new()),
                None => (
                    h.uri.span(),
                    format!(" (host {position} has no name, so it is called \"{name}\")"),
                ),
            };
            cx.err(
                span,
                format!("duplicate host name \"{name}\"{how}"),
                Some(format!(
                    "host {} is already called \"{name}\"; give every host its own name",
                    first + 1
                )),
            );
        }
        let uri = h.uri.get_ref();
        if uri.trim().is_empty() {
            cx.err(
                h.uri.span(),
                format!("host \"{name}\" has an empty uri"),
                Some("give its libvirt URI, e.g. \"qemu:///system\" or \"qemu+ssh://root@node7/system\"".to_string()),
            );
        } else if uri
            .split_once(':')
            .is_none_or(|(scheme, _)| scheme.is_empty())
        {
            cx.err(
                h.uri.span(),
                format!("bad libvirt URI \"{uri}\" of host \"{name}\""),
                Some("a libvirt URI starts with a scheme, e.g. \"qemu:///system\" or \"qemu+ssh://root@node7/system\"".to_string()),
            );
        } else if let Some(why) = unsafe_uri(uri) {
            cx.err(
                h.uri.span(),
                format!("libvirt URI \"{uri}\" of host \"{name}\" {why}"),
                Some("a composition may not choose what runs on your machine (it may come from someone else's repository): give such a URI yourself with --host or --connect".to_string()),
            );
        }
        out.push(Host {
            name,
            uri: uri.clone(),
        });
    }
    out
}

/// Why a libvirt URI given in a composition is refused, if it is: the `ext`
/// transport and the `command` parameter run a program on this machine.
/// (The other parameters, keys and host verification included, act on a
/// connection to a host the composition names anyway.)
fn unsafe_uri(uri: &str) -> Option<String> {
    let scheme = uri.split_once(':').map_or(uri, |(s, _)| s);
    if scheme
        .split_once('+')
        .is_some_and(|(_, transport)| transport.eq_ignore_ascii_case("ext"))
    {
        return Some("uses the ext transport, which runs a program of its choosing".to_owned());
    }
    let query = uri.split_once('?').map_or("", |(_, q)| q);
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let key = param.split_once('=').map_or(param, |(k, _)| k);
        if key.eq_ignore_ascii_case("command") {
            return Some(format!(
                "sets \"{key}\", the program to run on this machine, which a composition may not"
            ));
        }
    }
    None
}

/// Checks that a role's (or `[defaults]`'s) `host` names a `[[hosts]]` entry.
fn host_ref(cx: &mut Ctx<'_>, v: &Spanned<String>, host_names: &[String], owner: &str) -> bool {
    let name = v.get_ref();
    if host_names.contains(name) {
        return true;
    }
    if host_names.is_empty() {
        cx.err(
            v.span(),
            format!("{owner} is pinned to host \"{name}\" but the composition has no [[hosts]]"),
            Some(format!(
                "`host` needs [[hosts]]: add one with name = \"{name}\" and its libvirt uri, e.g. uri = \"qemu:///system\""
            )),
        );
    } else {
        cx.err(
            v.span(),
            format!("unknown host \"{name}\" in {owner}"),
            Some(format!("defined hosts: {}", host_names.join(", "))),
        );
    }
    false
}

fn cluster(
    cx: &mut Ctx<'_>,
    raw: Option<&Spanned<RawCluster>>,
    default_name: Option<&str>,
) -> Cluster {
    let raw = raw.map(|c| c.get_ref());
    let name = match raw.and_then(|c| c.name.as_ref()) {
        Some(n) => {
            cx.check(n, |s| units::check_name(s, "cluster", 31));
            n.get_ref().clone()
        }
        None => match default_name.and_then(name_from_folder) {
            Some(d) => d,
            None => {
                let shown = default_name.unwrap_or("");
                cx.sink.push(
                    Diagnostic::new(format!(
                        "no cluster name: the folder name \"{shown}\" has no letters to make one from"
                    ))
                    .help("set name = \"...\" under [cluster]: a lowercase letter, then lowercase letters, digits or '-', at most 31 characters"),
                );
                String::from("invalid")
            }
        },
    };
    let distro = match raw.and_then(|c| c.distro.as_ref()) {
        Some(d) if SUPPORTED_DISTROS.contains(&d.get_ref().as_str()) => d.get_ref().clone(),
        Some(d) => {
            cx.err(
                d.span(),
                format!("unsupported distro \"{}\"", d.get_ref()),
                Some(format!("supported: {}", SUPPORTED_DISTROS.join(", "))),
            );
            SUPPORTED_DISTROS[0].to_string()
        }
        None => SUPPORTED_DISTROS[0].to_string(),
    };
    let (vendor, suite) = distro.split_once('/').unwrap_or(("debian", "bookworm"));
    let kernel = match raw.and_then(|c| c.kernel.as_ref()) {
        Some(k) => {
            cx.check(k, units::check_package);
            k.get_ref().clone()
        }
        None => DEFAULT_KERNEL.to_string(),
    };
    let mirror = raw.and_then(|c| c.mirror.as_ref()).map(|m| {
        let ok = ["http://", "https://", "file://"]
            .iter()
            .any(|p| m.get_ref().starts_with(p));
        if !ok {
            cx.err(
                m.span(),
                format!("bad mirror \"{}\"", m.get_ref()),
                Some("use an http://, https:// or file:// URL of a Debian archive".to_string()),
            );
        }
        m.get_ref().clone()
    });
    let snapshot = raw
        .and_then(|c| c.snapshot.as_ref())
        .map(|s| match parse_snapshot(s.get_ref()) {
            Some(v) => v,
            None => {
                cx.err(
                    s.span(),
                    format!("bad snapshot \"{}\"", s.get_ref()),
                    Some(
                        "use \"off\" or an http://, https:// or file:// URL of a Debian snapshot archive, e.g. \"http://127.0.0.1:8080\""
                            .to_string(),
                    ),
                );
                // Stands in for the invalid value so validation can go on;
                // the composition is rejected anyway.
                Snapshot::Off
            }
        });
    if let Some(list) = raw.and_then(|c| c.allow_paths_outside.as_ref()) {
        allow_paths_outside(cx, list);
    }
    let cache = image_cache(cx, raw);
    Cluster {
        name,
        distro: Distro {
            vendor: vendor.to_string(),
            suite: suite.to_string(),
        },
        kernel,
        mirror,
        snapshot,
        cache,
    }
}

/// `[cluster] cache` and `cache_push`: a repository with the syntax the
/// cache client accepts; `cache_push` means nothing without it.
fn image_cache(cx: &mut Ctx<'_>, raw: Option<&RawCluster>) -> Option<ImageCache> {
    let push = raw.and_then(|c| c.cache_push.as_ref());
    let Some(repository) = raw.and_then(|c| c.cache.as_ref()) else {
        if let Some(push) = push {
            cx.err(
                push.span(),
                format!("cache_push = {} without a cache", push.get_ref()),
                Some(
                    "name the repository to push to with cache = \"HOST[:PORT]/PATH\" under [cluster], or remove cache_push"
                        .to_string(),
                ),
            );
        }
        return None;
    };
    cx.check(repository, units::check_repository)
        .then(|| ImageCache {
            repository: repository.get_ref().clone(),
            push: push.is_some_and(|p| *p.get_ref()),
        })
}

/// `[cluster] allow_paths_outside`: every entry must exist; each widens
/// the confinement of `source` and `template` files to what it resolves to.
fn allow_paths_outside(cx: &mut Ctx<'_>, list: &Spanned<Vec<Spanned<String>>>) {
    let root = cx.confine.root().to_path_buf();
    let mut allowed: Vec<PathBuf> = Vec::new();
    for entry in list.get_ref() {
        let written = entry.get_ref();
        if written.is_empty() {
            cx.err(
                entry.span(),
                "empty path in allow_paths_outside",
                Some("list folders (or files) outside the composition's folder, e.g. \"/opt/shared-certs\"".to_string()),
            );
            continue;
        }
        let joined = root.join(written);
        match std::fs::canonicalize(&joined) {
            Ok(real) if real.parent().is_none() => cx.err(
                entry.span(),
                format!("allow_paths_outside lists \"{written}\", the whole file system"),
                Some("list only the folders your sources and templates come from, e.g. \"/opt/shared-certs\"".to_string()),
            ),
            Ok(real) => {
                if !allowed.contains(&real) {
                    allowed.push(real);
                }
            }
            Err(e) => cx.err(
                entry.span(),
                format!("allowed path \"{written}\" not found"),
                Some(format!(
                    "allow_paths_outside lists existing folders or files (absolute, or relative to the composition's folder); looked at {} ({})",
                    joined.display(),
                    io_reason(&e)
                )),
            ),
        }
    }
    cx.confine = Confinement::from_canonical(root, allowed);
}

/// Parses `[cluster] snapshot`: `"off"`, or a URL with one of the schemes the
/// image builder can fetch from and something after the scheme. One trailing
/// `/` is dropped, because the builder appends `/archive/...` itself.
fn parse_snapshot(text: &str) -> Option<Snapshot> {
    if text == "off" {
        return Some(Snapshot::Off);
    }
    let url = text.strip_suffix('/').unwrap_or(text);
    let rest = ["http://", "https://", "file://"]
        .iter()
        .find_map(|p| url.strip_prefix(p))?;
    (!rest.is_empty()).then(|| Snapshot::Url(url.to_string()))
}

/// The span of a top-level table header or key, for problems with a whole
/// table (toml gives no span for a table that is not wrapped in `Spanned`).
fn table_span(text: &str, key: &str) -> Range<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let lead = line.len() - t.len();
        let header = format!("[{key}]");
        if t.starts_with(&header)
            || (t.starts_with(key) && t[key.len()..].trim_start().starts_with('='))
        {
            let start = offset + lead;
            let len = if t.starts_with(&header) {
                header.len()
            } else {
                key.len()
            };
            return start..start + len;
        }
        offset += line.len();
    }
    0..0
}

/// The default cluster name from a folder name, the way Compose derives a
/// project name: lowercased, other characters turned into '-', leading
/// digits and dashes dropped, cut to 31 characters.
pub fn name_from_folder(folder: &str) -> Option<String> {
    let mut out = String::new();
    for c in folder.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        if out.is_empty() && c.is_ascii_digit() {
            continue;
        }
        out.push(c);
    }
    out.truncate(31);
    let out = out.trim_end_matches('-').to_string();
    units::check_name(&out, "cluster", 31).ok().map(|()| out)
}

fn networks(cx: &mut Ctx<'_>, raw: Option<&SpannedMap<RawNetwork>>) -> Vec<Network> {
    let Some(raw) = raw else {
        return vec![Network {
            name: "lan".to_string(),
            subnet: None,
            name_span: None,
            subnet_span: None,
        }];
    };
    if raw.is_empty() {
        cx.err(
            table_span(&cx.src.text, "networks"),
            "the [networks] table is empty",
            Some("declare a network, e.g. [networks.lan], or remove the table to get one network \"lan\"".to_string()),
        );
    }
    if raw.len() > MAX_NETWORKS {
        cx.err(
            table_span(&cx.src.text, "networks"),
            format!("too many networks ({})", raw.len()),
            Some(format!("use at most {MAX_NETWORKS}")),
        );
    }
    let mut out: Vec<Network> = Vec::new();
    for (name, net) in raw {
        cx.check(name, |s| units::check_name(s, "network", MAX_NETWORK_NAME));
        let subnet_raw = net.get_ref().subnet.as_ref();
        let subnet = subnet_raw.and_then(|s| match s.get_ref().parse::<Subnet>() {
            Ok(subnet) => Some(subnet),
            Err(e) => {
                cx.invalid(s.span(), e);
                None
            }
        });
        if let (Some(subnet), Some(s)) = (subnet, subnet_raw) {
            if let Some(other) = out
                .iter()
                .find(|o| o.subnet.is_some_and(|os| os.overlaps(&subnet)))
            {
                let (other_name, other_subnet) =
                    (other.name.clone(), other.subnet.map(|s| s.to_string()));
                cx.err(
                    s.span(),
                    format!(
                        "subnet {subnet} of network \"{}\" overlaps subnet {} of network \"{other_name}\"",
                        name.get_ref(),
                        other_subnet.unwrap_or_default()
                    ),
                    Some("give every network its own, non-overlapping subnet".to_string()),
                );
            }
        }
        out.push(Network {
            name: name.get_ref().clone(),
            subnet,
            name_span: Some(name.span()),
            subnet_span: subnet_raw.map(|s| s.span()),
        });
    }
    out
}

/// A list of strings, each checked, duplicates reported.
fn string_list(
    cx: &mut Ctx<'_>,
    list: &Spanned<Vec<Spanned<String>>>,
    what: &str,
    check: impl Fn(&str) -> Result<(), Invalid>,
) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for item in list.get_ref() {
        if !cx.check(item, &check) {
            continue;
        }
        if !seen.insert(item.get_ref().clone()) {
            cx.err(
                item.span(),
                format!("{what} \"{}\" is listed twice", item.get_ref()),
                Some("remove the duplicate".to_string()),
            );
            continue;
        }
        out.push(item.get_ref().clone());
    }
    out
}

/// A role's list merged after `[defaults]`'s (see [`merge_unique`]). Only
/// the role's items are checked: lists from `[defaults]` are checked once,
/// by `check_defaults`; checking them again for every role would repeat the
/// same message.
fn merged_list(
    cx: &mut Ctx<'_>,
    defaults: Option<&Spanned<Vec<Spanned<String>>>>,
    role: Option<&Spanned<Vec<Spanned<String>>>>,
    what: &str,
    check: impl Fn(&str) -> Result<(), Invalid>,
) -> Vec<String> {
    merge_unique(
        defaults.map(quiet_list).unwrap_or_default(),
        role.map(|l| string_list(cx, l, what, check))
            .unwrap_or_default(),
    )
}

fn merge_unique(defaults: Vec<String>, role: Vec<String>) -> Vec<String> {
    let mut out = defaults;
    for item in role {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn positive(
    cx: &mut Ctx<'_>,
    v: &Spanned<i64>,
    what: &str,
    min: i64,
    max: i64,
    help: &str,
) -> Option<u32> {
    let n = *v.get_ref();
    if n < min || n > max {
        cx.err(
            v.span(),
            format!("{what} = {n} is out of range"),
            Some(help.to_string()),
        );
        return None;
    }
    u32::try_from(n).ok()
}

/// The names a role may refer to.
struct Names<'a> {
    networks: &'a [String],
    hosts: &'a [String],
}

fn role(
    cx: &mut Ctx<'_>,
    name: &Spanned<String>,
    raw: &RawRole,
    defaults: Option<&RawRole>,
    names: &Names<'_>,
) -> Option<Role> {
    let network_names = names.networks;
    let role_name = name.get_ref().clone();
    let name_ok = cx.check(name, |s| units::check_name(s, "role", MAX_ROLE_NAME));

    // A key set in the role wins over the same key in [defaults].
    let count_raw = raw
        .count
        .as_ref()
        .or(defaults.and_then(|d| d.count.as_ref()));
    let count = match count_raw {
        Some(c) if *c.get_ref() == 0 => {
            cx.err(
                c.span(),
                format!("role \"{role_name}\" has count = 0"),
                Some("a role has at least one node; remove the role to have none".to_string()),
            );
            None
        }
        Some(c) => positive(
            cx,
            c,
            "count",
            1,
            MAX_COUNT,
            &format!("a role has between 1 and {MAX_COUNT} nodes"),
        ),
        None => Some(1),
    };
    let memory = match raw
        .memory
        .as_ref()
        .or(defaults.and_then(|d| d.memory.as_ref()))
    {
        Some(m) => cx.parse(m, units::parse_memory),
        None => Some(DEFAULT_MEMORY_MIB),
    };
    let cpus = match raw.cpus.as_ref().or(defaults.and_then(|d| d.cpus.as_ref())) {
        Some(c) => positive(cx, c, "cpus", 1, 256, "use between 1 and 256 virtual CPUs"),
        None => Some(1),
    };

    let packages = merged_list(
        cx,
        defaults.and_then(|d| d.packages.as_ref()),
        raw.packages.as_ref(),
        "package",
        units::check_package,
    );
    let debconf = merged_list(
        cx,
        defaults.and_then(|d| d.debconf.as_ref()),
        raw.debconf.as_ref(),
        "debconf answer",
        units::check_debconf,
    );
    let services = merged_list(
        cx,
        defaults.and_then(|d| d.services.as_ref()),
        raw.services.as_ref(),
        "service",
        units::check_unit,
    );

    let networks = match raw
        .networks
        .as_ref()
        .or(defaults.and_then(|d| d.networks.as_ref()))
    {
        None => network_names.to_vec(),
        Some(list) => {
            let mut chosen = BTreeSet::new();
            for n in list.get_ref() {
                if network_names.contains(n.get_ref()) {
                    if !chosen.insert(n.get_ref().clone()) {
                        cx.err(
                            n.span(),
                            format!(
                                "network \"{}\" is listed twice for role \"{role_name}\"",
                                n.get_ref()
                            ),
                            Some("remove the duplicate".to_string()),
                        );
                    }
                } else {
                    cx.err(
                        n.span(),
                        format!(
                            "unknown network \"{}\" in role \"{role_name}\"",
                            n.get_ref()
                        ),
                        Some(format!("defined networks: {}", network_names.join(", "))),
                    );
                }
            }
            if list.get_ref().is_empty() {
                cx.err(
                    list.span(),
                    format!("role \"{role_name}\" is attached to no network"),
                    Some(format!(
                        "list at least one of: {}",
                        network_names.join(", ")
                    )),
                );
            }
            // Keep the composition's network order, whatever order the role lists them in.
            network_names
                .iter()
                .filter(|n| chosen.contains(*n))
                .cloned()
                .collect()
        }
    };

    let mut files: IndexMap<String, FileSpec> = IndexMap::new();
    if let Some(d) = defaults {
        for (path, f) in &d.files {
            if let Some(spec) = file(cx, path, f.get_ref(), false) {
                files.insert(spec.path.clone(), spec);
            }
        }
    }
    for (path, f) in &raw.files {
        if let Some(spec) = file(cx, path, f.get_ref(), true) {
            files.insert(spec.path.clone(), spec);
        }
    }

    // A role's own `host` is checked here; one from [defaults] was checked once.
    let host = match (&raw.host, defaults.and_then(|d| d.host.as_ref())) {
        (Some(h), _) => {
            host_ref(cx, h, names.hosts, &format!("role \"{role_name}\""));
            Some(h.get_ref().clone())
        }
        (None, Some(h)) => Some(h.get_ref().clone()),
        (None, None) => None,
    };

    Some(Role {
        name: role_name,
        count: count?,
        memory_mib: memory?,
        cpus: cpus?,
        packages,
        debconf,
        services,
        networks,
        files: files.into_values().collect(),
        host,
        name_span: name.span(),
        count_span: count_raw.map(|c| c.span()),
    })
    .filter(|_| name_ok)
}

/// The values of a list without reporting problems (used for `[defaults]`,
/// which `check_defaults` reports once).
fn quiet_list(list: &Spanned<Vec<Spanned<String>>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in list.get_ref() {
        if !out.contains(item.get_ref()) {
            out.push(item.get_ref().clone());
        }
    }
    out
}

fn file(cx: &mut Ctx<'_>, path: &Spanned<String>, raw: &RawFile, report: bool) -> Option<FileSpec> {
    // Files from [defaults] are validated once, in `check_defaults`; here they
    // are only converted, quietly, for each role.
    let mut quiet = Ctx {
        src: cx.src,
        dir: cx.dir,
        confine: cx.confine.clone(),
        sink: Sink::default(),
    };
    let cx: &mut Ctx<'_> = if report { cx } else { &mut quiet };
    let path_ok = cx.check(path, units::check_guest_path);
    let given: Vec<(&str, &Spanned<String>)> = [
        ("content", &raw.content),
        ("source", &raw.source),
        ("template", &raw.template),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    let kind = match given.as_slice() {
        [] => {
            cx.err(
                path.span(),
                format!("file \"{}\" has none of content, source or template", path.get_ref()),
                Some("give exactly one of content = \"...\", source = \"path\" or template = \"path.j2\"".to_string()),
            );
            None
        }
        [(k, v)] => file_kind(cx, k, v),
        [(first, _), (second, v), ..] => {
            cx.err(
                v.span(),
                format!("file \"{}\" has both {first} and {second}", path.get_ref()),
                Some("give exactly one of content, source or template".to_string()),
            );
            None
        }
    };
    let mode = match &raw.mode {
        Some(m) => cx.parse(m, units::parse_mode),
        None => Some(0o644),
    };
    let owner = match &raw.owner {
        Some(o) => cx.check(o, units::check_owner).then(|| o.get_ref().clone()),
        None => Some("root:root".to_string()),
    };
    if !path_ok {
        return None;
    }
    Some(FileSpec {
        path: path.get_ref().clone(),
        kind: kind?,
        mode: mode?,
        owner: owner?,
    })
}

fn file_kind(cx: &mut Ctx<'_>, key: &str, v: &Spanned<String>) -> Option<FileKind> {
    if key == "content" {
        return Some(FileKind::Content(v.get_ref().clone()));
    }
    let rel = Path::new(v.get_ref());
    if rel.as_os_str().is_empty() {
        cx.err(v.span(), format!("empty {key} path"), None);
        return None;
    }
    let resolved: PathBuf = cx.dir.join(rel);
    let real = match cx.confine.resolve(&resolved) {
        Ok(real) => real,
        Err(ConfineError::Outside { resolved: real, .. }) => {
            let (message, help) = if rel.is_absolute() {
                absolute(&cx.confine, key, v.get_ref(), &real)
            } else {
                outside(&cx.confine, key, v.get_ref(), &real)
            };
            cx.err(v.span(), message, Some(help));
            return None;
        }
        Err(ConfineError::Io { source: e, .. }) => {
            cx.err(
                v.span(),
                format!("{key} file \"{}\" not found", v.get_ref()),
                Some(format!(
                    "paths are relative to the composition's folder; looked at {} ({})",
                    resolved.display(),
                    io_reason(&e)
                )),
            );
            return None;
        }
        Err(ConfineError::NotAFile { .. }) => resolved.clone(),
    };
    if rel.is_absolute() && !cx.confine.is_allowed_outside(&real) {
        let (message, help) = absolute(&cx.confine, key, v.get_ref(), &real);
        cx.err(v.span(), message, Some(help));
        return None;
    }
    if !std::fs::metadata(&real).is_ok_and(|m| m.is_file()) {
        cx.err(
            v.span(),
            format!("{key} \"{}\" is not a regular file", v.get_ref()),
            Some(format!("looked at {}", resolved.display())),
        );
        return None;
    }
    if key == "template" {
        match template::check_syntax(&cx.confine, &resolved) {
            Ok(()) => {}
            Err(d) => {
                cx.sink.push(d);
                return None;
            }
        }
        return Some(FileKind::Template(resolved));
    }
    Some(FileKind::Source(resolved))
}

/// What to say about a `source` or `template` that resolves to `real`,
/// outside the composition's folder and every allowed path.
fn outside(confine: &Confinement, key: &str, written: &str, real: &Path) -> (String, String) {
    let root = confine.root();
    let through_link = confine::lexical(&root.join(written)).starts_with(root);
    let how = if through_link {
        " through a symbolic link"
    } else {
        ""
    };
    let message = format!(
        "{key} \"{written}\" is outside the composition's folder: it resolves to {}{how}",
        real.display()
    );
    (message, way_out(confine, key, real))
}

/// What to say about an absolute `source` or `template` path that is not
/// under an allowed path.
fn absolute(confine: &Confinement, key: &str, written: &str, real: &Path) -> (String, String) {
    match real.strip_prefix(confine.root()) {
        Ok(inside) => (
            format!("{key} \"{written}\" is an absolute path"),
            format!(
                "it is in the composition's folder: write it relative to it, \"{}\"",
                inside.display()
            ),
        ),
        Err(_) => (
            format!("{key} \"{written}\" is an absolute path outside the composition's folder"),
            way_out(confine, key, real),
        ),
    }
}

/// The rule and the way out, for a file outside the composition's folder.
fn way_out(confine: &Confinement, key: &str, real: &Path) -> String {
    let folder = real.parent().unwrap_or(real);
    format!(
        "{key} files are read only from the composition's folder ({}), symbolic links resolved, so that a composition cannot copy other files of the host; copy the file into the folder or, if you trust it, allow its folder under [cluster] with allow_paths_outside = [\"{}\"]",
        confine.root().display(),
        folder.display()
    )
}

pub(crate) fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}

fn secrets(cx: &mut Ctx<'_>, raw: &SpannedMap<RawSecret>, role_names: &[String]) -> Vec<Secret> {
    let mut out = Vec::new();
    let mut paths: HashMap<String, String> = HashMap::new();
    for (name, s) in raw {
        let secret_name = name.get_ref().clone();
        let name_ok = cx.check(name, |n| units::check_name(n, "secret", 63));
        let s = s.get_ref();
        let file = match &s.file {
            None => {
                cx.err(
                    name.span(),
                    format!("secret \"{secret_name}\" has no file"),
                    Some(
                        "set file = \"/abs/path\" where the secret is written in the guests"
                            .to_string(),
                    ),
                );
                None
            }
            Some(f) => {
                if cx.check(f, units::check_guest_path) {
                    if let Some(other) = paths.insert(f.get_ref().clone(), secret_name.clone()) {
                        cx.err(
                            f.span(),
                            format!("secret \"{secret_name}\" writes the same file as secret \"{other}\""),
                            Some("give every secret its own file".to_string()),
                        );
                    }
                    Some(f.get_ref().clone())
                } else {
                    None
                }
            }
        };
        let bytes = match &s.bytes {
            Some(b) => positive(cx, b, "bytes", 1, 65536, "use between 1 and 65536 bytes"),
            None => Some(32),
        };
        let owner = match &s.owner {
            Some(o) => cx.check(o, units::check_owner).then(|| o.get_ref().clone()),
            None => Some("root:root".to_string()),
        };
        let mode = match &s.mode {
            Some(m) => cx.parse(m, units::parse_mode),
            None => Some(0o400),
        };
        let roles = match &s.roles {
            None => Some(role_names.to_vec()),
            Some(list) => {
                let mut ok = true;
                for r in list.get_ref() {
                    if !role_names.contains(r.get_ref()) {
                        ok = false;
                        cx.err(
                            r.span(),
                            format!(
                                "unknown role \"{}\" in secret \"{secret_name}\"",
                                r.get_ref()
                            ),
                            Some(format!("defined roles: {}", role_names.join(", "))),
                        );
                    }
                }
                ok.then(|| quiet_list(list))
            }
        };
        if let (true, Some(file), Some(bytes), Some(owner), Some(mode), Some(roles)) =
            (name_ok, file, bytes, owner, mode, roles)
        {
            out.push(Secret {
                name: secret_name,
                file,
                bytes,
                owner,
                mode,
                roles,
            });
        }
    }
    out
}

fn test(cx: &mut Ctx<'_>, raw: &RawTest) -> TestSpec {
    let script = raw.script.as_ref().and_then(|s| {
        let resolved = cx.dir.join(s.get_ref());
        if resolved.is_file() {
            Some(resolved)
        } else {
            cx.err(
                s.span(),
                format!("test script \"{}\" not found", s.get_ref()),
                Some(format!(
                    "paths are relative to the composition's folder; looked at {}",
                    resolved.display()
                )),
            );
            None
        }
    });
    let timeout = match &raw.timeout {
        Some(t) => match units::parse_duration(t.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                cx.invalid(t.span(), e);
                DEFAULT_TEST_TIMEOUT
            }
        },
        None => DEFAULT_TEST_TIMEOUT,
    };
    TestSpec { script, timeout }
}

/// Reports problems in `[defaults]` once (roles merge its values quietly).
pub(crate) fn check_defaults(
    src: &SourceFile,
    dir: &Path,
    confine: &Confinement,
    raw: &RawRole,
) -> Vec<Diagnostic> {
    let mut cx = Ctx {
        src,
        dir,
        confine: confine.clone(),
        sink: Sink::default(),
    };
    if let Some(l) = &raw.packages {
        string_list(&mut cx, l, "package", units::check_package);
    }
    if let Some(l) = &raw.debconf {
        string_list(&mut cx, l, "debconf answer", units::check_debconf);
    }
    if let Some(l) = &raw.services {
        string_list(&mut cx, l, "service", units::check_unit);
    }
    for (path, f) in &raw.files {
        file(&mut cx, path, f.get_ref(), true);
    }
    cx.sink.diags
}
