//! The ManagedClusterPreflight controller: for every MCM selecting one of the preflight's
//! clusters and every kernel, the same verdict as `kmm-hub preflight` ([`verdict`]), and for an
//! image to make, the rollout's own Job pipeline ([`build`]): the same Job names and targets, so
//! a later rollout of the kernel finds the image and starts nothing. Without `pushBuiltImage`
//! a [`check_job`] proves the build instead. It never writes a ManifestWork. The hub's own
//! next-kernel preflight ([`generated`]) asks for the (MCM, kernel) pairs the clusters'
//! next-kernel claims name instead ([`asked`]).
//!
//! ```text
//! preflight ─▶ clusters (selector) ─▶ MCMs selecting them ─▶ per MCM: lookups ─▶ verdicts
//!   ─▶ missing images: jobs::ensure (push) or check_job::ensure ─▶ entries::status ─▶ patch
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kmm_api::{
    ManagedClusterModule,
    kernel::{KernelVars, grammar::check_kernel},
    ocm::ManagedCluster,
    preflight::{
        ManagedClusterPreflight, ManagedClusterPreflightStatus, PreflightModuleStatus,
        verification_status::FAILURE,
    },
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{controller::Action, reflector::Store},
};
use serde_json::json;
use tracing::{instrument, warn};

use super::{
    check_job,
    entries::{self, Making},
    generated, next_kernels,
    verdict::{self, Check, Verdict},
};
use crate::mcm_controller::{
    self, Error,
    build::{jobs, pins, plan},
    desired::{job::StepKind, plan::Pin},
    observe,
};

/// Shared by every preflight reconcile: the MCM controller's context (stores, resolver, Job
/// settings) and its MCM store.
pub struct Context {
    pub hub: Arc<mcm_controller::Context>,
    pub mcms: Store<DeserializeGuard<ManagedClusterModule>>,
}

/// Whether a preflight's `clusterSelector` picks `cluster` (absent or empty: every cluster).
pub fn picks(selector: Option<&BTreeMap<String, String>>, cluster: &ManagedCluster) -> bool {
    let labels = cluster.labels();
    selector
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
}

/// The MCMs to check (pure): those selecting at least one of `clusters`, by name.
pub fn mcms_for<'a>(
    mcms: &'a [Arc<ManagedClusterModule>],
    clusters: &[Arc<ManagedCluster>],
) -> Vec<&'a Arc<ManagedClusterModule>> {
    let mut out: Vec<_> = mcms
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .filter(|m| !observe::selected_clusters(m, clusters).is_empty())
        .collect();
    out.sort_by_key(|m| m.name_any());
    out
}

/// The kernels to check, trimmed and de-duplicated, and a reason for each unusable one.
pub fn kernels(asked: &[String]) -> (Vec<String>, Vec<(String, String)>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for k in asked {
        let k = kmm_api::kernel::trim_kernel(k.trim()).to_string();
        let usable = check_kernel(&k)
            .map_err(|e| e.to_string())
            .and_then(|()| KernelVars::new(&k).map(|_| ()).map_err(|e| e.to_string()));
        match usable {
            Ok(()) if !ok.contains(&k) => ok.push(k),
            Ok(()) => {}
            Err(why) => bad.push((k, format!("not a kernel version: {why}"))),
        }
    }
    (ok, bad)
}

/// One MCM's part of a preflight: the kernels to check, and the refused ones with why.
pub struct AskedMcm<'a> {
    pub mcm: &'a Arc<ManagedClusterModule>,
    pub kernels: Vec<String>,
    pub refused: Vec<(String, String)>,
}

/// What one preflight asks, by MCM name.
pub struct Asked<'a> {
    pub pairs: Vec<AskedMcm<'a>>,
    pub push: bool,
    /// The generated preflight's claim problems (`status.claimIssues`).
    pub issues: Vec<String>,
}

