//! One virtual cluster's state: objects, the resource-version clock, the watch log, and every
//! write rule the apiserver applies (preconditions, generation, status subresource, finalizers,
//! garbage collection, CRD registration).
//!
//! All state sits behind one mutex held only for the duration of a request's bookkeeping; watch
//! streams read from a bounded log plus a broadcast channel, so a slow watcher never blocks
//! writers (it is cut off with 410 Gone instead, like an expired watch).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::{
    faults::Faults,
    gc, patch,
    registry::{GroupResource, Registry, ResourceType},
    schema,
    selector::{FieldSelector, LabelSelector},
    ssa::{self, Scope, Writer},
    status::{ApiError, ApiResult},
    time,
};

/// Kind of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed change, as watchers see it.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub gr: GroupResource,
    pub kind: ChangeKind,
    pub obj: Arc<Value>,
    pub old: Option<Arc<Value>>,
}

/// How a patch body is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

/// A watch's start: the changes to send first, the live feed, and the resource version they lead up to.
pub type WatchStart = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>, u64);

/// Options common to writes.
#[derive(Clone, Debug, Default)]
pub struct WriteOpts {
    pub manager: String,
    pub dry_run: bool,
    pub force: bool,
}

/// What a delete request asks for.
#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

/// Requests served, by verb and resource: what tests count to prove a controller writes once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts(pub BTreeMap<(String, String), u64>);

impl RequestCounts {
    /// Requests with this verb on this resource (plural, e.g. `manifestworks`).
    pub fn get(&self, verb: &str, resource: &str) -> u64 {
        self.0
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Writes (create, update, patch, delete) on this resource.
    pub fn writes(&self, resource: &str) -> u64 {
        ["create", "update", "patch", "delete"]
            .iter()
            .map(|v| self.get(v, resource))
            .sum()
    }

    /// Every request counted.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

pub(crate) struct State {
    pub rv: u64,
    /// Shared snapshot: requests clone the Arc, CRD changes replace it (copy on write).
    pub registry: Arc<Registry>,
    pub objects: HashMap<GroupResource, BTreeMap<(String, String), Arc<Value>>>,
    log: VecDeque<Arc<Change>>,
    log_capacity: usize,
    /// Changes at or below this resource version are no longer in the log.
    compacted: u64,
    uid_counter: u64,
    /// UIDs of every stored object, for owner-reference checks.
    pub uids: std::collections::HashSet<String>,
}

/// A virtual cluster's API state.
pub struct Store {
    state: Mutex<State>,
    changes: broadcast::Sender<Arc<Change>>,
    pub faults: Mutex<Faults>,
    pub counts: Mutex<RequestCounts>,
    pub pod_logs: Mutex<HashMap<(String, String), String>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a handler panicked mid-request; the data is still usable for tests.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn meta_str<'v>(obj: &'v Value, field: &str) -> Option<&'v str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn key_of(obj: &Value) -> (String, String) {
    (
        meta_str(obj, "namespace").unwrap_or_default().to_string(),
        meta_str(obj, "name").unwrap_or_default().to_string(),
    )
}

fn resource_label(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.plural.clone()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    }
}

/// The object in the version the client asked for (storage keeps whatever was written).
pub fn in_version(obj: &Value, rt: &ResourceType, version: &str) -> Value {
    let mut out = obj.clone();
    out["apiVersion"] = json!(rt.api_version(version));
    out["kind"] = json!(rt.kind);
    out
}

/// Everything but metadata (and status, when it is a subresource): what `generation` tracks.
fn spec_part(obj: &Value, status_separate: bool) -> Value {
    let mut v = obj.clone();
    if let Value::Object(m) = &mut v {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
        if status_separate {
            m.remove("status");
        }
    }
    v
}

