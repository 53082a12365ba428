//! Leader election with a `coordination.k8s.io` Lease, so several hub replicas can run: every
//! replica watches and keeps its caches warm, only the lease holder writes (STYLE.md, L5D rule).
//!
//! The holder renews every `renew` period; a lease not renewed for `duration` may be taken over.
//! Conflicting writes (two replicas racing) are settled by the apiserver's resourceVersion check.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tracing::{info, warn};

/// Whether this replica may write.
#[derive(Debug, Default)]
pub struct Leadership {
    leader: AtomicBool,
}

impl Leadership {
    /// A replica that always leads (leader election off, e.g. a single replica or a CLI).
    pub fn always() -> Self {
        Self {
            leader: AtomicBool::new(true),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    fn set(&self, value: bool) {
        if self.leader.swap(value, Ordering::Relaxed) != value {
            info!(leader = value, "leadership changed");
        }
    }
}

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    pub renew: Duration,
}

/// What to do with the lease as observed (pure).
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// Nobody holds it, it expired, or we hold it: write ourselves as holder.
    Claim { transition: bool },
    /// Someone else holds a fresh lease.
    Follow,
}

/// Decides from the lease's holder and renew time.
pub fn next_step(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> LeaseStep {
    let Some(spec) = spec else {
        return LeaseStep::Claim { transition: true };
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == identity {
        return LeaseStep::Claim { transition: false };
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let fresh = spec
        .renew_time
        .as_ref()
        .is_some_and(|t| t.0.as_second() + duration > now.as_second());
    if holder.is_empty() || !fresh {
        LeaseStep::Claim { transition: true }
    } else {
        LeaseStep::Follow
    }
}

/// Runs forever: claims or renews the lease and publishes the outcome in `leadership`.
pub async fn run(client: Client, config: LeaseConfig, leadership: std::sync::Arc<Leadership>) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    loop {
        let leading = match try_once(&api, &config).await {
            Ok(leading) => leading,
            Err(e) => {
                warn!(error = %e, lease = %config.name, "lease update failed");
                false
            }
        };
        leadership.set(leading);
        tokio::time::sleep(config.renew).await;
    }
}

async fn try_once(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&config.name).await?;
    let step = next_step(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &config.identity,
        now,
    );
    let LeaseStep::Claim { transition } = step else {
        return Ok(false);
    };
    let old_spec = current.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
    let spec = LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(config.duration.as_secs()).unwrap_or(15)),
        renew_time: Some(MicroTime(now)),
        acquire_time: if transition {
            Some(MicroTime(now))
        } else {
            old_spec.acquire_time.clone()
        },
        lease_transitions: Some(
            old_spec.lease_transitions.unwrap_or(0) + i32::from(transition && current.is_some()),
        ),
        ..old_spec
    };
    let result = match current {
        Some(mut lease) => {
            // replace() carries the resourceVersion we read: a racing replica gets 409.
            lease.spec = Some(spec);
            api.replace(&config.name, &PostParams::default(), &lease).await
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn claims_free_expired_or_own_leases_and_follows_fresh_ones() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(next_step(None, "a", now), LeaseStep::Claim { transition: true });
        assert_eq!(
            next_step(Some(&spec("a", 995)), "a", now),
            LeaseStep::Claim { transition: false }
        );
        assert_eq!(next_step(Some(&spec("b", 995)), "a", now), LeaseStep::Follow);
        assert_eq!(
            next_step(Some(&spec("b", 980)), "a", now),
            LeaseStep::Claim { transition: true }
        );
        assert_eq!(
            next_step(Some(&spec("", 999)), "a", now),
            LeaseStep::Claim { transition: true }
        );
    }
}
