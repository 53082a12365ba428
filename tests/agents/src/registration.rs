//! Stand-in for the OCM klusterlet registration agent of one spoke: keeps the hub's
//! `ManagedCluster` joined and available, and copies the spoke's ClusterClaims into its status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, Namespace, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kmm_api::ocm::{ClusterClaim, ManagedCluster, ManagedClusterSpec};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::json;
use tokio::sync::Notify;

use crate::claims::{self, ClaimList};
use crate::conditions::{condition, set_condition};
use crate::handle::AgentHandle;
use crate::util::{Backoff, is_not_found, spawn_trigger, wait};

/// Reason of the Event sent when custom claims were dropped by the cap.
pub const TRUNCATED_EVENT_REASON: &str = "CustomClusterClaimsTruncated";

/// Settings of a [`RegistrationAgent`].
#[derive(Debug, Clone)]
pub struct RegistrationOptions {
    /// Most custom (non-reserved) claims copied to the hub; default 20.
    pub max_custom_cluster_claims: usize,
    /// Claims whose name ends with one of these are reserved (never capped).
    pub reserved_claim_suffixes: Vec<String>,
    /// Create the ManagedCluster with these labels (and `hubAcceptsClient: true`) when it is missing.
    /// `None`: wait until someone else creates it.
    pub create_cluster_with_labels: Option<BTreeMap<String, String>>,
    /// Create the cluster namespace on the hub when it is missing.
    pub create_namespace: bool,
    /// How often the status is re-checked without a watch event; default 1 s.
    pub resync_interval: Duration,
}

impl Default for RegistrationOptions {
    fn default() -> Self {
        Self {
            max_custom_cluster_claims: 20,
            reserved_claim_suffixes: Vec::new(),
            create_cluster_with_labels: None,
            create_namespace: false,
            resync_interval: Duration::from_secs(1),
        }
    }
}

/// The OCM registration agent stand-in.
#[derive(Debug)]
pub struct RegistrationAgent;

