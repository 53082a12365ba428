//! The build and sign step of reconcile: for every missing image the MCM says how to make, make
//! sure its Job exists (one per image, whoever asks), read how it went, and tell the rendering
//! step why the clusters wait. Successful Jobs are removed once their image exists and
//! `--job-gc-delay-seconds` passed; failed ones stay for inspection and are not retried (a new
//! `imageRebuildTriggerGeneration` or deleting the Job starts another).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{ConfigMap, Pod, Secret},
    },
    jiff::Timestamp,
};
use kmm_api::ManagedClusterModule;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, PostParams, PropagationPolicy},
};
use tracing::info;

use super::{
    Context, Error,
    desired::{
        job::{self, JobState, Step},
        plan::{ImageRef, Pin, reasons},
    },
    observe::{self, Observed},
};

/// Turns the `Missing` pins that a Job can make into `Waiting` pins, starting Jobs as needed.
pub async fn advance(
    mcm: &ManagedClusterModule,
    ctx: &Context,
    observed: &mut Observed,
) -> Result<(), Error> {
    let kernels: BTreeSet<&String> = observed
        .clusters
        .iter()
        .filter_map(|c| c.kernels.as_ref().ok())
        .flatten()
        .collect();
    let resolved: Vec<_> = kernels
        .into_iter()
        .filter_map(|k| job::resolve(mcm, k))
        .filter(|r| matches!(observed.pins.get(&r.container_image), Some(Pin::Missing)))
        .collect();
    if resolved.is_empty() {
        return Ok(());
    }
    // A build+sign mapping signs once the unsigned intermediate exists: look those up too.
    let intermediates: BTreeSet<ImageRef> = resolved
        .iter()
        .filter_map(|r| {
            job::intermediate_image(mcm, r).map(|image| ImageRef {
                image,
                insecure: r.registry_tls.insecure,
                insecure_skip_tls_verify: r.registry_tls.insecure_skip_tls_verify,
            })
        })
        .collect();
    let mut pins = observed.pins.clone();
    if !intermediates.is_empty() {
        pins.extend(observe::resolve(&ctx.resolver, intermediates, &Ok(None)).await);
    }
    let trigger = mcm.spec.module_spec.image_rebuild_trigger_generation;
    let mut steps: BTreeMap<String, (Step, String)> = BTreeMap::new();
    for r in &resolved {
        if let Some(step) = job::step_for(mcm, r, &pins) {
            steps.insert(step.job_name(trigger), (step, r.container_image.clone()));
        }
    }
    for (name, (step, final_image)) in steps {
        let exists = ctx.jobs.state().iter().any(|j| j.name_any() == name);
        if !exists && let Some(message) = missing_input(&step, ctx).await? {
            observed.pins.insert(
                final_image,
                Pin::Waiting {
                    reason: reasons::BUILD_INPUT_MISSING,
                    message,
                },
            );
            continue;
        }
        let state = ensure_job(mcm, ctx, &name, &step, trigger).await?;
        let kind = step.kind();
        let waiting = match state {
            JobState::Running => Pin::Waiting {
                reason: if kind == "build" {
                    reasons::BUILDING
                } else {
                    reasons::SIGNING
                },
                message: format!("Job {}/{name} is making {}", ctx.config.namespace, step.target()),
            },
            JobState::Failed(why) => Pin::Waiting {
                reason: if kind == "build" {
                    reasons::BUILD_FAILED
                } else {
                    reasons::SIGN_FAILED
                },
                message: format!(
                    "Job {}/{name} for {} failed: {why} (fix the cause, then delete the Job or bump imageRebuildTriggerGeneration)",
                    ctx.config.namespace,
                    step.target()
                ),
            },
            // Done: the next registry lookup finds the image (or the intermediate, for the sign step).
            JobState::Succeeded => Pin::Waiting {
                reason: if kind == "build" {
                    reasons::BUILDING
                } else {
                    reasons::SIGNING
                },
                message: format!(
                    "Job {}/{name} finished; waiting for {} in its registry",
                    ctx.config.namespace,
                    step.target()
                ),
            },
        };
        observed.pins.insert(final_image, waiting);
    }
    Ok(())
}

