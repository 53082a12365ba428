//! Stand-in for the OCM klusterlet work agent of one spoke.
//!
//! It watches the ManifestWorks in the hub namespace named after the cluster, applies their
//! manifests to the spoke, deletes what a work no longer holds, and reports per-object state and
//! status feedback back to the work's status subresource.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kmm_api::ocm::{
    FeedbackRule, ManifestCondition, ManifestConfigOption, ManifestResourceMeta, ManifestResourceStatus,
    ManifestWork, ManifestWorkStatus, StatusFeedbackResult, UpdateStrategy,
};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::discovery::{self, Scope};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::conditions::{condition, merge_conditions};
use crate::feedback;
use crate::handle::AgentHandle;
use crate::util::{Backoff, is_not_found, is_subset, spawn_trigger, wait};

/// Finalizer the agent keeps on a work until its spoke objects are gone.
pub const WORK_FINALIZER: &str = "cluster.open-cluster-management.io/manifest-work-cleanup";
/// Field manager used for server-side apply when the work names none.
pub const DEFAULT_FIELD_MANAGER: &str = "work-agent";

/// Settings of a [`WorkAgent`].
#[derive(Debug, Clone)]
pub struct WorkAgentOptions {
    /// How often spoke objects are re-read for availability and feedback; default 200 ms.
    pub status_sync_interval: Duration,
    /// How long after a failed apply it is tried again; default 1 s.
    pub retry_interval: Duration,
    /// How often manifests are re-applied without a spec change (drift repair); default 60 s.
    pub resync_interval: Duration,
}

impl Default for WorkAgentOptions {
    fn default() -> Self {
        Self {
            status_sync_interval: Duration::from_millis(200),
            retry_interval: Duration::from_secs(1),
            resync_interval: Duration::from_secs(60),
        }
    }
}

/// The OCM work agent stand-in.
#[derive(Debug)]
pub struct WorkAgent;

impl WorkAgent {
    /// Starts the agent for the spoke `cluster`: works are read from the hub namespace `cluster`.
    pub fn spawn(hub: Client, spoke: Client, cluster: &str, opts: WorkAgentOptions) -> AgentHandle {
        let notify = Arc::new(Notify::new());
        let works = Api::<ManifestWork>::namespaced(hub.clone(), cluster);
        let trigger = spawn_trigger(
            works.clone(),
            watcher::Config::default(),
            notify.clone(),
            "manifestworks",
        );
        let cluster = cluster.to_string();
        let main = tokio::spawn(async move {
            let raw_works = Api::namespaced_with(
                works.clone().into_client(),
                &cluster,
                &ApiResource::erase::<ManifestWork>(&()),
            );
            let mut agent = Agent {
                works,
                raw_works,
                spoke,
                cluster,
                opts,
                kinds: HashMap::new(),
                states: HashMap::new(),
            };
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                match agent.pass().await {
                    Ok(()) => {
                        backoff.reset();
                        wait(&notify, agent.opts.status_sync_interval).await;
                    }
                    Err(e) => {
                        tracing::warn!(cluster = %agent.cluster, error = %e, "listing ManifestWorks failed");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        });
        AgentHandle::new(vec![main, trigger])
    }
}

/// A spoke object a work wrote, enough to find it again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ObjKey {
    group: String,
    version: String,
    kind: String,
    plural: String,
    namespace: String,
    name: String,
}

impl ObjKey {
    fn api(&self, client: &Client) -> Api<DynamicObject> {
        let ar = ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: if self.group.is_empty() {
                self.version.clone()
            } else {
                format!("{}/{}", self.group, self.version)
            },
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        };
        if self.namespace.is_empty() {
            Api::all_with(client.clone(), &ar)
        } else {
            Api::namespaced_with(client.clone(), &self.namespace, &ar)
        }
    }

    fn meta(&self, ordinal: i32) -> ManifestResourceMeta {
        ManifestResourceMeta {
            ordinal,
            group: Some(self.group.clone()),
            version: Some(self.version.clone()),
            kind: Some(self.kind.clone()),
            resource: Some(self.plural.clone()),
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
        }
    }

