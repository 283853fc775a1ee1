//! `testbed check`: validate a composition, plan it and render every template
//! for every node.

use std::path::Path;

use serde_json::json;
use testbed_model::{Scale, ScaleArg};

use crate::output::{Failure, Outcome};

pub fn run(path: Option<&Path>, scale: &[ScaleArg], json: bool) -> Outcome {
    let path = testbed_model::resolve_path(path);
    let scale: Scale = scale.iter().cloned().collect();
    match testbed_model::check(&path, &scale) {
        Ok((comp, plan)) => {
            let templates = comp
                .roles
                .iter()
                .flat_map(|r| &r.files)
                .filter(|f| !f.is_static())
                .count();
            if json {
                let v = json!({
                    "ok": true,
                    "file": path,
                    "cluster": plan.cluster,
                    "roles": plan.roles.len(),
                    "nodes": plan.nodes.len(),
                    "networks": plan.networks.len(),
                    "secrets": comp.secrets.len(),
                    "templates": templates,
                    "diagnostics": [],
                });
                outln!("{v:#}");
            } else {
                let plural =
                    |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
                outln!(
                    "ok: {}: cluster \"{}\", {}, {}, {}, {}, {} rendered for every node",
                    path.display(),
                    plan.cluster,
                    plural(plan.roles.len(), "role"),
                    plural(plan.nodes.len(), "node"),
                    plural(plan.networks.len(), "network"),
                    plural(comp.secrets.len(), "secret"),
                    plural(templates, "template"),
                );
            }
            Ok(())
        }
        Err(diags) if json => {
            let v = json!({ "ok": false, "file": path, "diagnostics": diags });
            outln!("{v:#}");
            Err(Failure::Reported(2))
        }
        Err(diags) => Err(Failure::Input(diags)),
    }
}