/// What `pf` asks (pure): a user's preflight, every kernel of its spec for every MCM selecting
/// one of its clusters; the generated one, the pairs the next-kernel claims ask for, pushed.
pub fn asked<'a>(
    pf: &ManagedClusterPreflight,
    all: &'a [Arc<ManagedClusterModule>],
    clusters: &[Arc<ManagedCluster>],
) -> Asked<'a> {
    if generated::is_generated(pf) {
        let plan = next_kernels::plan(all, clusters);
        let mut pairs: Vec<_> = all
            .iter()
            .filter_map(|m| {
                plan.pairs.get(&m.name_any()).map(|ks| AskedMcm {
                    mcm: m,
                    kernels: ks.clone(),
                    refused: Vec::new(),
                })
            })
            .collect();
        pairs.sort_by_key(|a| a.mcm.name_any());
        return Asked {
            pairs,
            push: true,
            issues: plan.issues,
        };
    }
    let clusters: Vec<Arc<ManagedCluster>> = clusters
        .iter()
        .filter(|c| picks(pf.spec.cluster_selector.as_ref(), c))
        .cloned()
        .collect();
    let (kernels, bad) = kernels(&pf.spec.kernel_versions);
    Asked {
        pairs: mcms_for(all, &clusters)
            .into_iter()
            .map(|mcm| AskedMcm {
                mcm,
                kernels: kernels.clone(),
                refused: bad.clone(),
            })
            .collect(),
        push: pf.spec.push_built_image,
        issues: Vec::new(),
    }
}

/// Reconciles one preflight; see the module docs.
#[instrument(skip_all)]
pub async fn reconcile(pf: Arc<ManagedClusterPreflight>, ctx: Arc<Context>) -> Result<Action, Error> {
    let hub = &ctx.hub;
    if !hub.leader.is_leader() {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let all: Vec<Arc<ManagedClusterModule>> = ctx
        .mcms
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok().cloned().map(Arc::new))
        .collect();
    let asked = asked(&pf, &all, &hub.clusters.state());
    let previous = pf.status.as_ref();
    let mut out = Vec::new();
    for AskedMcm {
        mcm,
        kernels,
        refused,
    } in &asked.pairs
    {
        let name = mcm.name_any();
        for (k, why) in refused {
            out.push(PreflightModuleStatus {
                name: name.clone(),
                kernel_version: k.clone(),
                verification_status: FAILURE.into(),
                verification_stage: "Image".into(),
                status_reason: why.clone(),
                ..Default::default()
            });
        }
        let before: BTreeMap<String, PreflightModuleStatus> = previous
            .iter()
            .flat_map(|p| &p.modules)
            .filter(|m| m.name == name)
            .map(|m| (m.kernel_version.clone(), m.clone()))
            .collect();
        out.extend(check_mcm(mcm, kernels, asked.push, hub, &before).await?);
    }
    let now = Time(Timestamp::now());
    let mut status = entries::status(pf.metadata.generation, out, previous, &now);
    status.claim_issues = asked.issues;
    let again = if entries::in_progress(&status) {
        hub.config.retry
    } else {
        hub.config.resync
    };
    if previous != Some(&status) {
        let api: Api<ManagedClusterPreflight> = Api::all(hub.client.clone());
        api.patch_status(
            &pf.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status_patch(&status) })),
        )
        .await
        .map_err(|source| Error::Api {
            what: format!("writing the status of ManagedClusterPreflight {}", pf.name_any()),
            source,
        })?;
    }
    Ok(Action::requeue(again))
}

/// The status as a merge patch: lists that became empty are cleared (an absent field would
/// leave the old list in place).
fn status_patch(status: &ManagedClusterPreflightStatus) -> serde_json::Value {
    let mut patch = serde_json::to_value(status).unwrap_or_default();
    if let Some(fields) = patch.as_object_mut() {
        for list in ["modules", "claimIssues"] {
            fields.entry(list).or_insert(serde_json::Value::Null);
        }
    }
    patch
}

/// Logs and looks again later.
pub fn error_policy(pf: Arc<ManagedClusterPreflight>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(preflight = %pf.name_any(), %error, "preflight reconcile failed");
    error
        .retry_after()
        .map_or_else(Action::await_change, Action::requeue)
}