    fn from_meta(m: &ManifestResourceMeta) -> Option<Self> {
        Some(Self {
            group: m.group.clone().unwrap_or_default(),
            version: m.version.clone().filter(|v| !v.is_empty())?,
            kind: m.kind.clone().filter(|v| !v.is_empty())?,
            plural: m.resource.clone().filter(|v| !v.is_empty())?,
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().filter(|v| !v.is_empty())?,
        })
    }
}

/// The outcome of applying one manifest.
#[derive(Debug, Clone)]
struct Applied {
    meta: ManifestResourceMeta,
    key: Option<ObjKey>,
    result: Result<(), String>,
    read_only: bool,
    feedback_rules: Vec<FeedbackRule>,
}

/// What the agent remembers about one work between passes.
#[derive(Debug)]
struct WorkState {
    generation: Option<i64>,
    last_apply: Instant,
    results: Vec<Applied>,
    /// Objects written by this work that must be deleted when they leave it or the work goes.
    owned: HashSet<ObjKey>,
}

struct Agent {
    works: Api<ManifestWork>,
    raw_works: Api<DynamicObject>,
    spoke: Client,
    cluster: String,
    opts: WorkAgentOptions,
    kinds: HashMap<(String, String, String), (String, bool)>,
    states: HashMap<String, WorkState>,
}

