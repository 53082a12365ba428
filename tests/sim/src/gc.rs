//! Deletion: finalizers, `deletionTimestamp`, owner-reference garbage collection (Background,
//! Foreground, Orphan) and namespace termination, done synchronously inside the write.

use std::{collections::HashSet, sync::Arc};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::{
    registry::{GroupResource, ResourceType},
    status::ApiResult,
    store::{Change, ChangeKind, State, finalizers},
    time,
};

const FOREGROUND: &str = "foregroundDeletion";

fn uid(obj: &Value) -> &str {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn is_namespace(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.plural == "namespaces"
}

/// Every object owned by `owner_uid`, with its kind.
fn dependents(st: &State, owner_uid: &str) -> Vec<(ResourceType, Arc<Value>)> {
    let mut out = Vec::new();
    for (gr, objs) in &st.objects {
        let Some(rt) = st.registry.get(gr) else { continue };
        for o in objs.values() {
            if owner_uids(o).iter().any(|u| u == owner_uid) {
                out.push((rt.clone(), o.clone()));
            }
        }
    }
    out
}

fn namespace_contents(st: &State, ns: &str) -> Vec<(ResourceType, Arc<Value>)> {
    let mut out = Vec::new();
    for (gr, objs) in &st.objects {
        let Some(rt) = st.registry.get(gr).filter(|rt| rt.namespaced) else {
            continue;
        };
        out.extend(
            objs.iter()
                .filter(|((n, _), _)| n == ns)
                .map(|(_, o)| (rt.clone(), o.clone())),
        );
    }
    out
}

/// A delete request: marks the object for deletion or removes it, per finalizers and propagation.
pub fn delete(
    st: &mut State,
    rt: &ResourceType,
    old: Arc<Value>,
    propagation: Option<&str>,
    tx: &broadcast::Sender<Arc<Change>>,
) -> ApiResult<Arc<Value>> {
    // batch/v1 Jobs orphan their pods unless told otherwise, as in the real API.
    let default = if rt.group == "batch" {
        "Orphan"
    } else {
        "Background"
    };
    let propagation = propagation.unwrap_or(default);
    let already = old.pointer("/metadata/deletionTimestamp").is_some();
    if propagation == "Orphan" {
        orphan(st, uid(&old).to_string(), tx)?;
    }
    let mut marked = (*old).clone();
    if !already {
        marked["metadata"]["deletionTimestamp"] = json!(time::now());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    }
    if is_namespace(rt) {
        let ns = old
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        marked["status"] = json!({"phase": "Terminating"});
        let stored = if already {
            old.clone()
        } else {
            st.commit(rt, Some(old.clone()), with_blocker(marked), tx)?
        };
        for (crt, obj) in namespace_contents(st, &ns) {
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                delete(st, &crt, obj, None, tx)?;
            }
        }
        sweep(st, tx)?;
        return Ok(st.find(rt, None, &ns).unwrap_or(stored));
    }
    if propagation == "Foreground" && !finalizers(&marked).iter().any(|f| f == FOREGROUND) {
        let mut f = finalizers(&marked);
        f.push(FOREGROUND.to_string());
        marked["metadata"]["finalizers"] = json!(f);
    }
    if already && marked == *old {
        return Ok(old);
    }
    let owner_uid = uid(&old).to_string();
    let stored = st.commit(rt, Some(old), marked, tx)?;
    if propagation == "Foreground" {
        for (drt, dep) in dependents(st, &owner_uid) {
            if dep.pointer("/metadata/deletionTimestamp").is_none() {
                delete(st, &drt, dep, Some("Background"), tx)?;
            }
        }
        sweep(st, tx)?;
    }
    Ok(stored)
}

/// Namespaces carry an implicit finalizer until they are empty; this marks it on the stored copy.
fn with_blocker(mut ns: Value) -> Value {
    let mut f = finalizers(&ns);
    if !f.iter().any(|x| x == "kubernetes") {
        f.push("kubernetes".into());
    }
    ns["metadata"]["finalizers"] = json!(f);
    ns
}

fn orphan(st: &mut State, owner_uid: String, tx: &broadcast::Sender<Arc<Change>>) -> ApiResult<()> {
    for (rt, dep) in dependents(st, &owner_uid) {
        let mut d = (*dep).clone();
        if let Some(Value::Array(refs)) = d.pointer_mut("/metadata/ownerReferences") {
            refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid.as_str()));
        }
        st.commit(&rt, Some(dep), d, tx)?;
    }
    Ok(())
}

