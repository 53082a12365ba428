//! The next-kernel claim (pure): the kernels the nodes boot at their next reboot, read from the
//! annotation an OS updater sets ([`NEXT_KERNEL_ANNOTATION`]) and published for the hub to build
//! ahead ([`NEXT_KERNEL_VERSIONS_CLAIM`]).
//!
//! Optional on purpose: no node annotated, no claim, and the kernel-versions claims are exactly
//! what they were. An annotation naming the kernel the node already runs is spent (the updater
//! has not cleared it yet) and not published. A value breaking the kernel grammar is left out and
//! named with its node. More than [`MAX_NEXT_KERNELS_PER_CLUSTER`] distinct kernels: those most
//! nodes announce are published, the rest named.

use std::{borrow::Borrow, collections::BTreeMap};

use k8s_openapi::api::core::v1::Node;
use kmm_api::{
    claims::{MAX_NEXT_KERNELS_PER_CLUSTER, NEXT_KERNEL_ANNOTATION, NEXT_KERNEL_VERSIONS_CLAIM},
    kernel::grammar::check_kernel,
};
use kube::ResourceExt;

use super::RefusedKernel;

/// What the nodes announce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NextKernels {
    /// The kernels to publish, at most [`MAX_NEXT_KERNELS_PER_CLUSTER`], sorted.
    pub kernels: Vec<String>,
    /// Annotations that break the kernel grammar, by node.
    pub refused: Vec<RefusedKernel>,
    /// Valid kernels left out by the bound, sorted.
    pub dropped: Vec<String>,
}

/// The next kernels `nodes` announce; see the module docs.
pub fn next_kernels<N: Borrow<Node>>(nodes: &[N]) -> NextKernels {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = NextKernels::default();
    for node in nodes.iter().map(Borrow::borrow) {
        let Some(next) = node.annotations().get(NEXT_KERNEL_ANNOTATION).map(|v| v.trim()) else {
            continue;
        };
        let running = node
            .status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.kernel_version.trim());
        if next.is_empty() || running == Some(next) {
            continue;
        }
        match check_kernel(next) {
            Ok(()) => *count.entry(next).or_default() += 1,
            Err(e) => out.refused.push(RefusedKernel {
                node: node.name_any(),
                kernel: next.escape_debug().to_string(),
                reason: e.to_string(),
            }),
        }
    }
    out.refused.sort();
    // Most nodes first: the kernel of the real upgrade wins over one-off values.
    let mut ranked: Vec<(&str, usize)> = count.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (i, (kernel, _)) in ranked.into_iter().enumerate() {
        if i < MAX_NEXT_KERNELS_PER_CLUSTER {
            out.kernels.push(kernel.to_owned());
        } else {
            out.dropped.push(kernel.to_owned());
        }
    }
    out.kernels.sort();
    out.dropped.sort();
    out
}

/// `(claim name, value)` of the next-kernel claim, `None` when no node announces a kernel.
pub fn claim<N: Borrow<Node>>(nodes: &[N]) -> Option<(String, String)> {
    let next = next_kernels(nodes);
    // The kernels are checked and bounded above, so encoding cannot refuse them.
    kmm_api::claims::encode_next_kernel_claim(next.kernels.iter().map(String::as_str))
        .ok()
        .flatten()
        .map(|value| (NEXT_KERNEL_VERSIONS_CLAIM.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use kmm_api::claims::decode_next_kernels;

    use super::*;
    use crate::fixtures::mk_bare_node;

    fn node(name: &str, kernel: &str, next: Option<&str>) -> Node {
        let mut n = mk_bare_node(Some(kernel));
        n.metadata.name = Some(name.into());
        if let Some(next) = next {
            n.annotations_mut()
                .insert(NEXT_KERNEL_ANNOTATION.into(), next.into());
        }
        n
    }

    #[test]
    fn no_annotation_no_claim() {
        let nodes = [node("a", "6.1.0-18-cloud-amd64", None)];
        assert_eq!(claim(&nodes), None);
        assert_eq!(next_kernels(&nodes), NextKernels::default());
    }

    #[test]
    fn announced_kernels_are_published_once_and_spent_ones_skipped() {
        let nodes = [
            node("a", "6.1.0-18-cloud-amd64", Some("6.1.0-29-cloud-amd64")),
            node("b", "6.1.0-18-cloud-amd64", Some(" 6.1.0-29-cloud-amd64 ")),
            node("c", "6.1.0-29-cloud-amd64", Some("6.1.0-29-cloud-amd64")),
            node("d", "6.1.0-18-cloud-amd64", Some("")),
        ];
        let (name, value) = claim(&nodes).unwrap();
        assert_eq!(name, NEXT_KERNEL_VERSIONS_CLAIM);
        assert_eq!(value, "6.1.0-29-cloud-amd64");
        assert_eq!(
            decode_next_kernels(Some(&value)).kernels,
            ["6.1.0-29-cloud-amd64"]
        );
        // Only spent annotations: nothing to publish.
        assert_eq!(claim(&nodes[2..]), None);
    }

    #[test]
    fn bad_values_are_named_and_left_out() {
        let nodes = [
            node("a", "6.1.0-18-cloud-amd64", Some("6.1.0-29\n9.9.9-invented")),
            node("b", "6.1.0-18-cloud-amd64", Some("6.1.0-29-cloud-amd64")),
        ];
        let next = next_kernels(&nodes);
        assert_eq!(next.kernels, ["6.1.0-29-cloud-amd64"]);
        assert_eq!(next.refused.len(), 1);
        assert_eq!(next.refused[0].node, "a");
        assert_eq!(next.refused[0].kernel, "6.1.0-29\\n9.9.9-invented");
    }

    #[test]
    fn the_kernels_most_nodes_announce_are_kept_within_the_bound() {
        let mut nodes: Vec<Node> = (0..100)
            .map(|i| {
                node(
                    &format!("odd-{i}"),
                    "6.1.0-18-cloud-amd64",
                    Some(&format!("9.0.{i}-x")),
                )
            })
            .collect();
        nodes.push(node("u1", "6.1.0-18-cloud-amd64", Some("6.1.0-29-cloud-amd64")));
        nodes.push(node("u2", "6.1.0-18-cloud-amd64", Some("6.1.0-29-cloud-amd64")));
        let next = next_kernels(&nodes);
        assert_eq!(next.kernels.len(), MAX_NEXT_KERNELS_PER_CLUSTER);
        assert!(next.kernels.contains(&"6.1.0-29-cloud-amd64".to_string()));
        assert_eq!(next.dropped.len(), 101 - MAX_NEXT_KERNELS_PER_CLUSTER);
        let (_, value) = claim(&nodes).unwrap();
        assert_eq!(decode_next_kernels(Some(&value)).kernels, next.kernels);
    }
}