/// Every kernel's entry for one MCM: registry lookups, verdicts, then Jobs for what is missing.
async fn check_mcm(
    mcm: &ManagedClusterModule,
    kernels: &[String],
    push: bool,
    hub: &mcm_controller::Context,
    before: &BTreeMap<String, PreflightModuleStatus>,
) -> Result<Vec<PreflightModuleStatus>, Error> {
    let auth = observe::pull_auth(mcm, hub).await;
    // Two rounds, as the rollout: the images, then what a sign step of a missing one reads.
    let mut pins: BTreeMap<String, Pin> = BTreeMap::new();
    for _ in 0..2 {
        let images: BTreeSet<_> = verdict::lookups(mcm, kernels, &pins)
            .into_iter()
            .filter(|i| !pins.contains_key(&i.image))
            .collect();
        pins.extend(observe::resolve(&hub.resolver, images, &auth).await);
    }
    let checks = verdict::check_all(mcm, kernels, &pins);
    let to_make: Vec<String> = checks
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::NeedsBuild | Verdict::NeedsSign))
        .map(|c| c.kernel.clone())
        .collect();
    let making = if to_make.is_empty() {
        BTreeMap::new()
    } else if push {
        make(mcm, hub, &to_make, &pins).await?
    } else {
        prove(mcm, hub, &to_make, &pins, before).await?
    };
    let name = mcm.name_any();
    Ok(checks
        .iter()
        .map(|c| entries::entry(&name, c, image_of(mcm, c).and_then(|i| making.get(&i))))
        .collect())
}

/// The image a kernel's check is about (the one the rollout would pull).
fn image_of(mcm: &ManagedClusterModule, check: &Check) -> Option<String> {
    crate::mcm_controller::desired::job::resolve(mcm, &check.kernel).map(|r| r.container_image)
}

/// The planned steps of the kernels to make: exactly the rollout's plan.
async fn planned(
    mcm: &ManagedClusterModule,
    hub: &mcm_controller::Context,
    kernels: &[String],
    pins: &BTreeMap<String, Pin>,
) -> Vec<plan::PlannedStep> {
    let missing = plan::missing(mcm, kernels, pins);
    let intermediates = plan::intermediates(mcm, &missing);
    let mut known = pins.clone();
    if !intermediates.is_empty() {
        known.extend(observe::resolve(&hub.resolver, intermediates, &Ok(None)).await);
    }
    plan::steps(mcm, &missing, &known)
}

/// With pushBuiltImage: the rollout's own Jobs (same names, same targets), read back as the
/// pins the rollout would lay over its lookups.
async fn make(
    mcm: &ManagedClusterModule,
    hub: &mcm_controller::Context,
    kernels: &[String],
    pins: &BTreeMap<String, Pin>,
) -> Result<BTreeMap<String, Making>, Error> {
    let steps = planned(mcm, hub, kernels, pins).await;
    let states = jobs::ensure(mcm, hub, steps).await?;
    Ok(pins::pins(&hub.config.namespace, &states)
        .into_iter()
        .filter_map(|(image, pin)| match pin {
            Pin::Blocked(b) => Some((image, entries::from_blocker(&b))),
            _ => None,
        })
        .collect())
}