impl RegistrationAgent {
    /// Starts the agent for the spoke `cluster`.
    pub fn spawn(hub: Client, spoke: Client, cluster: &str, opts: RegistrationOptions) -> AgentHandle {
        let notify = Arc::new(Notify::new());
        let claims_watch = spawn_trigger(
            Api::<ClusterClaim>::all(spoke.clone()),
            watcher::Config::default(),
            notify.clone(),
            "clusterclaims",
        );
        let cluster_watch = spawn_trigger(
            Api::<ManagedCluster>::all(hub.clone()),
            watcher::Config::default().fields(&format!("metadata.name={cluster}")),
            notify.clone(),
            "managedcluster",
        );
        let cluster = cluster.to_string();
        let main = tokio::spawn(async move {
            let mut state = Registration {
                hub,
                spoke,
                cluster,
                opts,
                last_truncated: Vec::new(),
            };
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                match state.sync().await {
                    Ok(()) => {
                        backoff.reset();
                        wait(&notify, state.opts.resync_interval).await;
                    }
                    Err(e) => {
                        tracing::warn!(cluster = %state.cluster, error = %e, "registration sync failed");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        });
        AgentHandle::new(vec![main, claims_watch, cluster_watch])
    }
}

struct Registration {
    hub: Client,
    spoke: Client,
    cluster: String,
    opts: RegistrationOptions,
    last_truncated: Vec<String>,
}

impl Registration {
    async fn sync(&mut self) -> Result<(), kube::Error> {
        if self.opts.create_namespace {
            self.ensure_namespace().await?;
        }
        let clusters = Api::<ManagedCluster>::all(self.hub.clone());
        let mc = match clusters.get_opt(&self.cluster).await? {
            Some(mc) => mc,
            None => match &self.opts.create_cluster_with_labels {
                Some(labels) => {
                    let mut mc = ManagedCluster::new(
                        &self.cluster,
                        ManagedClusterSpec {
                            hub_accepts_client: true,
                            ..Default::default()
                        },
                    );
                    mc.metadata.labels = Some(labels.clone());
                    clusters
                        .create(
                            &PostParams {
                                field_manager: Some("registration-agent".into()),
                                ..Default::default()
                            },
                            &mc,
                        )
                        .await?
                }
                None => {
                    tracing::debug!(cluster = %self.cluster, "ManagedCluster does not exist yet");
                    return Ok(());
                }
            },
        };

        let spoke_claims = match Api::<ClusterClaim>::all(self.spoke.clone())
            .list(&Default::default())
            .await
        {
            Ok(list) => list.items,
            // No ClusterClaim CRD on the spoke: nothing to report.
            Err(e) if is_not_found(&e) => Vec::new(),
            Err(e) => return Err(e),
        };
        let ClaimList { claims, truncated } = claims::cluster_claims(
            &spoke_claims,
            self.opts.max_custom_cluster_claims,
            &self.opts.reserved_claim_suffixes,
        );

        let old = mc.status.clone().unwrap_or_default();
        let mut conditions = old.conditions.clone();
        set_condition(
            &mut conditions,
            condition(
                "ManagedClusterJoined",
                true,
                "ManagedClusterJoined",
                "Managed cluster joined",
            ),
        );
        set_condition(
            &mut conditions,
            condition(
                "ManagedClusterConditionAvailable",
                true,
                "ManagedClusterAvailable",
                "Managed cluster is available",
            ),
        );
        if conditions != old.conditions || claims != old.cluster_claims {
            let patch = json!({"status": {"conditions": conditions, "clusterClaims": claims}});
            clusters
                .patch_status(
                    &self.cluster,
                    &PatchParams {
                        field_manager: Some("registration-agent".into()),
                        ..Default::default()
                    },
                    &Patch::Merge(&patch),
                )
                .await?;
        }

        if !truncated.is_empty() && truncated != self.last_truncated {
            self.truncation_event(&mc, &truncated).await;
        }
        self.last_truncated = truncated;
        Ok(())
    }

    async fn ensure_namespace(&self) -> Result<(), kube::Error> {
        let namespaces = Api::<Namespace>::all(self.hub.clone());
        if namespaces.get_opt(&self.cluster).await?.is_none() {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(self.cluster.clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match namespaces
                .create(
                    &PostParams {
                        field_manager: Some("registration-agent".into()),
                        ..Default::default()
                    },
                    &ns,
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Best effort: a failure to record the event is logged, not retried.
    async fn truncation_event(&self, mc: &ManagedCluster, truncated: &[String]) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let message = format!(
            "{} custom cluster claims were left out (limit {}): {}",
            truncated.len(),
            self.opts.max_custom_cluster_claims,
            truncated.join(", ")
        );
        let mut last_err = None;
        for ns in [self.cluster.as_str(), "default"] {
            let event = Event {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}.", self.cluster)),
                    namespace: Some(ns.to_string()),
                    ..Default::default()
                },
                involved_object: ObjectReference {
                    api_version: Some(ManagedCluster::api_version(&()).into_owned()),
                    kind: Some(ManagedCluster::kind(&()).into_owned()),
                    name: mc.metadata.name.clone(),
                    uid: mc.metadata.uid.clone(),
                    ..Default::default()
                },
                reason: Some(TRUNCATED_EVENT_REASON.to_string()),
                message: Some(message.clone()),
                type_: Some("Warning".to_string()),
                count: Some(1),
                first_timestamp: Some(Time(now)),
                last_timestamp: Some(Time(now)),
                event_time: Some(MicroTime(now)),
                action: Some("SyncClusterClaims".to_string()),
                reporting_component: Some("registration-agent".to_string()),
                reporting_instance: Some(format!("registration-agent-{}", self.cluster)),
                source: Some(EventSource {
                    component: Some("registration-agent".to_string()),
                    host: None,
                }),
                ..Default::default()
            };
            match Api::<Event>::namespaced(self.hub.clone(), ns)
                .create(
                    &PostParams {
                        field_manager: Some("registration-agent".into()),
                        ..Default::default()
                    },
                    &event,
                )
                .await
            {
                Ok(_) => return,
                Err(e) => last_err = Some(e),
            }
        }
        if let Some(e) = last_err {
            tracing::warn!(cluster = %self.cluster, error = %e, "could not record the claim truncation event");
        }
    }
}
