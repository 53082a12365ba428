//! Choosing a revision to render (pure), for `kmm-hub render --revision`: the MCM as it was at
//! the target, the previous revision, or any stored one named by its hash, from the MCM (with
//! its `status.rollout`) and the ControllerRevisions the hub keeps.

use k8s_openapi::api::apps::v1::ControllerRevision;
use kmm_api::{ManagedClusterModule, labels::MCM_NAME_LABEL};
use kube::ResourceExt;

use super::revision::{self, Content};

/// `target`, `previous`, a 10-digit hash, or a ControllerRevision's name (`<mcm>-<hash>`).
pub fn wanted_hash(mcm: &ManagedClusterModule, wanted: &str) -> Result<String, String> {
    let rollout = mcm.status.as_ref().and_then(|s| s.rollout.as_ref());
    match wanted {
        // Without a status (a file written by hand), the target is what the spec says.
        "target" => Ok(rollout
            .map(|r| r.target_revision.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| Content::of(mcm).hash())),
        "previous" => rollout
            .map(|r| r.previous_revision.clone())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                format!(
                    "{} names no previous revision in status.rollout (no cluster is on another revision)",
                    mcm.name_any()
                )
            }),
        other => {
            let hash = other
                .strip_prefix(&format!("{}-", mcm.name_any()))
                .unwrap_or(other);
            if hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(hash.to_ascii_lowercase())
            } else {
                Err(format!(
                    "--revision {other:?}: expected target, previous, a 10-digit revision hash or <mcm>-<hash>"
                ))
            }
        }
    }
}

/// `mcm` as it was at revision `wanted`: itself when its spec is that revision, else the content
/// of the stored ControllerRevision of that hash (the MCM's own, by label) laid over it.
pub fn at_revision(
    mcm: &ManagedClusterModule,
    wanted: &str,
    stored: &[ControllerRevision],
) -> Result<ManagedClusterModule, String> {
    let hash = wanted_hash(mcm, wanted)?;
    let own = Content::of(mcm);
    if own.hash() == hash {
        return Ok(mcm.clone());
    }
    let name = mcm.name_any();
    let mine: Vec<(String, Content)> = stored
        .iter()
        .filter(|cr| cr.labels().get(MCM_NAME_LABEL) == Some(&name))
        .filter_map(revision::read)
        .collect();
    match mine.iter().find(|(h, _)| *h == hash) {
        Some((_, content)) => Ok(content.apply_to(mcm)),
        None => {
            let mut known: Vec<String> = mine.iter().map(|(h, _)| h.clone()).collect();
            known.push(own.hash());
            known.sort_unstable();
            known.dedup();
            Err(format!(
                "revision {hash} of {name} is not stored (known: {})",
                known.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use kmm_api::mcm::RolloutStatus;

    use super::*;
    use crate::fixtures;

    fn mcm(image: &str) -> ManagedClusterModule {
        fixtures::mcm_with_image(image)
    }

    fn image(m: &ManagedClusterModule) -> String {
        m.spec
            .module_spec
            .module_loader
            .as_ref()
            .and_then(|l| l.container.kernel_mappings.first())
            .and_then(|k| k.container_image.clone())
            .unwrap_or_default()
    }

    /// The MCM at `r/k:2`, mid-rollout from `r/k:1`, and the hub's stored revisions.
    fn mid_rollout() -> (ManagedClusterModule, Vec<ControllerRevision>, String) {
        let old = Content::of(&mcm("r/k:1"));
        let mut now = mcm("r/k:2");
        let target = Content::of(&now).hash();
        now.status = Some(kmm_api::ManagedClusterModuleStatus {
            rollout: Some(RolloutStatus {
                target_revision: target.clone(),
                previous_revision: old.hash(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let stored = vec![
            revision::controller_revision(&mcm("r/k:1"), "hub", &old, 1).unwrap(),
            revision::controller_revision(&now, "hub", &Content::of(&now), 2).unwrap(),
        ];
        (now, stored, old.hash())
    }

    #[test]
    fn target_and_previous_come_from_the_rollout_status() {
        let (now, stored, old) = mid_rollout();
        assert_eq!(image(&at_revision(&now, "target", &stored).unwrap()), "r/k:2");
        assert_eq!(image(&at_revision(&now, "previous", &stored).unwrap()), "r/k:1");
        assert_eq!(image(&at_revision(&now, &old, &stored).unwrap()), "r/k:1");
        assert_eq!(
            image(&at_revision(&now, &format!("m-{old}"), &stored).unwrap()),
            "r/k:1",
            "a ControllerRevision's name works too"
        );
        let back = at_revision(&now, "previous", &stored).unwrap();
        assert_eq!(back.spec.selector, now.spec.selector, "only the module changes");
    }

    #[test]
    fn a_revision_not_stored_or_of_another_mcm_is_a_clear_error() {
        let (now, stored, old) = mid_rollout();
        let err = at_revision(&now, "0123456789", &stored).unwrap_err();
        assert!(err.contains("revision 0123456789 of m is not stored"), "{err}");
        assert!(err.contains(&old), "{err}");
        let mut theirs = stored.clone();
        for cr in &mut theirs {
            cr.labels_mut().insert(MCM_NAME_LABEL.into(), "another".into());
        }
        assert!(
            at_revision(&now, &old, &theirs).is_err(),
            "another MCM's revision is not this one's"
        );
        assert!(
            at_revision(&now, "v2", &stored)
                .unwrap_err()
                .contains("expected target, previous")
        );
    }

    #[test]
    fn without_a_status_target_is_the_spec_and_previous_is_an_error() {
        let plain = mcm("r/k:3");
        assert_eq!(image(&at_revision(&plain, "target", &[]).unwrap()), "r/k:3");
        assert!(
            at_revision(&plain, "previous", &[])
                .unwrap_err()
                .contains("names no previous revision")
        );
    }
}