/// Removes an object for good, then collects what it owned.
pub fn remove(
    st: &mut State,
    rt: &ResourceType,
    old: Arc<Value>,
    last: Option<Value>,
    tx: &broadcast::Sender<Arc<Change>>,
) -> ApiResult<Arc<Value>> {
    let key = (
        old.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        old.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    );
    if let Some(objs) = st.objects.get_mut(&rt.group_resource()) {
        objs.remove(&key);
    }
    st.uids.remove(uid(&old));
    st.rv += 1;
    let mut last = last.unwrap_or_else(|| (*old).clone());
    last["metadata"]["resourceVersion"] = json!(st.rv.to_string());
    let last = Arc::new(last);
    st.record(
        rt.group_resource(),
        ChangeKind::Deleted,
        last.clone(),
        Some(old.clone()),
        tx,
    );
    st.mirror_event(&rt.group_resource(), &last, true, tx);
    if rt.crd.is_none() && rt.group == "apiextensions.k8s.io" {
        drop_crd(st, &old, tx);
    }
    collect_dependents(st, uid(&old).to_string(), tx)?;
    sweep(st, tx)?;
    Ok(last)
}

/// Background collection: dependents with no remaining owner go; others lose the dangling reference.
fn collect_dependents(
    st: &mut State,
    owner_uid: String,
    tx: &broadcast::Sender<Arc<Change>>,
) -> ApiResult<()> {
    let live: HashSet<String> = st
        .objects
        .values()
        .flat_map(|m| m.values())
        .map(|o| uid(o).to_string())
        .collect();
    for (rt, dep) in dependents(st, &owner_uid) {
        // The dependent may have gone while an earlier one was collected.
        let name = dep
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(current) = st.find(
            &rt,
            dep.pointer("/metadata/namespace").and_then(Value::as_str),
            name,
        ) else {
            continue;
        };
        if owner_uids(&current)
            .iter()
            .any(|u| u != &owner_uid && live.contains(u))
        {
            let mut d = (*current).clone();
            if let Some(Value::Array(refs)) = d.pointer_mut("/metadata/ownerReferences") {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid.as_str()));
            }
            st.commit(&rt, Some(current), d, tx)?;
        } else if current.pointer("/metadata/deletionTimestamp").is_none() {
            delete(st, &rt, current, Some("Background"), tx)?;
        }
    }
    Ok(())
}

/// Finishes deletions that were waiting on something: foreground owners whose dependents are
/// gone, and terminating namespaces that are empty.
fn sweep(st: &mut State, tx: &broadcast::Sender<Arc<Change>>) -> ApiResult<()> {
    loop {
        let mut waiting: Vec<(ResourceType, Arc<Value>)> = Vec::new();
        for (gr, objs) in &st.objects {
            let Some(rt) = st.registry.get(gr) else { continue };
            for o in objs
                .values()
                .filter(|o| o.pointer("/metadata/deletionTimestamp").is_some())
            {
                let f = finalizers(o);
                let blocked = if is_namespace(rt) {
                    f.iter().any(|x| x == "kubernetes")
                        && namespace_contents(st, o["metadata"]["name"].as_str().unwrap_or_default())
                            .is_empty()
                } else {
                    f.iter().any(|x| x == FOREGROUND) && dependents(st, uid(o)).is_empty()
                };
                if blocked {
                    waiting.push((rt.clone(), o.clone()));
                }
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        for (rt, o) in waiting {
            let mut d = (*o).clone();
            let f: Vec<String> = finalizers(&d)
                .into_iter()
                .filter(|x| x != FOREGROUND && x != "kubernetes")
                .collect();
            d["metadata"]["finalizers"] = json!(f);
            st.commit(&rt, Some(o), d, tx)?;
        }
    }
}

/// A deleted CRD takes its kind and every object of it along.
fn drop_crd(st: &mut State, crd: &Value, tx: &broadcast::Sender<Arc<Change>>) {
    let Ok(t) = ResourceType::from_crd(crd) else {
        return;
    };
    let gr = GroupResource {
        group: t.group.clone(),
        resource: t.plural.clone(),
    };
    let objs = st.objects.remove(&gr).unwrap_or_default();
    for (_, o) in objs {
        st.uids.remove(uid(&o));
        st.rv += 1;
        let mut last = (*o).clone();
        last["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.record(gr.clone(), ChangeKind::Deleted, Arc::new(last), Some(o), tx);
    }
    Arc::make_mut(&mut st.registry).remove(&gr);
}