impl Store {
    pub fn new(log_capacity: usize) -> Self {
        let (changes, _) = broadcast::channel(log_capacity.max(16));
        let mut state = State {
            rv: 1,
            registry: Arc::new(Registry::builtin()),
            objects: HashMap::new(),
            log: VecDeque::new(),
            log_capacity,
            compacted: 1,
            uid_counter: 0,
            uids: Default::default(),
        };
        for ns in ["default", "kube-system", "kube-public"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let gr = GroupResource {
                group: String::new(),
                resource: "namespaces".into(),
            };
            let stamped = state.stamp_new(obj, "kube-apiserver", None);
            let stamped_uid = stamped
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .map(str::to_string);
            state
                .objects
                .entry(gr)
                .or_default()
                .insert((String::new(), ns.to_string()), Arc::new(stamped));
            if let Some(uid) = stamped_uid {
                state.uids.insert(uid);
            }
        }
        Self {
            state: Mutex::new(state),
            changes,
            faults: Mutex::new(Faults::default()),
            counts: Mutex::new(RequestCounts::default()),
            pod_logs: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn count(&self, verb: &str, resource: &str) {
        *lock(&self.counts)
            .0
            .entry((verb.to_string(), resource.to_string()))
            .or_default() += 1;
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.state().registry.clone()
    }

    pub fn current_rv(&self) -> u64 {
        self.state().rv
    }

    /// Registers a CRD given as an object (the same path as creating it through the API).
    pub fn install_crd(&self, crd: Value) -> ApiResult<()> {
        let name = meta_str(&crd, "name").unwrap_or_default().to_string();
        let rt = self
            .registry()
            .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .cloned()
            .ok_or_else(|| ApiError::new(500, "InternalError", "CRD kind missing"))?;
        let opts = WriteOpts {
            manager: "kmm-sim".into(),
            force: true,
            ..Default::default()
        };
        self.patch(
            &rt,
            "v1",
            None,
            &name,
            PatchType::Apply,
            &crd,
            Scope::Main {
                status_separate: true,
            },
            &opts,
        )
        .map(|_| ())
    }

    pub fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> ApiResult<Arc<Value>> {
        let st = self.state();
        st.find(rt, ns, name)
            .ok_or_else(|| ApiError::not_found(&resource_label(rt), name))
    }

    /// Objects matching the selectors, sorted by namespace and name, and the list's resource version.
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> (Vec<Arc<Value>>, u64) {
        let st = self.state();
        let items = st
            .objects
            .get(&rt.group_resource())
            .map(|objs| {
                objs.iter()
                    .filter(|((ons, _), _)| ns.is_none_or(|n| n == ons))
                    .filter(|(_, o)| labels.matches(o) && fields.matches(o))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default();
        (items, st.rv)
    }

    /// Starts a watch: the changes after `from` (or a synthetic ADDED per object when `from` is
    /// `None`), then live changes from the receiver. 410 Gone when `from` was compacted away.
    pub fn watch(&self, rt: &ResourceType, from: Option<u64>) -> ApiResult<WatchStart> {
        let st = self.state();
        let rx = self.changes.subscribe();
        let gr = rt.group_resource();
        let initial = match from {
            Some(rv) if rv < st.compacted => {
                return Err(ApiError::gone(format!(
                    "too old resource version: {rv} ({})",
                    st.compacted + 1
                )));
            }
            Some(rv) => st
                .log
                .iter()
                .filter(|c| c.rv > rv && c.gr == gr)
                .cloned()
                .collect(),
            None => st
                .objects
                .get(&gr)
                .into_iter()
                .flat_map(|m| m.values())
                .map(|o| {
                    Arc::new(Change {
                        rv: st.rv,
                        gr: gr.clone(),
                        kind: ChangeKind::Added,
                        obj: o.clone(),
                        old: None,
                    })
                })
                .collect(),
        };
        Ok((initial, rx, st.rv))
    }

    pub fn create(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        body: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let st = self.state();
        let mut obj = body;
        st.check_identity(rt, version, ns, None, &mut obj)?;
        if let Some(g) =
            meta_str(&obj, "generateName").filter(|_| meta_str(&obj, "name").is_none_or(str::is_empty))
        {
            let name = format!("{g}{}", random_suffix());
            obj["metadata"]["name"] = json!(name);
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        if name.is_empty() {
            return Err(ApiError::invalid(
                "metadata.name: Required value: name or generateName is required",
            ));
        }
        if st.find(rt, ns, &name).is_some() {
            return Err(ApiError::already_exists(&resource_label(rt), &name));
        }
        initial_status(rt, &mut obj);
        let writer = Writer {
            manager: &opts.manager,
            api_version: &rt.api_version(version),
            scope: Scope::Main {
                status_separate: rt.status_subresource,
            },
            schema: rt.schema(version),
        };
        ssa::record_update(None, &mut obj, &writer);
        self.store_new(st, rt, version, obj, opts)
    }

    /// PUT of the main resource or of `status`.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        body: Value,
        scope: Scope,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let mut st = self.state();
        let mut obj = body;
        st.check_identity(rt, version, ns, Some(name), &mut obj)?;
        let old = st
            .find(rt, ns, name)
            .ok_or_else(|| ApiError::not_found(&resource_label(rt), name))?;
        let rv = meta_str(&obj, "resourceVersion").unwrap_or_default().to_string();
        if rv.is_empty() && rt.crd.is_some() {
            return Err(ApiError::invalid(
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            ));
        }
        self.finish_write(&mut st, rt, version, old, obj, scope, opts)
    }

    /// PATCH of the main resource or of `status`; apply patches create missing objects.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        ptype: PatchType,
        body: &Value,
        scope: Scope,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let mut st = self.state();
        let old = st.find(rt, ns, name);
        let api_version = rt.api_version(version);
        let schema = rt.schema(version);
        let fields_schema = crate::fields::Schema::root(schema);
        if ptype == PatchType::Apply {
            let mut cfg = body.clone();
            st.check_identity(rt, version, ns, Some(name), &mut cfg)?;
            if let Some(Value::Object(meta)) = cfg.get_mut("metadata") {
                meta.remove("managedFields");
            }
            if opts.manager.is_empty() {
                return Err(ApiError::bad_request(
                    "PATCH, fieldManager: Required value: is required for apply patch",
                ));
            }
            let writer = Writer {
                manager: &opts.manager,
                api_version: &api_version,
                scope,
                schema,
            };
            let merged = ssa::apply(old.as_deref(), &cfg, &writer, opts.force).map_err(|c| {
                let causes: Vec<Value> = c
                    .0
                    .iter()
                    .map(|(m, p)| json!({"type": "FieldManagerConflict", "message": format!("conflict with {m:?}"), "field": p}))
                    .collect();
                ApiError::new(409, "Conflict", c.message()).with_details(json!({"causes": causes}))
            })?;
            return match old {
                Some(old) => {
                    let merged = restore_preconditions(merged, &cfg);
                    self.finish_write_owned(&mut st, rt, version, old, merged, scope, opts)
                }
                None => {
                    if scope == Scope::Status {
                        return Err(ApiError::not_found(&resource_label(rt), name));
                    }
                    drop(st);
                    self.create_applied(rt, version, ns, merged, opts)
                }
            };
        }
        let old = old.ok_or_else(|| ApiError::not_found(&resource_label(rt), name))?;
        let mut new = in_version(&old, rt, version);
        match ptype {
            PatchType::Merge => patch::merge_patch(&mut new, body),
            PatchType::Strategic => {
                if rt.crd.is_some() {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media types include: \
                         application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    ));
                }
                patch::strategic_merge_patch(&mut new, body, fields_schema, true)
            }
            PatchType::Json => patch::json_patch(&mut new, body).map_err(ApiError::invalid)?,
            PatchType::Apply => {}
        }
        // A resourceVersion in a patch body is a precondition; otherwise the patch is unconditional.
        let wants_rv = match ptype {
            PatchType::Merge | PatchType::Strategic => body.pointer("/metadata/resourceVersion").is_some(),
            _ => false,
        };
        if !wants_rv && let Some(rv) = meta_str(&old, "resourceVersion") {
            new["metadata"]["resourceVersion"] = json!(rv);
        }
        self.finish_write(&mut st, rt, version, old, new, scope, opts)
    }

    fn create_applied(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        obj: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let st = self.state();
        let mut obj = obj;
        st.check_identity(rt, version, ns, None, &mut obj)?;
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        if st.find(rt, ns, &name).is_some() {
            return Err(ApiError::conflict(&resource_label(rt), &name));
        }
        initial_status(rt, &mut obj);
        self.store_new(st, rt, version, obj, opts)
    }

    /// Stamps server metadata on a new object and stores it (or only shows it, for a dry run).
    fn store_new(
        &self,
        mut st: MutexGuard<'_, State>,
        rt: &ResourceType,
        version: &str,
        obj: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let stamped = st.stamp_new(obj, &opts.manager, rt.schema(version));
        if opts.dry_run {
            return Ok(in_version(&stamped, rt, version));
        }
        let stored = st.commit(rt, None, stamped, &self.changes)?;
        Ok(in_version(&stored, rt, version))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_write(
        &self,
        st: &mut State,
        rt: &ResourceType,
        version: &str,
        old: Arc<Value>,
        new: Value,
        scope: Scope,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let mut new = new;
        let api_version = rt.api_version(version);
        let writer = Writer {
            manager: &opts.manager,
            api_version: &api_version,
            scope,
            schema: rt.schema(version),
        };
        // Managed fields of the request body are ignored: the server keeps its own record.
        if let Some(mf) = old.pointer("/metadata/managedFields") {
            new["metadata"]["managedFields"] = mf.clone();
        } else if let Some(Value::Object(m)) = new.get_mut("metadata") {
            m.remove("managedFields");
        }
        let scoped = scope_merge(&old, new, rt, scope);
        let mut scoped = scoped;
        ssa::record_update(Some(&old), &mut scoped, &writer);
        self.finish_write_owned(st, rt, version, old, scoped, scope, opts)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_write_owned(
        &self,
        st: &mut State,
        rt: &ResourceType,
        version: &str,
        old: Arc<Value>,
        new: Value,
        scope: Scope,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let name = meta_str(&old, "name").unwrap_or_default().to_string();
        let want_rv = meta_str(&new, "resourceVersion").unwrap_or_default();
        if !want_rv.is_empty() && Some(want_rv) != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(&resource_label(rt), &name));
        }
        let mut new = scope_merge(&old, new, rt, scope);
        if let Some(schema) = rt.schema(version) {
            schema::prune_and_default(&mut new, schema);
        }
        // Server-owned metadata always comes from the stored object.
        for k in [
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old.get("metadata").and_then(|m| m.get(k)) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Some(Value::Object(m)) = new.get_mut("metadata") {
                        m.remove(k);
                    }
                }
            }
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            let old_f = finalizers(&old);
            if finalizers(&new).iter().any(|f| !old_f.contains(f)) {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "{} {name:?} is being deleted: no new finalizers can be added",
                        resource_label(rt)
                    ),
                ));
            }
        }
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        let same = in_version(&old, rt, version) == new;
        if same {
            return Ok(new);
        }
        if spec_part(&old, rt.status_subresource) != spec_part(&new, rt.status_subresource) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
        if opts.dry_run {
            return Ok(new);
        }
        let stored = st.commit(rt, Some(old), new, &self.changes)?;
        Ok(in_version(&stored, rt, version))
    }

    pub fn delete(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
    ) -> ApiResult<Value> {
        let mut st = self.state();
        let old = st
            .find(rt, ns, name)
            .ok_or_else(|| ApiError::not_found(&resource_label(rt), name))?;
        if let Some(uid) = &opts.uid
            && meta_str(&old, "uid") != Some(uid.as_str())
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid").unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && meta_str(&old, "resourceVersion") != Some(rv.as_str())
        {
            return Err(ApiError::conflict(&resource_label(rt), name));
        }
        if opts.dry_run {
            return Ok(in_version(&old, rt, version));
        }
        let out = gc::delete(&mut st, rt, old, opts.propagation.as_deref(), &self.changes)?;
        Ok(in_version(&out, rt, version))
    }

    /// Writes an object straight into the store (scale mode), bypassing HTTP.
    pub fn insert_direct(&self, rt: &ResourceType, obj: Value) -> ApiResult<()> {
        let mut st = self.state();
        let stamped = st.stamp_new(obj, "kmm-sim", rt.schema(&rt.versions[0]));
        st.commit(rt, None, stamped, &self.changes).map(|_| ())
    }
}