/// What a step needs in the hub's namespace and does not find there (a Job started without it
/// would only sit with a pod that cannot start), as the message for the MCM status.
async fn missing_input(step: &Step, ctx: &Context) -> Result<Option<String>, Error> {
    let ns = &ctx.config.namespace;
    let read = |what: String| move |source| Error::Write { what, source };
    // (kind, name, MCM field, key the Job reads)
    let needed: Vec<(&str, &str, &str, Option<&str>)> = match step {
        Step::Build { build, .. } => std::iter::once((
            "ConfigMap",
            build.dockerfile_config_map.name.as_str(),
            "build.dockerfileConfigMap",
            Some(job::DOCKERFILE_KEY),
        ))
        .chain(
            build
                .secrets
                .iter()
                .flatten()
                .map(|s| ("Secret", s.name.as_str(), "build.secrets", None)),
        )
        .collect(),
        Step::Sign { sign, .. } => vec![
            (
                "Secret",
                sign.key_secret.name.as_str(),
                "sign.keySecret",
                Some("key"),
            ),
            (
                "Secret",
                sign.cert_secret.name.as_str(),
                "sign.certSecret",
                Some("cert"),
            ),
        ],
    };
    for (kind, name, field, key) in needed {
        let keys: Option<Vec<String>> = if kind == "ConfigMap" {
            Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(read(format!("reading ConfigMap {ns}/{name}")))?
                .map(|c| c.data.unwrap_or_default().into_keys().collect())
        } else {
            Api::<Secret>::namespaced(ctx.client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(read(format!("reading Secret {ns}/{name}")))?
                .map(|s| s.data.unwrap_or_default().into_keys().collect())
        };
        match (keys, key) {
            (None, _) => {
                return Ok(Some(format!(
                    "{kind} {ns}/{name} (spec.moduleSpec...{field}) does not exist; create it in the hub's namespace"
                )));
            }
            (Some(keys), Some(key)) if !keys.iter().any(|k| k == key) => {
                return Ok(Some(format!(
                    "{kind} {ns}/{name} (spec.moduleSpec...{field}) has no key {key:?}"
                )));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// The Job's state, creating it when it does not exist yet.
async fn ensure_job(
    mcm: &ManagedClusterModule,
    ctx: &Context,
    name: &str,
    step: &Step,
    trigger: Option<i64>,
) -> Result<JobState, Error> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let existing = ctx.jobs.state().into_iter().find(|j| j.name_any() == name);
    let job = match existing {
        Some(j) => (*j).clone(),
        None => {
            let desired = job::job(mcm, step, trigger, &ctx.config.jobs);
            match api.create(&PostParams::default(), &desired).await {
                Ok(created) => {
                    info!(job = name, image = step.target(), "started a {} Job", step.kind());
                    ctx.metrics.jobs_started.inc();
                    created
                }
                // Another reconcile (or a previous hub) started it: read it back.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    api.get(name).await.map_err(|source| Error::Write {
                        what: format!("reading Job {name}"),
                        source,
                    })?
                }
                Err(source) => {
                    return Err(Error::Write {
                        what: format!("creating Job {name}"),
                        source,
                    });
                }
            }
        }
    };
    let state = job::job_state(&job, None);
    if let JobState::Failed(_) = state {
        return Ok(job::job_state(&job, failure_message(ctx, name).await.as_deref()));
    }
    Ok(state)
}

/// The termination message of the Job's failed pod, if any.
async fn failure_message(ctx: &Context, job: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .ok()?;
    list.items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
        .find_map(|p| kmm_api::pod_failure::termination(p, "build").map(|(_, why)| why))
}

/// Deletes succeeded Jobs once the GC delay passed. Harmless even before the image is used: what
/// runs next is decided from the registry, never from old Jobs.
pub async fn collect(ctx: &Context) -> Result<(), Error> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let now = Timestamp::now();
    for j in ctx.jobs.state() {
        let done_at = j
            .status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .map(|t| t.0);
        let old_enough = done_at
            .is_some_and(|t| now.as_second() - t.as_second() >= ctx.config.job_gc_delay.as_secs() as i64);
        if job::job_state(&j, None) == JobState::Succeeded
            && old_enough
            && j.metadata.deletion_timestamp.is_none()
        {
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            match api.delete(&j.name_any(), &dp).await {
                Ok(_) | Err(kube::Error::Api(_)) => info!(job = %j.name_any(), "collected a finished Job"),
                Err(source) => {
                    return Err(Error::Write {
                        what: format!("deleting Job {}", j.name_any()),
                        source,
                    });
                }
            }
        }
    }
    Ok(())
}
