//! Jinja templates for files rendered per node at activation.
//!
//! A template sees the whole topology, so files such as `slurm.conf` follow
//! `--scale` without edits. The context (documented in docs/composition.md):
//!
//! - `cluster`: `{ name, distro }`
//! - `node`: the node being rendered (see [`NodeCtx`])
//! - `nodes`: every node, in plan order
//! - `roles`: role name → list of its nodes
//! - `networks`: network name → `{ name, subnet, netmask, prefix }`
//!
//! Undefined variables are errors, so a typo is caught by `testbed check`
//! (which renders every template for every node) rather than by a broken
//! daemon in the guest.

use std::collections::BTreeMap;
use std::path::Path;

use indexmap::IndexMap;
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::composition::{Composition, FileKind};
use crate::confine::{ConfineError, Confinement};
use crate::diag::{Diagnostic, Diagnostics, Sink, SourceFile};
use crate::plan::{Node, Plan};
use crate::validate::io_reason;

/// What a template sees of one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeCtx {
    /// Node name, also its host name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// 1-based index within its role.
    pub index: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Its address on its first network.
    pub ip: Option<String>,
    /// Network name → its address there.
    pub ips: BTreeMap<String, String>,
}

impl NodeCtx {
    fn new(n: &Node) -> NodeCtx {
        NodeCtx {
            name: n.name.clone(),
            role: n.role.clone(),
            index: n.index,
            cpus: n.cpus,
            memory_mib: n.memory_mib,
            ip: n.nics.first().map(|nic| nic.ip.to_string()),
            ips: n
                .nics
                .iter()
                .map(|nic| (nic.network.clone(), nic.ip.to_string()))
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct ClusterCtx<'a> {
    name: &'a str,
    distro: &'a str,
}

#[derive(Serialize)]
struct NetworkCtx {
    name: String,
    subnet: String,
    netmask: String,
    prefix: u8,
}

#[derive(Serialize)]
struct Ctx<'a> {
    cluster: ClusterCtx<'a>,
    node: NodeCtx,
    nodes: Vec<NodeCtx>,
    roles: IndexMap<&'a str, Vec<NodeCtx>>,
    networks: IndexMap<&'a str, NetworkCtx>,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Configuration files usually end with a newline; keep it.
    env.set_keep_trailing_newline(true);
    env
}

fn diagnostic(file: &SourceFile, e: &minijinja::Error, node: Option<&str>) -> Diagnostic {
    let what = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    let message = match node {
        Some(node) => format!(
            "template {} failed for node \"{node}\": {what}",
            file.path.display()
        ),
        None => format!("template {} does not parse: {what}", file.path.display()),
    };
    let location = match (e.range(), e.line()) {
        (Some(range), _) => Some(file.locate(range)),
        (None, Some(line)) => Some(file.locate_line(line)),
        (None, None) => None,
    };
    Diagnostic {
        message,
        location,
        help: Some(
            "variables: cluster, node, nodes, roles, networks (see docs/composition.md)"
                .to_string(),
        ),
    }
}

/// Reads a template file (a [`FileKind::Template`] path) if `confine`
/// allows it, resolving it right now; the error names it.
pub fn read(confine: &Confinement, path: &Path) -> Result<SourceFile, Diagnostic> {
    match confine.read_to_string(path) {
        Ok(text) => Ok(SourceFile {
            path: path.to_path_buf(),
            text,
        }),
        Err(ConfineError::Io { source, .. }) => Err(Diagnostic::new(format!(
            "cannot read template {}: {}",
            path.display(),
            io_reason(&source)
        ))),
        Err(e) => Err(Diagnostic::new(format!("template {e}"))),
    }
}

/// Checks that a template file parses.
pub fn check_syntax(confine: &Confinement, path: &Path) -> Result<(), Diagnostic> {
    let file = read(confine, path)?;
    let env = environment();
    match env.template_from_named_str("template", &file.text) {
        Ok(_) => Ok(()),
        Err(e) => Err(diagnostic(&file, &e, None)),
    }
}

/// Renders a template's text for `node` of `plan`.
pub fn render(plan: &Plan, node: &str, file: &SourceFile) -> Result<String, Diagnostic> {
    let Some(this) = plan.node(node) else {
        return Err(Diagnostic::new(format!("no node \"{node}\" in the plan")));
    };
    let ctx = Ctx {
        cluster: ClusterCtx {
            name: &plan.cluster,
            distro: &plan.distro,
        },
        node: NodeCtx::new(this),
        nodes: plan.nodes.iter().map(NodeCtx::new).collect(),
        roles: plan
            .roles
            .iter()
            .map(|r| {
                let members = plan
                    .nodes
                    .iter()
                    .filter(|n| n.role == r.name)
                    .map(NodeCtx::new)
                    .collect();
                (r.name.as_str(), members)
            })
            .collect(),
        networks: plan
            .networks
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    NetworkCtx {
                        name: n.name.clone(),
                        subnet: n.subnet.to_string(),
                        netmask: n.netmask.to_string(),
                        prefix: n.subnet.prefix(),
                    },
                )
            })
            .collect(),
    };
    let env = environment();
    let tmpl = env
        .template_from_named_str("template", &file.text)
        .map_err(|e| diagnostic(file, &e, None))?;
    tmpl.render(&ctx)
        .map_err(|e| diagnostic(file, &e, Some(node)))
}

/// Renders every template of `comp` for every node that receives it, so
/// that a template error shows up at `testbed check` rather than in a guest.
/// Each template's first failure is reported once.
pub fn check_all(comp: &Composition, plan: &Plan) -> Result<(), Diagnostics> {
    let mut sink = Sink::default();
    let mut failed: Vec<&Path> = Vec::new();
    for role in &comp.roles {
        for f in &role.files {
            let FileKind::Template(path) = &f.kind else {
                continue;
            };
            if failed.contains(&path.as_path()) {
                continue;
            }
            let file = match read(&comp.confinement, path) {
                Ok(file) => file,
                Err(d) => {
                    sink.push(d);
                    failed.push(path);
                    continue;
                }
            };
            for node in plan.nodes.iter().filter(|n| n.role == role.name) {
                if let Err(d) = render(plan, &node.name, &file) {
                    sink.push(d);
                    failed.push(path);
                    break;
                }
            }
        }
    }
    sink.finish(())
}