/// The status a new object starts with: custom resources with a status subresource start without
/// one, Pods `Pending`, Namespaces `Active`; other kinds keep what they were created with.
fn initial_status(rt: &ResourceType, obj: &mut Value) {
    let core = |kind: &str| rt.group.is_empty() && rt.kind == kind;
    if core("Pod") {
        obj["status"] = json!({"phase": "Pending"});
    } else if core("Namespace") {
        obj["status"] = json!({"phase": "Active"});
    } else if rt.status_subresource
        && rt.crd.is_some()
        && let Value::Object(m) = obj
    {
        m.remove("status");
    }
}

/// A write to one scope keeps the other scope's content from the stored object.
fn scope_merge(old: &Value, mut new: Value, rt: &ResourceType, scope: Scope) -> Value {
    match scope {
        Scope::Status => {
            let mut out = old.clone();
            match new.get_mut("status").map(Value::take) {
                Some(s) => out["status"] = s,
                None => {
                    if let Value::Object(m) = &mut out {
                        m.remove("status");
                    }
                }
            }
            if let Some(mf) = new.pointer("/metadata/managedFields") {
                out["metadata"]["managedFields"] = mf.clone();
            }
            if let Some(rv) = new.pointer("/metadata/resourceVersion") {
                out["metadata"]["resourceVersion"] = rv.clone();
            }
            out
        }
        Scope::Main {
            status_separate: true,
        } => {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Value::Object(m) = &mut new {
                        m.remove("status");
                    }
                }
            }
            let _ = rt;
            new
        }
        Scope::Main {
            status_separate: false,
        } => new,
    }
}

