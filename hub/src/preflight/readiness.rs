//! Kernel readiness (pure): for each kernel the MCM's clusters run, whether its image was there
//! when the hub first saw a node with it (made ahead by a preflight, or pushed by hand) or had to
//! be made after the node booted. Decided once per kernel, in the reconcile that first sees it,
//! and kept while a selected cluster runs it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kmm_api::mcm::{KernelReadiness, KernelSummary, ManagedClusterModuleStatus};

/// Most kernels listed (as `status.kernels`).
pub const MAX_READINESS: usize = 256;

/// The readiness list for `kernels` (this reconcile's summary: `image` is set when it is
/// pinned), keeping the entries of `previous` for kernels still run.
pub fn kernel_readiness(
    previous: Option<&ManagedClusterModuleStatus>,
    kernels: &[KernelSummary],
    now: &Time,
) -> Vec<KernelReadiness> {
    let before: BTreeMap<&str, &KernelReadiness> = previous
        .map(|p| {
            p.kernel_readiness
                .iter()
                .map(|r| (r.kernel.as_str(), r))
                .collect()
        })
        .unwrap_or_default();
    let mut out: Vec<KernelReadiness> = kernels
        .iter()
        .map(|k| match before.get(k.kernel.as_str()) {
            Some(seen) => (*seen).clone(),
            None => KernelReadiness {
                kernel: k.kernel.clone(),
                ready_before_first_node: !k.image.is_empty(),
                first_seen: Some(now.clone()),
            },
        })
        .collect();
    // Newest first: the kernel being rolled out now is the one worth reading.
    out.sort_by(|a, b| {
        let t = |r: &KernelReadiness| r.first_seen.as_ref().map(|t| t.0);
        t(b).cmp(&t(a)).then_with(|| a.kernel.cmp(&b.kernel))
    });
    out.truncate(MAX_READINESS);
    out
}

/// The lines `kmm-hub status` prints under an MCM's table.
pub fn lines(status: Option<&ManagedClusterModuleStatus>) -> String {
    let mut text = String::new();
    for r in status.iter().flat_map(|s| &s.kernel_readiness) {
        let first = r
            .first_seen
            .as_ref()
            .map_or_else(|| "-".to_string(), |t| t.0.to_string());
        let how = if r.ready_before_first_node {
            "image ready before the first node reported it"
        } else {
            "image made after the first node reported it"
        };
        text.push_str(&format!(
            "kernel {}: {how} (first seen {first})\n",
            crate::render::printable(&r.kernel)
        ));
    }
    text
}

/// `kmm-hub status`'s readiness section: the MCMs (one, or all) with kernels to report.
pub async fn print(only: Option<&str>, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    use kmm_api::ManagedClusterModule;
    use kube::{Api, Client, ResourceExt, api::ListParams};
    let api: Api<ManagedClusterModule> = Api::all(Client::try_default().await?);
    let mcms = match only {
        Some(name) => vec![api.get(name).await?],
        None => api.list(&ListParams::default()).await?.items,
    };
    for mcm in &mcms {
        let text = lines(mcm.status.as_ref());
        if !text.is_empty() {
            writeln!(
                out,
                "Kernel readiness of ManagedClusterModule {}\n{text}",
                crate::render::printable(&mcm.name_any())
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + second).unwrap())
    }

    fn summary(kernel: &str, image: &str) -> KernelSummary {
        KernelSummary {
            kernel: kernel.into(),
            image: image.into(),
            clusters: 1,
        }
    }

    #[test]
    fn readiness_is_decided_when_a_kernel_is_first_seen_and_then_kept() {
        let first = kernel_readiness(
            None,
            &[summary("6.1.0-1", "r/k@sha256:1"), summary("6.1.0-2", "")],
            &at(0),
        );
        let got: Vec<_> = first
            .iter()
            .map(|r| (r.kernel.as_str(), r.ready_before_first_node))
            .collect();
        assert_eq!(got, [("6.1.0-1", true), ("6.1.0-2", false)]);
        let previous = ManagedClusterModuleStatus {
            kernel_readiness: first,
            ..Default::default()
        };
        // Built since: 6.1.0-2 stays "not ready before"; a new kernel arriving pinned is ready.
        let second = kernel_readiness(
            Some(&previous),
            &[
                summary("6.1.0-2", "r/k@sha256:2"),
                summary("6.1.0-3", "r/k@sha256:3"),
            ],
            &at(60),
        );
        let got: Vec<_> = second
            .iter()
            .map(|r| (r.kernel.as_str(), r.ready_before_first_node, r.first_seen.clone()))
            .collect();
        assert_eq!(
            got,
            [("6.1.0-3", true, Some(at(60))), ("6.1.0-2", false, Some(at(0)))]
        );
        let text = lines(Some(&ManagedClusterModuleStatus {
            kernel_readiness: second,
            ..Default::default()
        }));
        assert!(
            text.starts_with("kernel 6.1.0-3: image ready before the first node reported it"),
            "{text}"
        );
        assert!(text.contains("kernel 6.1.0-2: image made after"), "{text}");
    }

    #[test]
    fn the_list_is_bounded() {
        let kernels: Vec<_> = (0..MAX_READINESS + 5)
            .map(|i| summary(&format!("6.1.0-{i}"), ""))
            .collect();
        assert_eq!(kernel_readiness(None, &kernels, &at(0)).len(), MAX_READINESS);
    }
}
