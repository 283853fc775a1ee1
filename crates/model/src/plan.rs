//! The plan: a deterministic expansion of a composition into nodes, NICs and
//! networks. The same composition and the same `--scale` always give the
//! byte-identical plan; nothing here reads the clock, the environment or a
//! random source.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::Serialize;

use crate::composition::{Composition, Role};
use crate::diag::{Diagnostic, Diagnostics, Sink};
use crate::net::{Mac, Subnet};
use crate::validate::MAX_COUNT;

/// Count overrides from `--scale ROLE=N`, in the order given (a later
/// override of the same role wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scale(pub Vec<(String, u32)>);

/// One `ROLE=N` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleArg(pub String, pub u32);

impl FromStr for ScaleArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (role, n) = s
            .split_once('=')
            .ok_or_else(|| format!("expected ROLE=N, e.g. compute=8, got \"{s}\""))?;
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("expected a whole number of nodes after '=', got \"{n}\""))?;
        Ok(ScaleArg(role.trim().to_string(), n))
    }
}

impl FromIterator<ScaleArg> for Scale {
    fn from_iter<I: IntoIterator<Item = ScaleArg>>(iter: I) -> Self {
        Scale(iter.into_iter().map(|ScaleArg(r, n)| (r, n)).collect())
    }
}

/// The expanded cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The cluster's name.
    pub cluster: String,
    /// `vendor/suite`.
    pub distro: String,
    /// Networks with their subnets.
    pub networks: Vec<PlanNetwork>,
    /// Roles with their effective counts.
    pub roles: Vec<PlanRole>,
    /// Every node, roles in file order, then by index.
    pub nodes: Vec<Node>,
}

/// A network with its subnet decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanNetwork {
    /// The network's name.
    pub name: String,
    /// Its subnet.
    pub subnet: Subnet,
    /// The subnet's netmask, for templates and tools that want it.
    pub netmask: Ipv4Addr,
}

/// A role with its effective count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanRole {
    /// The role's name.
    pub name: String,
    /// Nodes after `--scale`.
    pub count: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Units started at activation.
    pub services: Vec<String>,
    /// Its nodes' names.
    pub nodes: Vec<String>,
}

/// One machine of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The node's name, also its host name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// 1-based index within the role.
    pub index: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// NICs, in the composition's network order.
    pub nics: Vec<Nic>,
    /// The `[[hosts]]` entry the node is pinned to by its role's `host`.
    /// Unpinned nodes are placed by the libvirt backend, not here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A node's interface on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    /// The network.
    pub network: String,
    /// The node's address.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The interface's MAC.
    pub mac: Mac,
}

impl Plan {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

impl fmt::Display for Nic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}/{}", self.network, self.ip, self.prefix)
    }
}

/// A small stable hash (FNV-1a) so that default subnets depend on the
/// cluster name but never on the platform or the Rust version.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Default subnets, in order of preference: /24s of 10.0.0.0/8 starting at
/// 10.B.0.0 where B (100..=199) is derived from the cluster name, so that two
/// clusters rarely pick the same addresses (container networks share the
/// host), then the other private ranges.
fn default_subnets(cluster: &str) -> impl Iterator<Item = Subnet> {
    let b = 100 + fnv1a(cluster) % 100;
    let ten = (0..256u32).flat_map(move |second| {
        let second = (b + second) % 256;
        (0..256u32).map(move |third| Ipv4Addr::new(10, second as u8, third as u8, 0))
    });
    let others = (16..32u32)
        .flat_map(|second| {
            (0..256u32).map(move |third| Ipv4Addr::new(172, second as u8, third as u8, 0))
        })
        .chain((0..256u32).map(|third| Ipv4Addr::new(192, 168, third as u8, 0)));
    ten.chain(others).filter_map(|a| Subnet::new(a, 24))
}

/// The names of a role's nodes: the role's name for one node, `ROLE1..ROLEn`
/// for several.
pub fn node_names(role: &str, count: u32) -> Vec<String> {
    if count == 1 {
        vec![role.to_string()]
    } else {
        (1..=count).map(|i| format!("{role}{i}")).collect()
    }
}

fn effective_count(role: &Role, scale: &Scale, sink: &mut Sink) -> u32 {
    let mut count = role.count;
    for (r, n) in &scale.0 {
        if *r == role.name {
            count = *n;
        }
    }
    let max = u32::try_from(MAX_COUNT).unwrap_or(u32::MAX);
    if count == 0 || count > max {
        sink.push(
            Diagnostic::new(format!("--scale {}={count} is out of range", role.name))
                .help(format!("a role has between 1 and {max} nodes")),
        );
        return role.count;
    }
    count
}