impl Agent {
    async fn pass(&mut self) -> Result<(), kube::Error> {
        let list = self.raw_works.list(&Default::default()).await?;
        let mut seen = HashSet::new();
        for obj in list.items {
            let raw = serde_json::to_value(&obj).unwrap_or_default();
            let name = obj.name_any();
            let work: ManifestWork = match serde_json::from_value(raw.clone()) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(cluster = %self.cluster, work = %name, error = %e, "unreadable ManifestWork");
                    continue;
                }
            };
            seen.insert(work.uid().unwrap_or_default());
            if let Err(e) = self.reconcile(work, &raw).await {
                tracing::warn!(cluster = %self.cluster, work = %name, error = %e, "ManifestWork sync failed");
            }
        }
        self.states.retain(|uid, _| seen.contains(uid));
        Ok(())
    }

    async fn reconcile(&mut self, work: ManifestWork, raw: &Value) -> Result<(), kube::Error> {
        let uid = work.uid().unwrap_or_default();
        if work.metadata.deletion_timestamp.is_some() {
            return self.delete_work(work, raw, &uid).await;
        }
        let work = self.ensure_finalizer(work).await?;
        let generation = work.metadata.generation;
        let state = self.states.entry(uid.clone()).or_insert_with(|| WorkState {
            generation: None,
            last_apply: Instant::now(),
            results: Vec::new(),
            owned: owned_from_status(&work),
        });
        let failed = state.results.iter().any(|r| r.result.is_err());
        let due = state.generation != generation
            || (failed && state.last_apply.elapsed() >= self.opts.retry_interval)
            || state.last_apply.elapsed() >= self.opts.resync_interval;
        if due {
            let results = self.apply_all(&work).await;
            // Every object the work still names, whatever its strategy: switching a manifest to
            // ReadOnly must not delete it.
            let present: HashSet<ObjKey> = results.iter().filter_map(|r| r.key.clone()).collect();
            // A manifest whose object could not be identified (discovery failed) might be any
            // of the old ones, so nothing is deleted until every manifest is identified.
            let all_identified = results.iter().all(|r| r.key.is_some());
            let previous = self.states.get(&uid).map(|s| s.owned.clone()).unwrap_or_default();
            let mut owned: HashSet<ObjKey> = results
                .iter()
                .filter(|r| !r.read_only)
                .filter_map(|r| r.key.clone())
                .collect();
            for gone in previous.iter().filter(|k| !present.contains(*k)) {
                if !all_identified {
                    owned.insert(gone.clone());
                    continue;
                }
                match gone
                    .api(&self.spoke)
                    .delete(&gone.name, &DeleteParams::foreground())
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => {
                        tracing::warn!(work = %work.name_any(), object = %gone.name, error = %e, "delete failed");
                        owned.insert(gone.clone());
                    }
                }
            }
            let state = WorkState {
                generation,
                last_apply: Instant::now(),
                results,
                owned,
            };
            self.states.insert(uid.clone(), state);
        }
        let Some(state) = self.states.get(&uid) else {
            return Ok(());
        };
        let status = self.status(&work, &state.results).await;
        self.write_status(&work, status).await
    }

    async fn ensure_finalizer(&self, work: ManifestWork) -> Result<ManifestWork, kube::Error> {
        if work.finalizers().iter().any(|f| f == WORK_FINALIZER) {
            return Ok(work);
        }
        let mut finalizers = work.finalizers().to_vec();
        finalizers.push(WORK_FINALIZER.to_string());
        let patch =
            json!({"metadata": {"finalizers": finalizers, "resourceVersion": work.resource_version()}});
        self.works
            .patch(&work.name_any(), &agent_params(), &Patch::Merge(&patch))
            .await
    }

    async fn apply_all(&mut self, work: &ManifestWork) -> Vec<Applied> {
        let manifests = &work.spec.workload.manifests;
        let mut order: Vec<usize> = (0..manifests.len()).collect();
        order.sort_by_key(|&i| {
            kind_rank(
                manifests[i]
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            )
        });
        let mut results: Vec<Option<Applied>> = vec![None; manifests.len()];
        for i in order {
            let applied = self
                .apply_one(i, &manifests[i], &work.spec.manifest_configs)
                .await;
            results[i] = Some(applied);
        }
        results.into_iter().flatten().collect()
    }

    async fn resolve(&mut self, api_version: &str, kind: &str) -> Result<(String, bool), String> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let cache_key = (group.to_string(), version.to_string(), kind.to_string());
        if let Some(hit) = self.kinds.get(&cache_key) {
            return Ok(hit.clone());
        }
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = discovery::pinned_kind(&self.spoke, &gvk)
            .await
            .map_err(|e| format!("the spoke does not serve {api_version} {kind}: {e}"))?;
        let hit = (ar.plural, caps.scope == Scope::Namespaced);
        self.kinds.insert(cache_key, hit.clone());
        Ok(hit)
    }

    async fn apply_one(
        &mut self,
        ordinal: usize,
        manifest: &Value,
        configs: &[ManifestConfigOption],
    ) -> Applied {
        let ordinal_i32 = i32::try_from(ordinal).unwrap_or(i32::MAX);
        let str_at = |v: &Value, p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let api_version = str_at(manifest, "/apiVersion");
        let kind = str_at(manifest, "/kind");
        let name = str_at(manifest, "/metadata/name");
        let mut namespace = str_at(manifest, "/metadata/namespace");
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.clone()),
        };
        let mut out = Applied {
            meta: ManifestResourceMeta {
                ordinal: ordinal_i32,
                group: Some(group.clone()),
                version: Some(version.clone()),
                kind: Some(kind.clone()),
                resource: None,
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
            },
            key: None,
            result: Ok(()),
            read_only: false,
            feedback_rules: Vec::new(),
        };
        if api_version.is_empty() || kind.is_empty() || name.is_empty() {
            out.result = Err("the manifest needs apiVersion, kind and metadata.name".into());
            return out;
        }
        let (plural, namespaced) = match self.resolve(&api_version, &kind).await {
            Ok(r) => r,
            Err(e) => {
                out.result = Err(e);
                return out;
            }
        };
        if !namespaced {
            namespace.clear();
        } else if namespace.is_empty() {
            out.result = Err(format!(
                "{kind} {name} is namespaced but the manifest has no metadata.namespace"
            ));
            return out;
        }
        let key = ObjKey {
            group,
            version,
            kind,
            plural,
            namespace,
            name,
        };
        out.meta = key.meta(ordinal_i32);
        out.key = Some(key.clone());

        let (strategy, rules) = config_for(configs, &key);
        out.feedback_rules = rules;
        let strategy_type = strategy.as_ref().map_or("Update", |s| s.type_.as_str());
        out.read_only = strategy_type == "ReadOnly";
        let desired = clean_manifest(manifest, namespaced);
        let api = key.api(&self.spoke);
        out.result = match strategy_type {
            "ReadOnly" => Ok(()),
            "CreateOnly" => create_only(&api, &key.name, &desired).await,
            "ServerSideApply" => {
                let ssa = strategy.and_then(|s| s.server_side_apply).unwrap_or_default();
                let manager = ssa.field_manager.filter(|m| !m.is_empty());
                let mut pp = PatchParams::apply(manager.as_deref().unwrap_or(DEFAULT_FIELD_MANAGER));
                if ssa.force {
                    pp = pp.force();
                }
                api.patch(&key.name, &pp, &Patch::Apply(&desired))
                    .await
                    .map(|_| ())
                    .map_err(error_text)
            }
            "Update" => update(&api, &key.name, &desired).await,
            other => Err(format!("unknown update strategy {other:?}")),
        };
        out
    }

    /// Reads every object back and builds the status the work should have.
    async fn status(&self, work: &ManifestWork, results: &[Applied]) -> ManifestWorkStatus {
        let old = work.status.clone().unwrap_or_default();
        let old_manifests = old
            .resource_status
            .as_ref()
            .map(|r| r.manifests.as_slice())
            .unwrap_or_default();
        let generation = work.metadata.generation;
        let mut manifests = Vec::with_capacity(results.len());
        let (mut available, mut unavailable, mut unknown) = (0usize, 0usize, 0usize);
        for r in results {
            let mut conds = Vec::new();
            let mut applied_cond = match &r.result {
                Ok(()) => condition(
                    "Applied",
                    true,
                    "AppliedManifestComplete",
                    "Apply manifest complete",
                ),
                Err(e) => condition(
                    "Applied",
                    false,
                    "AppliedManifestFailed",
                    format!("Failed to apply manifest: {e}"),
                ),
            };
            applied_cond.observed_generation = generation;
            conds.push(applied_cond);
            let live = match &r.key {
                None => {
                    unknown += 1;
                    conds.push(condition_str(
                        "Available",
                        "Unknown",
                        "IncompleteResourceMeta",
                        "Resource meta is incomplete",
                    ));
                    None
                }
                Some(key) => match key.api(&self.spoke).get_opt(&key.name).await {
                    Ok(Some(obj)) => {
                        available += 1;
                        conds.push(condition(
                            "Available",
                            true,
                            "ResourceAvailable",
                            "Resource is available",
                        ));
                        serde_json::to_value(&obj).ok()
                    }
                    Ok(None) => {
                        unavailable += 1;
                        conds.push(condition(
                            "Available",
                            false,
                            "ResourceNotAvailable",
                            "Resource is not available",
                        ));
                        None
                    }
                    Err(e) => {
                        unknown += 1;
                        conds.push(condition_str(
                            "Available",
                            "Unknown",
                            "FetchingResourceFailed",
                            &error_text(e),
                        ));
                        None
                    }
                },
            };
            let mut status_feedback = None;
            if !r.feedback_rules.is_empty() {
                let fb = live
                    .as_ref()
                    .map(|o| feedback::evaluate(o, &r.feedback_rules))
                    .unwrap_or_default();
                conds.push(if !fb.errors.is_empty() {
                    condition(
                        "StatusFeedbackSynced",
                        false,
                        "StatusFeedbackSyncFailed",
                        fb.errors.join("; "),
                    )
                } else if fb.values.is_empty() {
                    condition(
                        "StatusFeedbackSynced",
                        true,
                        "NoStatusFeedbackSynced",
                        "No status feedback synced",
                    )
                } else {
                    condition(
                        "StatusFeedbackSynced",
                        true,
                        "StatusFeedbackSynced",
                        "Status feedback synced",
                    )
                });
                status_feedback = Some(StatusFeedbackResult { values: fb.values });
            }
            let previous = old_manifests
                .iter()
                .find(|m| m.resource_meta == r.meta)
                .map(|m| m.conditions.as_slice())
                .unwrap_or_default();
            manifests.push(ManifestCondition {
                resource_meta: r.meta.clone(),
                status_feedback,
                conditions: merge_conditions(previous, conds),
            });
        }

        let all_applied = results.iter().all(|r| r.result.is_ok());
        let mut applied = if all_applied {
            condition(
                "Applied",
                true,
                "AppliedManifestWorkComplete",
                "Apply manifest work complete",
            )
        } else {
            condition(
                "Applied",
                false,
                "AppliedManifestWorkFailed",
                "Failed to apply manifest work",
            )
        };
        applied.observed_generation = generation;
        let total = results.len();
        let mut avail = if unavailable > 0 {
            condition(
                "Available",
                false,
                "ResourcesNotAvailable",
                format!("{unavailable} of {total} resources are not available"),
            )
        } else if unknown > 0 {
            condition_str(
                "Available",
                "Unknown",
                "ResourcesStatusUnknown",
                &format!("{unknown} of {total} resources have unknown status"),
            )
        } else {
            condition(
                "Available",
                true,
                "ResourcesAvailable",
                format!("All {available} resources are available"),
            )
        };
        avail.observed_generation = generation;
        let mut wanted = vec![applied, avail];
        // Conditions other agents or rules own are left alone.
        let ours = ["Applied", "Available", "Deleting"];
        let mut conditions: Vec<Condition> = merge_conditions(&old.conditions, std::mem::take(&mut wanted));
        conditions.extend(
            old.conditions
                .iter()
                .filter(|c| !ours.contains(&c.type_.as_str()))
                .cloned(),
        );
        ManifestWorkStatus {
            conditions,
            resource_status: Some(ManifestResourceStatus { manifests }),
        }
    }

    async fn write_status(&self, work: &ManifestWork, status: ManifestWorkStatus) -> Result<(), kube::Error> {
        if work.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let patch = json!({"status": status});
        self.works
            .patch_status(&work.name_any(), &agent_params(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn delete_work(&mut self, work: ManifestWork, raw: &Value, uid: &str) -> Result<(), kube::Error> {
        if !work.finalizers().iter().any(|f| f == WORK_FINALIZER) {
            self.states.remove(uid);
            return Ok(());
        }
        let policy = work
            .spec
            .delete_option
            .as_ref()
            .and_then(|d| d.propagation_policy.clone())
            .unwrap_or_else(|| "Foreground".to_string());
        let rules = orphaning_rules(raw);
        let mut targets: HashSet<ObjKey> = self.states.get(uid).map(|s| s.owned.clone()).unwrap_or_default();
        if !self.states.contains_key(uid) {
            targets = owned_from_status(&work);
            let read_only = read_only_keys(&work);
            targets.retain(|k| !read_only.contains(k));
        }
        let targets: Vec<ObjKey> = match policy.as_str() {
            "Orphan" => Vec::new(),
            "SelectivelyOrphan" => targets
                .into_iter()
                .filter(|k| !rules.iter().any(|r| r.matches(k)))
                .collect(),
            _ => targets.into_iter().collect(),
        };
        let mut remaining = Vec::new();
        for key in &targets {
            let api = key.api(&self.spoke);
            match api.get_opt(&key.name).await {
                Ok(None) => continue,
                Ok(Some(obj)) => {
                    if obj.metadata.deletion_timestamp.is_none() {
                        match api.delete(&key.name, &DeleteParams::foreground()).await {
                            Ok(_) => {}
                            Err(e) if is_not_found(&e) => continue,
                            Err(e) => tracing::warn!(object = %key.name, error = %e, "delete failed"),
                        }
                    }
                    remaining.push(key.name.clone());
                }
                Err(e) => {
                    tracing::warn!(object = %key.name, error = %e, "reading a spoke object during deletion failed");
                    remaining.push(key.name.clone());
                }
            }
        }
        // A spoke object that disappeared right after the delete call may still count once; it is
        // re-checked on the next pass.
        if remaining.is_empty() {
            let finalizers: Vec<String> = work
                .finalizers()
                .iter()
                .filter(|f| *f != WORK_FINALIZER)
                .cloned()
                .collect();
            let patch =
                json!({"metadata": {"finalizers": finalizers, "resourceVersion": work.resource_version()}});
            self.works
                .patch(&work.name_any(), &agent_params(), &Patch::Merge(&patch))
                .await?;
            self.states.remove(uid);
            return Ok(());
        }
        remaining.sort();
        let old = work.status.clone().unwrap_or_default();
        let deleting = condition(
            "Deleting",
            true,
            "ManifestWorkDeleting",
            format!(
                "Waiting for {} applied resources to be deleted: {}",
                remaining.len(),
                remaining.join(", ")
            ),
        );
        let mut conditions: Vec<Condition> = old
            .conditions
            .iter()
            .filter(|c| c.type_ != "Deleting")
            .cloned()
            .collect();
        let previous: Vec<Condition> = old
            .conditions
            .iter()
            .filter(|c| c.type_ == "Deleting")
            .cloned()
            .collect();
        conditions.extend(merge_conditions(&previous, vec![deleting]));
        let status = ManifestWorkStatus {
            conditions,
            resource_status: old.resource_status.clone(),
        };
        self.write_status(&work, status).await
    }
}

fn condition_str(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    let mut c = condition(type_, false, reason, message);
    c.status = status.to_string();
    c
}

fn error_text(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// Objects listed in the work's last written status: what a restarted agent must still clean up.
fn owned_from_status(work: &ManifestWork) -> HashSet<ObjKey> {
    work.status
        .iter()
        .flat_map(|s| s.resource_status.iter())
        .flat_map(|r| r.manifests.iter())
        .filter(|m| {
            m.conditions
                .iter()
                .any(|c| c.type_ == "Applied" && c.status == "True")
        })
        .filter_map(|m| ObjKey::from_meta(&m.resource_meta))
        .collect()
}

fn read_only_keys(work: &ManifestWork) -> HashSet<ObjKey> {
    owned_from_status(work)
        .into_iter()
        .filter(|k| {
            config_for(&work.spec.manifest_configs, k)
                .0
                .is_some_and(|s| s.type_ == "ReadOnly")
        })
        .collect()
}

/// The first non-empty update strategy and feedback rules among the configs matching `key`.
fn config_for(configs: &[ManifestConfigOption], key: &ObjKey) -> (Option<UpdateStrategy>, Vec<FeedbackRule>) {
    let glob = |pattern: &str, value: &str| pattern == "*" || pattern == value;
    let mut strategy = None;
    let mut rules = Vec::new();
    for c in configs {
        let id = &c.resource_identifier;
        if id.group == key.group
            && id.resource == key.plural
            && glob(&id.name, &key.name)
            && glob(&id.namespace, &key.namespace)
        {
            if strategy.is_none() {
                strategy = c.update_strategy.clone().filter(|s| !s.type_.is_empty());
            }
            if rules.is_empty() {
                rules = c.feedback_rules.clone();
            }
        }
    }
    (strategy, rules)
}

/// One `spec.deleteOption.selectivelyOrphans.orphaningRules[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct OrphaningRule {
    group: String,
    resource: String,
    name: String,
    namespace: String,
}

impl OrphaningRule {
    fn matches(&self, key: &ObjKey) -> bool {
        self.group == key.group
            && self.resource == key.plural
            && self.name == key.name
            && self.namespace == key.namespace
    }
}

/// kmm-api's DeleteOption has no selectivelyOrphans, so the rules are read from the raw object.
fn orphaning_rules(raw: &Value) -> Vec<OrphaningRule> {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    raw.pointer("/spec/deleteOption/selectivelyOrphans/orphaningRules")
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .map(|r| OrphaningRule {
                    group: s(r, "group"),
                    resource: s(r, "resource"),
                    name: s(r, "name"),
                    namespace: s(r, "namespace"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Apply order: namespaces and CRDs first, unknown kinds (custom resources) last.
fn kind_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" | "CustomResourceDefinition" => 0,
        "ServiceAccount" | "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => 1,
        "ConfigMap" | "Secret" | "PersistentVolumeClaim" | "StorageClass" => 2,
        "Service" => 3,
        "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" | "CronJob" | "Pod" => 4,
        "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration" => 5,
        _ => 6,
    }
}

/// The manifest as it is sent to the spoke: no uid, resourceVersion or server-owned metadata.
fn clean_manifest(manifest: &Value, namespaced: bool) -> Value {
    let mut m = manifest.clone();
    if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(k);
        }
        if !namespaced {
            meta.remove("namespace");
        }
    }
    m
}

fn to_dynamic(v: &Value) -> Result<DynamicObject, String> {
    serde_json::from_value(v.clone()).map_err(|e| format!("the manifest is not a valid object: {e}"))
}

async fn create_only(api: &Api<DynamicObject>, name: &str, desired: &Value) -> Result<(), String> {
    match api.get_opt(name).await.map_err(error_text)? {
        Some(_) => Ok(()),
        None => create(api, desired).await,
    }
}

async fn create(api: &Api<DynamicObject>, desired: &Value) -> Result<(), String> {
    let pp = PostParams {
        field_manager: Some(DEFAULT_FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    api.create(&pp, &to_dynamic(desired)?)
        .await
        .map(|_| ())
        .map_err(error_text)
}

/// The `Update` strategy: create, or replace when a field the manifest sets differs, keeping the
/// existing finalizers and merging labels, annotations and owner references.
async fn update(api: &Api<DynamicObject>, name: &str, desired: &Value) -> Result<(), String> {
    let Some(existing) = api.get_opt(name).await.map_err(error_text)? else {
        return create(api, desired).await;
    };
    let existing = serde_json::to_value(&existing).map_err(|e| e.to_string())?;
    let merged = merge_for_update(desired, &existing);
    if is_subset(&merged, &existing) {
        return Ok(());
    }
    let pp = PostParams {
        field_manager: Some(DEFAULT_FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    api.replace(name, &pp, &to_dynamic(&merged)?)
        .await
        .map(|_| ())
        .map_err(error_text)
}

/// The object `Update` writes over `existing`.
fn merge_for_update(desired: &Value, existing: &Value) -> Value {
    let mut merged = desired.clone();
    if let Some(obj) = merged.as_object_mut() {
        obj.remove("status");
    }
    let empty = serde_json::Map::new();
    let old_meta = existing
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let Some(meta) = merged.get_mut("metadata").and_then(Value::as_object_mut) else {
        return merged;
    };
    for map_key in ["labels", "annotations"] {
        let mut joined: BTreeMap<String, Value> = old_meta
            .get(map_key)
            .and_then(Value::as_object)
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default();
        if let Some(new) = meta.get(map_key).and_then(Value::as_object) {
            joined.extend(new.clone());
        }
        if !joined.is_empty() {
            meta.insert(map_key.to_string(), json!(joined));
        }
    }
    let mut owners: Vec<Value> = old_meta
        .get("ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for o in meta
        .get("ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        if !owners.iter().any(|x| x.get("uid") == o.get("uid")) {
            owners.push(o);
        }
    }
    if !owners.is_empty() {
        meta.insert("ownerReferences".into(), Value::Array(owners));
    }
    match old_meta.get("finalizers") {
        Some(f) => meta.insert("finalizers".into(), f.clone()),
        None => meta.remove("finalizers"),
    };
    if let Some(rv) = old_meta.get("resourceVersion") {
        meta.insert("resourceVersion".into(), rv.clone());
    }
    merged
}

/// Writes to the hub's ManifestWork are recorded under the agent's own manager name.
fn agent_params() -> PatchParams {
    PatchParams {
        field_manager: Some(DEFAULT_FIELD_MANAGER.to_string()),
        ..Default::default()
    }
}