/// An apply whose configuration names a resourceVersion makes it a precondition.
fn restore_preconditions(mut merged: Value, cfg: &Value) -> Value {
    match cfg.pointer("/metadata/resourceVersion") {
        Some(rv) => merged["metadata"]["resourceVersion"] = rv.clone(),
        None => {
            if let Some(Value::Object(m)) = merged.get_mut("metadata") {
                m.remove("resourceVersion");
            }
        }
    }
    merged
}

pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| CHARS[fastrand::usize(..CHARS.len())] as char)
        .collect()
}

impl State {
    pub fn find(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Option<Arc<Value>> {
        let key = (
            if rt.namespaced {
                ns.unwrap_or_default().to_string()
            } else {
                String::new()
            },
            name.to_string(),
        );
        self.objects.get(&rt.group_resource())?.get(&key).cloned()
    }

    /// Checks apiVersion, kind, name and namespace of a request body against the URL.
    fn check_identity(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: Option<&str>,
        obj: &mut Value,
    ) -> ApiResult<()> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        }
        let want_av = rt.api_version(version);
        match obj.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => obj["apiVersion"] = json!(want_av),
            Some(av) if av == want_av => {}
            Some(av) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({want_av})"
                )));
            }
        }
        match obj.get("kind").and_then(Value::as_str) {
            None | Some("") => obj["kind"] = json!(rt.kind),
            Some(k) if k == rt.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    rt.kind
                )));
            }
        }
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = Value::Object(Map::new());
        }
        if let Some(name) = name {
            match meta_str(obj, "name") {
                None | Some("") => obj["metadata"]["name"] = json!(name),
                Some(n) if n == name => {}
                Some(n) => {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )));
                }
            }
        }
        if rt.namespaced {
            let ns = ns
                .ok_or_else(|| ApiError::bad_request("a namespaced resource needs a namespace in the URL"))?;
            match meta_str(obj, "namespace") {
                None | Some("") => obj["metadata"]["namespace"] = json!(ns),
                Some(n) if n == ns => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
            let ns_rt = GroupResource {
                group: String::new(),
                resource: "namespaces".into(),
            };
            match self
                .objects
                .get(&ns_rt)
                .and_then(|m| m.get(&(String::new(), ns.to_string())))
            {
                None => return Err(ApiError::not_found("namespaces", ns)),
                Some(n) if name.is_none() && n.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!(
                            "unable to create new content in namespace {ns} because it is being terminated"
                        ),
                    ));
                }
                Some(_) => {}
            }
        } else if let Some(Value::Object(m)) = obj.get_mut("metadata") {
            m.remove("namespace");
        }
        Ok(())
    }

    /// Server-set metadata of a new object, and the CRD schema's pruning and defaults.
    pub fn stamp_new(&mut self, mut obj: Value, _manager: &str, schema: Option<&Value>) -> Value {
        self.uid_counter += 1;
        let n = self.uid_counter;
        let r = fastrand::u64(..);
        let uid = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (r >> 32) as u32,
            (r >> 16) as u16,
            r as u16 & 0xfff,
            (n >> 48) as u16 & 0xfff,
            n & 0xffff_ffff_ffff
        );
        if let Some(schema) = schema {
            schema::prune_and_default(&mut obj, schema);
        }
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uid);
        meta["creationTimestamp"] = json!(time::now());
        meta["generation"] = json!(1);
        if let Value::Object(m) = meta {
            m.remove("deletionTimestamp");
            m.remove("resourceVersion");
            m.remove("deletionGracePeriodSeconds");
        }
        obj
    }

    /// Stores `new` (replacing `old`), stamps the next resource version and tells watchers.
    /// Objects being deleted whose last finalizer went away are removed instead.
    pub fn commit(
        &mut self,
        rt: &ResourceType,
        old: Option<Arc<Value>>,
        mut new: Value,
        tx: &broadcast::Sender<Arc<Change>>,
    ) -> ApiResult<Arc<Value>> {
        if new.pointer("/metadata/deletionTimestamp").is_some() && finalizers(&new).is_empty() {
            if let Some(Value::Object(m)) = new.get_mut("metadata") {
                m.remove("finalizers");
            }
            let old = old.unwrap_or_else(|| Arc::new(new.clone()));
            return gc::remove(self, rt, old, Some(new), tx);
        }
        if rt.crd.is_none() && rt.group == "apiextensions.k8s.io" {
            let t = ResourceType::from_crd(&new).map_err(ApiError::invalid)?;
            let names = json!({"plural": t.plural, "singular": t.singular, "kind": t.kind,
                               "shortNames": t.short_names, "listKind": format!("{}List", t.kind)});
            new["status"] = json!({
                "acceptedNames": names, "storedVersions": [t.versions[0]],
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                     "message": "no conflicts found", "lastTransitionTime": time::now()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                     "message": "the initial names have been accepted", "lastTransitionTime": time::now()}]
            });
            if let Some(prev) = &old
                && prev
                    .get("status")
                    .is_some_and(|s| s.get("acceptedNames") == new["status"].get("acceptedNames"))
            {
                new["status"] = prev["status"].clone();
            }
            Arc::make_mut(&mut self.registry).insert(t);
        }
        let obj = self.put(rt.group_resource(), new, old, tx);
        self.mirror_event(&rt.group_resource(), &obj, false, tx);
        if let Some(uid) = obj.pointer("/metadata/uid").and_then(Value::as_str) {
            self.uids.insert(uid.to_string());
        }
        if self.dangling(&obj) {
            // Like the garbage collector: a dependent whose owners are all gone is deleted.
            gc::delete(self, rt, obj.clone(), Some("Background"), tx)?;
        }
        Ok(obj)
    }

    /// Has owner references, none of which names an existing object.
    fn dangling(&self, obj: &Value) -> bool {
        let Some(refs) = obj.pointer("/metadata/ownerReferences").and_then(Value::as_array) else {
            return false;
        };
        obj.pointer("/metadata/deletionTimestamp").is_none()
            && !refs.is_empty()
            && refs
                .iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .all(|u| !self.uids.contains(u))
    }

    pub fn record(
        &mut self,
        gr: GroupResource,
        kind: ChangeKind,
        obj: Arc<Value>,
        old: Option<Arc<Value>>,
        tx: &broadcast::Sender<Arc<Change>>,
    ) {
        let change = Arc::new(Change {
            rv: self.rv,
            gr,
            kind,
            obj,
            old,
        });
        self.log.push_back(change.clone());
        while self.log.len() > self.log_capacity {
            if let Some(c) = self.log.pop_front() {
                self.compacted = c.rv;
            }
        }
        // No receiver is not an error: nobody is watching.
        let _ = tx.send(change);
    }

    /// `events.k8s.io/v1` Events also show as `v1` Events, as the apiserver serves one store in
    /// both versions: kube-rs records the former, `kubectl describe` reads the latter.
    pub fn mirror_event(
        &mut self,
        gr: &GroupResource,
        ev: &Value,
        deleted: bool,
        tx: &broadcast::Sender<Arc<Change>>,
    ) {
        if gr.group != "events.k8s.io" || gr.resource != "events" {
            return;
        }
        let core = GroupResource {
            group: String::new(),
            resource: "events".into(),
        };
        let key = key_of(ev);
        let old = self.objects.get(&core).and_then(|m| m.get(&key)).cloned();
        if !deleted {
            self.put(core, crate::events::to_core(ev), old, tx);
        } else if let Some(old) = old {
            if let Some(m) = self.objects.get_mut(&core) {
                m.remove(&key);
            }
            self.rv += 1;
            self.record(core, ChangeKind::Deleted, old.clone(), Some(old), tx);
        }
    }

    /// Stores `obj` under the next resource version (replacing `old`) and tells watchers.
    fn put(
        &mut self,
        gr: GroupResource,
        mut obj: Value,
        old: Option<Arc<Value>>,
        tx: &broadcast::Sender<Arc<Change>>,
    ) -> Arc<Value> {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let obj = Arc::new(obj);
        let kind = if old.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.objects
            .entry(gr.clone())
            .or_default()
            .insert(key_of(&obj), obj.clone());
        self.record(gr, kind, obj.clone(), old, tx);
        obj
    }

    /// Forgets the watch history up to now: older resource versions get 410 Gone.
    pub fn compact(&mut self) {
        self.log.clear();
        self.compacted = self.rv;
    }
}

impl Store {
    /// Forgets the watch history (tests of 410 Gone).
    pub fn compact(&self) {
        self.state().compact();
    }
}
