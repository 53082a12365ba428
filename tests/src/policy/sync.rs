//! A STAND-IN for the spec and template sync of OCM's policy framework addon, which the Go module
//! proxy does not serve here (`open-cluster-management.io/governance-policy-framework-addon`).
//! It is plumbing only, no policy engine: it copies each replicated Policy the real propagator
//! put in the cluster's namespace on the hub to the same namespace on the managed cluster, creates
//! the ConfigurationPolicies of its `policy-templates` there, owned by that Policy, and deletes a
//! copy whose hub Policy is gone (the garbage collector then deletes its ConfigurationPolicies,
//! and the real configuration policy controller prunes what they created). Evaluation,
//! enforcement and pruning are all the real controller's.
//!
//! Not done, unlike the addon: Policy status back to the hub (status sync), policy
//! `dependencies`, hub templates, and non-ConfigurationPolicy templates.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context;
use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

use super::{POLICY_GROUP, configuration_policy_resource, policy_resource};

/// Field manager of what the stand-in writes on the managed cluster.
pub const SYNC_MANAGER: &str = "kmm-fleet-tests-policy-sync";

/// The managed cluster's copy of a replicated hub Policy: its spec, labels and annotations, in
/// the cluster's namespace, without status.
pub fn spoke_policy(hub_policy: &Value, namespace: &str) -> anyhow::Result<Value> {
    let name = hub_policy["metadata"]["name"]
        .as_str()
        .context("the Policy has a name")?;
    let mut metadata = json!({"name": name, "namespace": namespace});
    for key in ["labels", "annotations"] {
        if let Some(map) = hub_policy["metadata"].get(key) {
            metadata[key] = map.clone();
        }
    }
    Ok(json!({
        "apiVersion": format!("{POLICY_GROUP}/v1"),
        "kind": "Policy",
        "metadata": metadata,
        "spec": hub_policy["spec"].clone(),
    }))
}

/// The ConfigurationPolicies of `policy`'s templates, in `namespace`, owned by the Policy with
/// `uid` (so deleting the Policy deletes them); the Policy's `remediationAction`, when set,
/// overrides each template's, as the framework documents. Other template kinds are skipped.
pub fn templates(policy: &Value, namespace: &str, uid: &str) -> anyhow::Result<Vec<Value>> {
    let name = policy["metadata"]["name"]
        .as_str()
        .context("the Policy has a name")?;
    let action = policy["spec"]["remediationAction"].as_str();
    let mut out = Vec::new();
    for template in policy["spec"]["policy-templates"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let mut obj = template["objectDefinition"].clone();
        if obj["kind"] != "ConfigurationPolicy" {
            continue;
        }
        obj["metadata"]["namespace"] = json!(namespace);
        obj["metadata"]["ownerReferences"] = json!([{
            "apiVersion": format!("{POLICY_GROUP}/v1"),
            "kind": "Policy",
            "name": name,
            "uid": uid,
            "controller": true,
            "blockOwnerDeletion": false,
        }]);
        if let Some(action) = action {
            obj["spec"]["remediationAction"] = json!(action);
        }
        out.push(obj);
    }
    Ok(out)
}

/// The sync loop for one managed cluster; aborted on drop.
pub struct SyncTask(tokio::task::JoinHandle<()>);