/// Without pushBuiltImage: a check build per build step; sign steps are not run (the signer
/// pushes). A check remembered as succeeded is not built again once its Job is collected.
async fn prove(
    mcm: &ManagedClusterModule,
    hub: &mcm_controller::Context,
    kernels: &[String],
    pins: &BTreeMap<String, Pin>,
    before: &BTreeMap<String, PreflightModuleStatus>,
) -> Result<BTreeMap<String, Making>, Error> {
    let ns = &hub.config.namespace;
    let mut started = 0;
    let mut out = BTreeMap::new();
    for step in planned(mcm, hub, kernels, pins).await {
        if step.step.kind() != StepKind::Build {
            continue;
        }
        let job = check_job::name(&step);
        let making = if entries::compiled_before(before.get(step.step.kernel()), ns, &job) {
            Making::Compiled(entries::compiled_reason(ns, &job))
        } else {
            entries::from_check(ns, &job, &check_job::ensure(mcm, hub, &step, &mut started).await?)
        };
        out.insert(step.waits.clone(), making);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{mk_cluster, mk_mcm};

    #[test]
    fn the_selector_picks_clusters_and_its_absence_picks_all() {
        let a = mk_cluster("a", &[("env", "prod")], None);
        let b = mk_cluster("b", &[("env", "lab")], None);
        let prod = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        assert!(picks(Some(&prod), &a));
        assert!(!picks(Some(&prod), &b));
        assert!(picks(None, &b));
        assert!(picks(Some(&BTreeMap::new()), &b));
    }

    #[test]
    fn only_mcms_selecting_a_picked_cluster_are_checked() {
        let mcm = |name: &str, selector: &str| {
            Arc::new(mk_mcm(&format!(
                "metadata: {{name: {name}}}\nspec:\n  spokeNamespace: ns\n  selector: {selector}\n  moduleSpec:\n    selector: {{}}\n    moduleLoader:\n      container:\n        modprobe: {{moduleName: m}}\n        kernelMappings: [{{regexp: '^.+$', containerImage: 'r/k:${{KERNEL_FULL_VERSION}}'}}]\n"
            )))
        };
        let mcms = [
            mcm("lab", "{env: lab}"),
            mcm("all", "{}"),
            mcm("prod", "{env: prod}"),
        ];
        let clusters = [Arc::new(mk_cluster("a", &[("env", "prod")], None))];
        let names: Vec<_> = mcms_for(&mcms, &clusters).iter().map(|m| m.name_any()).collect();
        assert_eq!(names, ["all", "prod"]);
    }

    /// The generated preflight asks the pairs the claims name (pushed), whatever its spec says;
    /// a user's preflight of other kernels asks every selecting MCM for its own kernels.
    #[test]
    fn the_generated_preflight_asks_what_the_claims_ask() {
        use kmm_api::{
            claims::NEXT_KERNEL_VERSIONS_CLAIM,
            ocm::ManagedClusterClaim,
            preflight::{GENERATED_FROM_NEXT_KERNELS, GENERATED_LABEL, ManagedClusterPreflightSpec},
        };
        let mcm = |name: &str, selector: &str| {
            Arc::new(mk_mcm(&format!(
                "metadata: {{name: {name}}}\nspec:\n  spokeNamespace: ns\n  selector: {selector}\n  moduleSpec:\n    selector: {{}}\n    moduleLoader:\n      container:\n        modprobe: {{moduleName: m}}\n        kernelMappings: [{{regexp: '^.+$', containerImage: 'r/k:${{KERNEL_FULL_VERSION}}'}}]\n"
            )))
        };
        let mcms = [mcm("prod", "{env: prod}"), mcm("lab", "{env: lab}")];
        let mut a = mk_cluster("a", &[("env", "prod")], Some("6.1.0-18"));
        a.status
            .as_mut()
            .unwrap()
            .cluster_claims
            .push(ManagedClusterClaim {
                name: NEXT_KERNEL_VERSIONS_CLAIM.into(),
                value: "6.1.0-29".into(),
            });
        let clusters = [
            Arc::new(a),
            Arc::new(mk_cluster("b", &[("env", "lab")], Some("6.1.0-18"))),
        ];
        let spec = ManagedClusterPreflightSpec {
            kernel_versions: vec!["7.0.0-1".into()],
            cluster_selector: None,
            push_built_image: false,
        };
        let mut pf = ManagedClusterPreflight::new(kmm_api::preflight::NEXT_KERNELS_PREFLIGHT, spec);
        let users = asked(&pf, &mcms, &clusters);
        let got: Vec<_> = users
            .pairs
            .iter()
            .map(|p| (p.mcm.name_any(), p.kernels.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("lab".into(), vec!["7.0.0-1".to_string()]),
                ("prod".into(), vec!["7.0.0-1".to_string()])
            ]
        );
        assert!(!users.push);

        pf.labels_mut()
            .insert(GENERATED_LABEL.into(), GENERATED_FROM_NEXT_KERNELS.into());
        let generated = asked(&pf, &mcms, &clusters);
        let got: Vec<_> = generated
            .pairs
            .iter()
            .map(|p| (p.mcm.name_any(), p.kernels.clone()))
            .collect();
        assert_eq!(got, [("prod".to_string(), vec!["6.1.0-29".to_string()])]);
        assert!(generated.push, "what it builds, the rollout pins");
    }

    #[test]
    fn kernels_are_trimmed_checked_and_deduplicated() {
        let (ok, bad) = kernels(&[
            "6.1.0-22-amd64+".into(),
            "6.1.0-22-amd64".into(),
            "6.1/../x".into(),
        ]);
        assert_eq!(ok, ["6.1.0-22-amd64"]);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].1.starts_with("not a kernel version"), "{:?}", bad);
    }
}
