//! A plan's topology as a picture (`testbed graph`): Graphviz DOT, or a
//! standalone SVG drawn here (no Graphviz needed to see it).
//!
//! The SVG is a bus diagram, as network engineers draw LANs: one column
//! per node (its name, role, memory and vCPUs in a box, coloured by role),
//! one horizontal line per network (its name and subnet at the left), and
//! a drop from each node to each network it is on, labelled with its
//! address. It is deterministic: the same plan gives the same bytes.

use std::fmt::Write as _;

use crate::plan::Plan;
use crate::xml::escape;

/// Escapes text for DOT's double-quoted strings.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Fill colours for roles, in role order (then again).
const PALETTE: [&str; 8] = [
    "#dbeafe", "#dcfce7", "#fef3c7", "#fce7f3", "#ede9fe", "#cffafe", "#fee2e2", "#e5e7eb",
];

fn colour(plan: &Plan, role: &str) -> &'static str {
    let i = plan.roles.iter().position(|r| r.name == role).unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

fn memory(mib: u64) -> String {
    if mib % 1024 == 0 {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

/// The topology in Graphviz's DOT: networks as ellipses, nodes as boxes
/// grouped by role, an edge per interface labelled with its address.
pub fn dot(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "graph \"{}\" {{", quote(&plan.cluster));
    let _ = writeln!(
        out,
        "  label=\"cluster {} ({})\";\n  labelloc=t;\n  node [fontname=\"sans-serif\"];\n  edge [fontname=\"sans-serif\", fontsize=10];",
        quote(&plan.cluster),
        quote(&plan.distro)
    );
    for net in &plan.networks {
        let _ = writeln!(
            out,
            "  \"net:{}\" [shape=ellipse, label=\"{}\\n{}\"];",
            quote(&net.name),
            quote(&net.name),
            net.subnet
        );
    }
    for (i, role) in plan.roles.iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph \"cluster_role_{i}\" {{\n    label=\"{}\";\n    style=rounded;",
            quote(&role.name)
        );
        for node in plan.nodes.iter().filter(|n| n.role == role.name) {
            let _ = writeln!(
                out,
                "    \"node:{}\" [shape=box, style=filled, fillcolor=\"{}\", label=\"{}\\n{}, {} vCPU\"];",
                quote(&node.name),
                colour(plan, &node.role),
                quote(&node.name),
                memory(node.memory_mib),
                node.cpus
            );
        }
        let _ = writeln!(out, "  }}");
    }
    for node in &plan.nodes {
        for nic in &node.nics {
            let _ = writeln!(
                out,
                "  \"node:{}\" -- \"net:{}\" [label=\"{}\"];",
                quote(&node.name),
                quote(&nic.network),
                nic.ip
            );
        }
    }
    out.push_str("}\n");
    out
}

const COLUMN: usize = 150;
const LEFT: usize = 170;
const BOX_TOP: usize = 50;
const BOX_HEIGHT: usize = 64;
const FIRST_BUS: usize = 160;
const BUS_GAP: usize = 60;

/// The topology as a standalone SVG (see the module's documentation).
/// Drawn in layers: the drops, then the networks over them with a white
/// edge (a drop that only crosses a network shows a gap there), then a
/// dot and the address where a node is on a network, then the boxes.
pub fn svg(plan: &Plan) -> String {
    let columns = plan.nodes.len().max(1);
    let width = LEFT + columns * COLUMN + 20;
    let height = FIRST_BUS + plan.networks.len().max(1) * BUS_GAP + 10;
    let bus_y = |i: usize| FIRST_BUS + i * BUS_GAP;
    let centre = |c: usize| LEFT + c * COLUMN + 10 + (COLUMN - 20) / 2;
    // (column, network index, address) of every interface.
    let links: Vec<(usize, usize, String)> = plan
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(c, node)| {
            node.nics.iter().filter_map(move |nic| {
                let i = plan.networks.iter().position(|n| n.name == nic.network)?;
                Some((c, i, nic.ip.to_string()))
            })
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        out,
        "<title>cluster {} ({}): {} nodes, {} networks</title>",
        escape(&plan.cluster),
        escape(&plan.distro),
        plan.nodes.len(),
        plan.networks.len()
    );
    let _ = writeln!(
        out,
        "<text x=\"10\" y=\"24\" font-size=\"16\" font-weight=\"bold\">cluster {} <tspan font-weight=\"normal\" font-size=\"12\">({})</tspan></text>",
        escape(&plan.cluster),
        escape(&plan.distro)
    );
    // Each node's drop, down to the lowest network it is on.
    for c in 0..plan.nodes.len() {
        if let Some(bottom) = links.iter().filter(|l| l.0 == c).map(|l| l.1).max() {
            let x = centre(c);
            let _ = writeln!(
                out,
                "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#64748b\" stroke-width=\"2\"/>",
                BOX_TOP + BOX_HEIGHT,
                bus_y(bottom)
            );
        }
    }
    for (i, net) in plan.networks.iter().enumerate() {
        let y = bus_y(i);
        let _ = writeln!(
            out,
            "<g class=\"network\" id=\"net-{name}\"><line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"white\" stroke-width=\"12\"/><line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"#334155\" stroke-width=\"4\"/><text x=\"10\" y=\"{ty}\" font-weight=\"bold\">{name}</text><text x=\"10\" y=\"{sy}\">{subnet}</text></g>",
            name = escape(&net.name),
            x2 = width - 20,
            ty = y - 2,
            sy = y + 14,
            subnet = net.subnet
        );
    }
    for (c, i, ip) in &links {
        let (x, y) = (centre(*c), bus_y(*i));
        let _ = writeln!(
            out,
            "<line x1=\"{x}\" y1=\"{top}\" x2=\"{x}\" y2=\"{y}\" stroke=\"#64748b\" stroke-width=\"2\"/><circle cx=\"{x}\" cy=\"{y}\" r=\"5\" fill=\"#334155\"/><text x=\"{tx}\" y=\"{ty}\" font-size=\"11\">{ip}</text>",
            top = y - 8,
            tx = x + 7,
            ty = y - 7,
        );
    }
    for (c, node) in plan.nodes.iter().enumerate() {
        let x = LEFT + c * COLUMN + 10;
        let _ = writeln!(
            out,
            "<g class=\"node\" id=\"node-{name}\"><rect x=\"{x}\" y=\"{BOX_TOP}\" width=\"{w}\" height=\"{BOX_HEIGHT}\" rx=\"6\" fill=\"{fill}\" stroke=\"#334155\"/><text x=\"{cx}\" y=\"{y1}\" text-anchor=\"middle\" font-weight=\"bold\">{name}</text><text x=\"{cx}\" y=\"{y2}\" text-anchor=\"middle\" font-size=\"11\">role {role}</text><text x=\"{cx}\" y=\"{y3}\" text-anchor=\"middle\" font-size=\"11\">{mem} · {cpus} vCPU</text></g>",
            w = COLUMN - 20,
            cx = centre(c),
            fill = colour(plan, &node.role),
            y1 = BOX_TOP + 20,
            y2 = BOX_TOP + 37,
            y3 = BOX_TOP + 53,
            name = escape(&node.name),
            role = escape(&node.role),
            mem = memory(node.memory_mib),
            cpus = node.cpus
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_strings_keep_quotes_and_backslashes_escaped() {
        assert_eq!(quote("a\"b\\c"), "a\\\"b\\\\c");
        assert_eq!(quote("x\u{7}y"), "xy");
    }
}
