//! The libvirt backend's placement: which hosts a cluster runs on and
//! which node goes where. Pure but for [`default_uri`], which reads the
//! environment and the effective user.

use std::collections::BTreeMap;

use testbed_model::{Composition, Plan};

use crate::Error;

/// The libvirt URI used when none is given: `$LIBVIRT_DEFAULT_URI`, else
/// the system daemon for root and the user's session daemon otherwise.
pub fn default_uri() -> String {
    match std::env::var("LIBVIRT_DEFAULT_URI") {
        Ok(uri) if !uri.is_empty() => uri,
        _ if rustix::process::geteuid().is_root() => "qemu:///system".to_owned(),
        _ => "qemu:///session".to_owned(),
    }
}

/// The hosts a cluster runs on: `hosts` (`--host`, repeatable) if any,
/// else `connect` (`--connect`), else the composition's `[[hosts]]`, else
/// `default` (see [`default_uri`]).
pub fn hosts(
    comp: &Composition,
    connect: Option<&str>,
    hosts: &[String],
    default: impl FnOnce() -> String,
) -> Vec<String> {
    if !hosts.is_empty() {
        hosts.to_vec()
    } else if let Some(uri) = connect {
        vec![uri.to_owned()]
    } else if !comp.hosts.is_empty() {
        comp.hosts.iter().map(|h| h.uri.clone()).collect()
    } else {
        vec![default()]
    }
}

/// Each node's host, as an index into `hosts` (not empty): a pinned
/// role's nodes go to its host, found by the URI its `[[hosts]]` entry
/// names; the others round-robin, in plan order. A pinned host that is not
/// among `hosts` is a usage error naming the node.
pub fn placement(
    comp: &Composition,
    plan: &Plan,
    hosts: &[String],
) -> Result<BTreeMap<String, usize>, Error> {
    let mut placement = BTreeMap::new();
    let mut next = 0;
    for node in &plan.nodes {
        let index = match &node.host {
            Some(name) => {
                let uri = comp
                    .hosts
                    .iter()
                    .find(|h| &h.name == name)
                    .map(|h| h.uri.as_str())
                    .unwrap_or_default();
                hosts.iter().position(|h| h == uri).ok_or_else(|| {
                    Error::Usage(format!(
                        "node {} is pinned to host {name} ({uri}), which is not among the hosts given: {}",
                        node.name,
                        hosts.join(", ")
                    ))
                })?
            }
            None => {
                next += 1;
                (next - 1) % hosts.len()
            }
        };
        placement.insert(node.name.clone(), index);
    }
    Ok(placement)
}

/// The nodes placed on host `index`, in plan order (as `status` lists
/// them).
pub fn nodes_on(plan: &Plan, placement: &BTreeMap<String, usize>, index: usize) -> Vec<String> {
    plan.nodes
        .iter()
        .filter(|n| placement.get(&n.name) == Some(&index))
        .map(|n| n.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::target;

    const TWO_HOSTS: &str = r#"
[cluster]
name = "p"

[[hosts]]
name = "near"
uri = "qemu:///system"

[[hosts]]
name = "far"
uri = "qemu+ssh://far/system"

[roles.ctl]
host = "far"

[roles.compute]
count = 3
"#;

    fn uris(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unpinned_nodes_go_round_robin_in_plan_order() {
        let (_dir, t) =
            target("[cluster]\nname = \"rr\"\n[roles.a]\ncount = 2\n[roles.b]\ncount = 3\n");
        let hosts = uris(&["h1", "h2"]);
        let p = placement(&t.comp, &t.plan, &hosts).expect("placement");
        let order: Vec<(&str, usize)> = t
            .plan
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), p[&n.name]))
            .collect();
        assert_eq!(
            order,
            [("a1", 0), ("a2", 1), ("b1", 0), ("b2", 1), ("b3", 0)]
        );
        assert_eq!(nodes_on(&t.plan, &p, 0), ["a1", "b1", "b3"]);
        assert_eq!(nodes_on(&t.plan, &p, 1), ["a2", "b2"]);
        assert!(nodes_on(&t.plan, &p, 2).is_empty());
    }

    #[test]
    fn pinned_roles_go_to_their_host_and_do_not_take_a_turn() {
        let (_dir, t) = target(TWO_HOSTS);
        let hosts = hosts(&t.comp, None, &[], || unreachable!("hosts are listed"));
        assert_eq!(hosts, ["qemu:///system", "qemu+ssh://far/system"]);
        let p = placement(&t.comp, &t.plan, &hosts).expect("placement");
        assert_eq!(p["ctl"], 1);
        // The round-robin starts at the first host, as if ctl were not there.
        assert_eq!([p["compute1"], p["compute2"], p["compute3"]], [0, 1, 0]);
    }

    #[test]
    fn a_pinned_host_missing_from_the_hosts_given_names_the_node() {
        let (_dir, t) = target(TWO_HOSTS);
        let given = hosts(&t.comp, Some("qemu:///system"), &[], || unreachable!());
        assert_eq!(given, ["qemu:///system"]);
        let err = placement(&t.comp, &t.plan, &given).expect_err("far is not given");
        assert!(err.is_usage(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "node ctl is pinned to host far (qemu+ssh://far/system), which is not among the hosts given: qemu:///system"
        );
        // --host replaces the list; the pinned URI found there is used.
        let given = hosts(
            &t.comp,
            None,
            &uris(&["qemu+ssh://far/system", "qemu:///x"]),
            || unreachable!(),
        );
        let p = placement(&t.comp, &t.plan, &given).expect("placement");
        assert_eq!(p["ctl"], 0);
    }

    #[test]
    fn without_hosts_the_default_uri_is_the_one_host() {
        let (_dir, t) = target("[cluster]\nname = \"d\"\n[roles.a]\n");
        assert_eq!(
            hosts(&t.comp, None, &[], || "qemu:///session".into()),
            ["qemu:///session"]
        );
        let p = placement(&t.comp, &t.plan, &uris(&["qemu:///session"])).expect("placement");
        assert_eq!(p["a"], 0);
    }
}