impl Drop for SyncTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SyncTask {
    /// Syncs `cluster`'s namespace from `hub` to `spoke` every second until dropped. A failed
    /// round is logged and retried.
    pub fn start(hub: Client, spoke: Client, cluster: &str) -> Self {
        let cluster = cluster.to_owned();
        Self(tokio::spawn(async move {
            let mut applied = BTreeMap::new();
            loop {
                if let Err(e) = round(&hub, &spoke, &cluster, &mut applied).await {
                    tracing::warn!(cluster, error = %format!("{e:#}"), "policy sync stand-in");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }
}

/// One pass: apply the copies whose hub Policy changed (`applied` remembers the hub
/// resourceVersion last copied, so an unchanged 500 kB Policy is not re-sent), delete the copies
/// whose hub Policy is gone.
async fn round(
    hub: &Client,
    spoke: &Client,
    cluster: &str,
    applied: &mut BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let hub_policies = Api::<DynamicObject>::namespaced_with(hub.clone(), cluster, &policy_resource());
    let spoke_policies = Api::<DynamicObject>::namespaced_with(spoke.clone(), cluster, &policy_resource());
    let spoke_templates =
        Api::<DynamicObject>::namespaced_with(spoke.clone(), cluster, &configuration_policy_resource());
    let params = PatchParams::apply(SYNC_MANAGER).force();
    let mut on_hub = Vec::new();
    for p in hub_policies.list(&ListParams::default()).await? {
        let name = p.metadata.name.clone().context("a Policy has a name")?;
        let version = p.metadata.resource_version.clone().unwrap_or_default();
        on_hub.push(name.clone());
        if applied.get(&name) == Some(&version) {
            continue;
        }
        let copy = spoke_policy(&serde_json::to_value(&p)?, cluster)?;
        let stored = spoke_policies.patch(&name, &params, &Patch::Apply(&copy)).await?;
        let uid = stored.metadata.uid.context("a stored Policy has a uid")?;
        for t in templates(&copy, cluster, &uid)? {
            let t_name = t["metadata"]["name"]
                .as_str()
                .context("a template has a name")?
                .to_owned();
            spoke_templates
                .patch(&t_name, &params, &Patch::Apply(&t))
                .await
                .with_context(|| format!("template {t_name} of {name}"))?;
        }
        applied.insert(name, version);
    }
    for p in spoke_policies.list(&ListParams::default()).await? {
        let name = p.metadata.name.clone().unwrap_or_default();
        if !on_hub.contains(&name) {
            spoke_policies.delete(&name, &DeleteParams::background()).await?;
            applied.remove(&name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicated() -> Value {
        json!({
            "metadata": {"name": "kmm-policies.kmm-spoke", "namespace": "spoke-a",
                         "labels": {"policy.open-cluster-management.io/cluster-name": "spoke-a"},
                         "resourceVersion": "7", "uid": "hub-uid"},
            "spec": {"remediationAction": "enforce", "policy-templates": [
                {"objectDefinition": {"apiVersion": "policy.open-cluster-management.io/v1",
                    "kind": "ConfigurationPolicy", "metadata": {"name": "kmm-spoke"},
                    "spec": {"remediationAction": "inform", "pruneObjectBehavior": "DeleteIfCreated"}}},
                {"objectDefinition": {"apiVersion": "policy.open-cluster-management.io/v1beta1",
                    "kind": "OperatorPolicy", "metadata": {"name": "skipped"}}}
            ]},
            "status": {"compliant": "NonCompliant"}
        })
    }

    #[test]
    fn the_copy_keeps_spec_and_labels_but_not_status_or_hub_identity() {
        let copy = spoke_policy(&replicated(), "spoke-a").unwrap();
        assert_eq!(copy["metadata"]["name"], "kmm-policies.kmm-spoke");
        assert_eq!(copy["metadata"]["namespace"], "spoke-a");
        assert_eq!(
            copy["metadata"]["labels"]["policy.open-cluster-management.io/cluster-name"],
            "spoke-a"
        );
        assert!(copy.get("status").is_none());
        assert!(copy["metadata"].get("uid").is_none());
        assert!(copy["metadata"].get("resourceVersion").is_none());
        assert_eq!(copy["spec"], replicated()["spec"]);
    }

    #[test]
    fn templates_are_owned_by_the_copy_and_take_its_remediation_action() {
        let copy = spoke_policy(&replicated(), "spoke-a").unwrap();
        let out = templates(&copy, "spoke-a", "spoke-uid").unwrap();
        assert_eq!(out.len(), 1, "only ConfigurationPolicies: {out:?}");
        let t = &out[0];
        assert_eq!(t["metadata"]["namespace"], "spoke-a");
        assert_eq!(t["metadata"]["ownerReferences"][0]["uid"], "spoke-uid");
        assert_eq!(
            t["metadata"]["ownerReferences"][0]["name"],
            "kmm-policies.kmm-spoke"
        );
        assert_eq!(t["spec"]["remediationAction"], "enforce");
        assert_eq!(t["spec"]["pruneObjectBehavior"], "DeleteIfCreated");
    }

    #[test]
    fn a_policy_without_an_action_leaves_the_templates_own() {
        let mut p = replicated();
        p["spec"].as_object_mut().unwrap().remove("remediationAction");
        let out = templates(&p, "spoke-a", "u").unwrap();
        assert_eq!(out[0]["spec"]["remediationAction"], "inform");
    }
}
