//! `testbed plan`: the nodes, addresses and networks a composition expands to.

use std::path::Path;

use testbed_model::{Plan, Scale, ScaleArg};

use crate::output::Outcome;

pub fn run(path: Option<&Path>, scale: &[ScaleArg], json: bool) -> Outcome {
    let path = testbed_model::resolve_path(path);
    let scale: Scale = scale.iter().cloned().collect();
    let (_, plan) = testbed_model::check(&path, &scale)?;
    if json {
        // Serializing plain data cannot fail; the plan's field order is fixed
        // by its types, so the output is byte-identical for the same input.
        outln!(
            "{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
    } else {
        out!("{}", table(&plan));
    }
    Ok(())
}

/// `testbed graph`: the plan's topology as SVG or DOT on stdout.
pub fn graph(path: Option<&Path>, scale: &[ScaleArg], format: &str) -> Outcome {
    let path = testbed_model::resolve_path(path);
    let scale: Scale = scale.iter().cloned().collect();
    let (_, plan) = testbed_model::check(&path, &scale)?;
    let picture = match format {
        "dot" => testbed_model::graph::dot(&plan),
        _ => testbed_model::graph::svg(&plan),
    };
    out!("{picture}");
    Ok(())
}

fn memory(mib: u64) -> String {
    if mib % 1024 == 0 {
        format!("{}GiB", mib / 1024)
    } else {
        format!("{mib}MiB")
    }
}

/// A plain table, padded by hand: the plan is small and this keeps the
/// output stable for tests and diffs.
fn table(plan: &Plan) -> String {
    let mut out = format!(
        "cluster {} ({}): {} node{}, {} network{}\n\n",
        plan.cluster,
        plan.distro,
        plan.nodes.len(),
        if plan.nodes.len() == 1 { "" } else { "s" },
        plan.networks.len(),
        if plan.networks.len() == 1 { "" } else { "s" },
    );
    let mut rows = vec![vec!["NETWORK".to_string(), "SUBNET".to_string()]];
    for n in &plan.networks {
        rows.push(vec![n.name.clone(), n.subnet.to_string()]);
    }
    out.push_str(&pad(&rows));
    out.push('\n');
    let mut rows = vec![["NODE", "ROLE", "CPUS", "MEMORY", "NETWORK", "IP", "MAC"]
        .map(String::from)
        .to_vec()];
    for node in &plan.nodes {
        let base = vec![
            node.name.clone(),
            node.role.clone(),
            node.cpus.to_string(),
            memory(node.memory_mib),
        ];
        for (i, nic) in node.nics.iter().enumerate() {
            let mut row = if i == 0 {
                base.clone()
            } else {
                vec![String::new(); 4]
            };
            row.extend([
                nic.network.clone(),
                format!("{}/{}", nic.ip, nic.prefix),
                nic.mac.to_string(),
            ]);
            rows.push(row);
        }
    }
    out.push_str(&pad(&rows));
    out
}

fn pad(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s:<w$}", w = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