/// Expands `comp` into a plan, with `scale` overriding role counts.
pub fn plan(comp: &Composition, scale: &Scale) -> Result<Plan, Diagnostics> {
    let mut sink = Sink::default();
    let role_names: Vec<&str> = comp.roles.iter().map(|r| r.name.as_str()).collect();
    for (r, _) in &scale.0 {
        if !role_names.contains(&r.as_str()) {
            sink.push(
                Diagnostic::new(format!("--scale names unknown role \"{r}\"")).help(format!(
                    "roles of cluster \"{}\": {}",
                    comp.cluster.name,
                    role_names.join(", ")
                )),
            );
        }
    }
    let scaled = |role: &str| scale.0.iter().any(|(r, _)| r == role);

    // Expand roles into node names and find collisions (role "compute" with
    // count 2 and a role named "compute1", say).
    let mut roles = Vec::new();
    let mut owner: HashMap<String, &Role> = HashMap::new();
    for role in &comp.roles {
        let count = effective_count(role, scale, &mut sink);
        let names = node_names(&role.name, count);
        for name in &names {
            if let Some(other) = owner.get(name) {
                let d = Diagnostic::at(
                    &comp.source,
                    role.name_span.clone(),
                    format!(
                        "node name \"{name}\" of role \"{}\" collides with node \"{name}\" of role \"{}\"",
                        role.name, other.name
                    ),
                )
                .help(format!(
                    "roles with several nodes name them ROLE1..ROLEn; rename role \"{}\" or \"{}\"",
                    other.name, role.name
                ));
                sink.push(d);
            } else {
                owner.insert(name.clone(), role);
            }
        }
        roles.push(PlanRole {
            name: role.name.clone(),
            count,
            memory_mib: role.memory_mib,
            cpus: role.cpus,
            services: role.services.clone(),
            nodes: names,
        });
    }

    // Subnets: explicit ones as written, the others a distinct /24 each,
    // derived from the cluster name and skipping any explicit subnet.
    let mut taken: Vec<Subnet> = comp.networks.iter().filter_map(|n| n.subnet).collect();
    let mut candidates = default_subnets(&comp.cluster.name);
    let mut networks = Vec::new();
    for net in &comp.networks {
        let subnet = match net.subnet {
            Some(s) => s,
            None => match candidates.find(|c| !taken.iter().any(|t| t.overlaps(c))) {
                Some(c) => {
                    taken.push(c);
                    c
                }
                None => {
                    sink.push(
                        Diagnostic::new(format!("no free /24 left for network \"{}\"", net.name))
                            .help("the other networks' subnets cover every private range; set subnet = \"...\" for it"),
                    );
                    continue;
                }
            },
        };
        networks.push(PlanNetwork {
            name: net.name.clone(),
            subnet,
            netmask: subnet.netmask(),
        });
    }
    if networks.len() != comp.networks.len() {
        return Err(Diagnostics(sink.diags));
    }

    // Addresses, per network, in node order.
    let mut next_host: Vec<u32> = vec![0; networks.len()];
    let mut nodes = Vec::new();
    for (role, prole) in comp.roles.iter().zip(&roles) {
        for (i, name) in prole.nodes.iter().enumerate() {
            let mut nics = Vec::new();
            for (ni, net) in networks.iter().enumerate() {
                if !role.networks.contains(&net.name) {
                    continue;
                }
                let k = next_host[ni];
                next_host[ni] += 1;
                if let Some(ip) = net.subnet.host(k) {
                    nics.push(Nic {
                        network: net.name.clone(),
                        ip,
                        prefix: net.subnet.prefix(),
                        mac: Mac::for_nic(ni, ip),
                    });
                }
            }
            nodes.push(Node {
                name: name.clone(),
                role: role.name.clone(),
                index: u32::try_from(i + 1).unwrap_or(u32::MAX),
                memory_mib: role.memory_mib,
                cpus: role.cpus,
                nics,
                host: role.host.clone(),
            });
        }
    }
    for ((net, used), spec) in networks.iter().zip(&next_host).zip(&comp.networks) {
        let capacity = net.subnet.capacity();
        if *used <= capacity {
            continue;
        }
        let attached: Vec<String> = roles
            .iter()
            .zip(&comp.roles)
            .filter(|(_, r)| r.networks.contains(&net.name))
            .map(|(pr, _)| {
                let mark = if scaled(&pr.name) {
                    " (from --scale)"
                } else {
                    ""
                };
                format!("{} × {}{mark}", pr.count, pr.name)
            })
            .collect();
        let message = format!(
            "subnet {} of network \"{}\" is too small: {used} nodes need addresses but it has room for {capacity}",
            net.subnet, net.name
        );
        let help = format!(
            "attached: {}; use a larger subnet (addresses .1-.{} of every subnet are reserved)",
            attached.join(", "),
            crate::net::FIRST_HOST_OFFSET - 1
        );
        let d = match spec.subnet_span.clone().or(spec.name_span.clone()) {
            Some(span) => Diagnostic::at(&comp.source, span, message),
            None => Diagnostic::new(message),
        };
        sink.push(d.help(help));
    }

    sink.finish(Plan {
        cluster: comp.cluster.name.clone(),
        distro: format!(
            "{}/{}",
            comp.cluster.distro.vendor, comp.cluster.distro.suite
        ),
        networks,
        roles,
        nodes,
    })
}
