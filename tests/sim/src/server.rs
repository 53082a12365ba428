//! The HTTP side: routing Kubernetes REST paths to the store, query parameters, content types,
//! watch streams, tables, and fault injection.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    audit::{self, AuditLog, AuditRecord},
    discovery,
    registry::ResourceType,
    selector::{FieldSelector, LabelSelector},
    ssa::Scope,
    status::{ApiError, ApiResult},
    store::{Change, ChangeKind, DeleteOpts, PatchType, Store, WriteOpts, in_version, lock},
    table,
};

/// Shared by every request to one cluster.
pub struct ServerState {
    pub store: Store,
    /// Wakes every open watch stream so it ends (dropped watches).
    pub drop_watches: Notify,
    /// How often watch streams send bookmarks when asked to.
    pub bookmark_interval: Duration,
    /// Every resource request's identity and authorization attributes.
    pub(crate) audit: AuditLog,
}

pub async fn handle(State(state): State<Arc<ServerState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let query = parse_query(parts.uri.query().unwrap_or_default());
    let path = parts.uri.path().to_string();
    let is_write = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let faults = lock(&state.store.faults).clone();
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    if let Some(code) = faults.pick(is_write) {
        let err = ApiError::new(code, reason_for(code), format!("injected fault: {code}"));
        let mut resp = error_response(&err);
        if code == 429 {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        return resp;
    }
    match route(&state, &parts.method, &path, &query, &parts.headers, &bytes).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

fn reason_for(code: u16) -> &'static str {
    match code {
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        403 => "Forbidden",
        409 => "Conflict",
        _ => "Unknown",
    }
}

fn error_response(e: &ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        e.to_status().to_string(),
    )
        .into_response()
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request for a resource, once the path is understood.
struct Target {
    rt: ResourceType,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

async fn route(
    state: &Arc<ServerState>,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let registry = state.store.registry();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(json_response(StatusCode::OK, &discovery::version())),
        ["healthz" | "readyz" | "livez", ..] => return Ok((StatusCode::OK, "ok").into_response()),
        ["openapi", "v2"] => {
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .unwrap_or_default();
            if accept.contains("protobuf") {
                let ctype = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
                return Ok((
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, ctype)],
                    discovery::openapi_v2_protobuf(),
                )
                    .into_response());
            }
            return Ok(json_response(StatusCode::OK, &discovery::openapi_v2()));
        }
        ["openapi", "v3"] => return Ok(json_response(StatusCode::OK, &json!({"paths": {}}))),
        ["api"] => return Ok(json_response(StatusCode::OK, &discovery::core_versions())),
        ["apis"] => return Ok(json_response(StatusCode::OK, &discovery::groups(&registry))),
        ["api", v] => {
            return discovery::resources(&registry, "", v).map(|r| json_response(StatusCode::OK, &r));
        }
        ["apis", g] => return discovery::group(&registry, g).map(|r| json_response(StatusCode::OK, &r)),
        ["apis", g, v] => {
            return discovery::resources(&registry, g, v).map(|r| json_response(StatusCode::OK, &r));
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::not_found("path", path)),
    };
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => (
            Some(ns.to_string()),
            *plural,
            tail.first().copied(),
            tail.get(1).copied(),
        ),
        [plural, tail @ ..] => (None, *plural, tail.first().copied(), tail.get(1).copied()),
        [] => return Err(ApiError::not_found("path", path)),
    };
    let rt = registry
        .lookup(group, version, plural)
        .cloned()
        .ok_or_else(|| ApiError::not_found("the server could not find the requested resource", path))?;
    if rt.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::not_found(
            "the server could not find the requested resource",
            path,
        ));
    }
    let target = Target {
        namespace: if rt.namespaced { namespace } else { None },
        rt,
        version: version.to_string(),
        name: name.map(str::to_string),
        sub: sub.map(str::to_string),
    };
    audit(state, method, group, &target, query, headers);
    serve(state, method, target, query, headers, body).await
}

/// Records what an authorizer would check for this request. A server-side apply that creates
/// its object is also checked as `create`, as the apiserver does.
fn audit(
    state: &ServerState,
    method: &Method,
    group: &str,
    t: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) {
    let record = AuditRecord {
        user: audit::user_of(headers),
        verb: verb_of(method, t, query).to_string(),
        group: group.to_string(),
        resource: t.rt.plural.clone(),
        subresource: t.sub.clone(),
        namespace: t.namespace.clone(),
        name: t.name.clone(),
    };
    let is_apply = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("application/apply-patch"));
    let creates = record.verb == "patch"
        && is_apply
        && t.sub.is_none()
        && state
            .store
            .get(
                &t.rt,
                t.namespace.as_deref(),
                t.name.as_deref().unwrap_or_default(),
            )
            .is_err();
    if creates {
        state.audit.push(AuditRecord {
            verb: "create".into(),
            ..record.clone()
        });
    }
    state.audit.push(record);
}

fn verb_of(method: &Method, t: &Target, query: &HashMap<String, String>) -> &'static str {
    match (method.as_str(), t.name.is_some()) {
        ("GET", false) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

async fn serve(
    state: &Arc<ServerState>,
    method: &Method,
    t: Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let store = &state.store;
    let verb = verb_of(method, &t, query);
    store.count(verb, &t.rt.plural);
    let ns = t.namespace.as_deref();
    let scope = match t.sub.as_deref() {
        None => Scope::Main {
            status_separate: t.rt.status_subresource,
        },
        Some("status") if t.rt.status_subresource => Scope::Status,
        Some("log") if t.rt.kind == "Pod" && t.rt.group.is_empty() => {
            let name = t.name.clone().unwrap_or_default();
            store.get(&t.rt, ns, &name)?;
            let text = lock(&store.pod_logs)
                .get(&(ns.unwrap_or_default().to_string(), name))
                .cloned()
                .unwrap_or_default();
            return Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response());
        }
        Some(other) => return Err(ApiError::not_found("subresource", other)),
    };
    let opts = WriteOpts {
        manager: query
            .get("fieldManager")
            .cloned()
            .unwrap_or_else(|| default_manager(headers)),
        dry_run: query.get("dryRun").is_some_and(|d| d == "All"),
        force: query.get("force").is_some_and(|f| f == "true"),
    };
    let wants_table = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        });
    match verb {
        "get" => {
            let obj = store.get(&t.rt, ns, t.name.as_deref().unwrap_or_default())?;
            let obj = in_version(&obj, &t.rt, &t.version);
            if wants_table {
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(&t.rt, &t.version, &[obj], None),
                ));
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
        "list" => {
            let (labels, fields) = selectors(&t.rt, query)?;
            let (items, rv) = store.list(&t.rt, ns, &labels, &fields);
            let offset: usize = query.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
            let limit: usize = query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .filter(|l| *l > 0)
                .unwrap_or(usize::MAX);
            let page: Vec<Value> = items
                .iter()
                .skip(offset)
                .take(limit)
                .map(|o| in_version(o, &t.rt, &t.version))
                .collect();
            let next = offset.saturating_add(page.len());
            let cont = if next < items.len() {
                next.to_string()
            } else {
                String::new()
            };
            if wants_table {
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(&t.rt, &t.version, &page, Some(rv)),
                ));
            }
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if !cont.is_empty() {
                meta["continue"] = json!(cont);
                meta["remainingItemCount"] = json!(items.len() - next);
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"apiVersion": t.rt.api_version(&t.version), "kind": format!("{}List", t.rt.kind),
                        "metadata": meta, "items": page}),
            ))
        }
        "watch" => watch(state.clone(), t, query, wants_table).map(|b| {
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(b)
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }),
        "create" => {
            let obj = parse_body(headers, body)?;
            let created = store.create(&t.rt, &t.version, ns, obj, &opts)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        "update" => {
            let obj = parse_body(headers, body)?;
            let name = t.name.as_deref().unwrap_or_default();
            Ok(json_response(
                StatusCode::OK,
                &store.update(&t.rt, &t.version, ns, name, obj, scope, &opts)?,
            ))
        }
        "patch" => {
            let ctype = headers
                .get(header::CONTENT_TYPE)
                .and_then(|c| c.to_str().ok())
                .unwrap_or_default();
            let ptype = match ctype.split(';').next().unwrap_or_default().trim() {
                "application/merge-patch+json" => PatchType::Merge,
                "application/json-patch+json" => PatchType::Json,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("unsupported patch type {other:?}"),
                    ));
                }
            };
            if ptype != PatchType::Apply && opts.force {
                return Err(ApiError::bad_request(
                    "force: Forbidden: may not be specified for non-apply patch",
                ));
            }
            let patch = parse_body(headers, body)?;
            let name = t.name.as_deref().unwrap_or_default();
            let existed = store.get(&t.rt, ns, name).is_ok();
            let out = store.patch(&t.rt, &t.version, ns, name, ptype, &patch, scope, &opts)?;
            let code = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok(json_response(code, &out))
        }
        "delete" => {
            let body_opts: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(body).unwrap_or(json!({}))
            };
            let propagation = query
                .get("propagationPolicy")
                .cloned()
                .or_else(|| {
                    body_opts
                        .get("propagationPolicy")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .or_else(
                    || match body_opts.get("orphanDependents").and_then(Value::as_bool) {
                        Some(true) => Some("Orphan".into()),
                        _ => None,
                    },
                );
            let dopts = DeleteOpts {
                propagation,
                uid: body_opts
                    .pointer("/preconditions/uid")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                resource_version: body_opts
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                dry_run: opts.dry_run
                    || body_opts
                        .get("dryRun")
                        .and_then(Value::as_array)
                        .is_some_and(|d| d.iter().any(|x| x == "All")),
            };
            let name = t.name.as_deref().unwrap_or_default();
            let out = store.delete(&t.rt, &t.version, ns, name, &dopts)?;
            let gone = store.get(&t.rt, ns, name).is_err();
            if gone && !dopts.dry_run {
                let uid = out.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                            "details": {"name": name, "group": t.rt.group, "kind": t.rt.plural, "uid": uid}}),
                ));
            }
            Ok(json_response(StatusCode::OK, &out))
        }
        "deletecollection" => {
            let (labels, fields) = selectors(&t.rt, query)?;
            let (items, _) = store.list(&t.rt, ns, &labels, &fields);
            let dopts = DeleteOpts {
                propagation: query.get("propagationPolicy").cloned(),
                ..DeleteOpts::default()
            };
            let mut deleted = Vec::new();
            for o in items {
                let name = o
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let ons = o.pointer("/metadata/namespace").and_then(Value::as_str);
                deleted.push(store.delete(&t.rt, &t.version, ons, name, &dopts)?);
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"apiVersion": t.rt.api_version(&t.version), "kind": format!("{}List", t.rt.kind),
                        "metadata": {"resourceVersion": store.current_rv().to_string()}, "items": deleted}),
            ))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("method {method} not allowed"),
        )),
    }
}

/// kubectl and client-go derive the default field manager from the User-Agent's program name.
fn default_manager(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|u| u.to_str().ok())
        .and_then(|u| u.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<Value> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or_default();
    if ctype.contains("yaml") {
        let text = std::str::from_utf8(body)
            .map_err(|e| ApiError::bad_request(format!("body is not UTF-8: {e}")))?;
        return serde_saphyr::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
}

fn selectors(
    rt: &ResourceType,
    query: &HashMap<String, String>,
) -> ApiResult<(LabelSelector, FieldSelector)> {
    let labels = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    let supported = |f: &str| {
        matches!(f, "metadata.name" | "metadata.namespace") || rt.selectable_fields.iter().any(|s| s == f)
    };
    let fields = FieldSelector::parse(
        query.get("fieldSelector").map(String::as_str).unwrap_or_default(),
        &supported,
        &rt.kind,
    )
    .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": obj}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Starts a watch stream: initial events, then live changes, bookmarks, timeout or drop.
fn watch(
    state: Arc<ServerState>,
    t: Target,
    query: &HashMap<String, String>,
    table: bool,
) -> ApiResult<Body> {
    let (labels, fields) = selectors(&t.rt, query)?;
    let send_initial = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let from = match query.get("resourceVersion").map(String::as_str) {
        _ if send_initial => None,
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let (initial, mut rx, start_rv) = match state.store.watch(&t.rt, from) {
        Ok(start) => start,
        // Like the watch cache: the stream opens, then says 410 Gone as its only event.
        Err(e) if e.code == 410 => {
            return Ok(Body::from(event_line("ERROR", &e.to_status())));
        }
        Err(e) => return Err(e),
    };
    let (tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    let drop_now = lock(&state.store.faults).drop_watches;
    let ns = t.namespace.clone();
    let matches = move |o: &Value| {
        ns.as_deref()
            .is_none_or(|n| o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(n))
            && labels.matches(o)
            && fields.matches(o)
    };
    let render = {
        let rt = t.rt.clone();
        let version = t.version.clone();
        move |o: &Value| {
            let v = in_version(o, &rt, &version);
            if table {
                table::table(&rt, &version, &[v], None)
            } else {
                v
            }
        }
    };
    let bookmark = {
        let api_version = t.rt.api_version(&t.version);
        let kind = t.rt.kind.clone();
        move |rv: u64, end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            event_line(
                "BOOKMARK",
                &json!({"apiVersion": api_version, "kind": kind, "metadata": meta}),
            )
        }
    };
    let gr = t.rt.group_resource();
    tokio::spawn(async move {
        let mut last = start_rv;
        for c in &initial {
            if let Some(line) = classify(c, &matches)
                && tx.send(Ok(event_line(line, &render(&c.obj)))).await.is_err()
            {
                return;
            }
        }
        if send_initial && tx.send(Ok(bookmark(start_rv, true))).await.is_err() {
            return;
        }
        if drop_now {
            return;
        }
        let deadline = timeout.map(|d| tokio::time::Instant::now() + d);
        let mut tick = tokio::time::interval(state.bookmark_interval);
        tick.tick().await;
        loop {
            let sleep_until =
                deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                change = rx.recv() => match change {
                    Ok(c) => {
                        if c.gr != gr || c.rv <= start_rv {
                            continue;
                        }
                        last = c.rv;
                        if let Some(kind) = classify(&c, &matches)
                            && tx.send(Ok(event_line(kind, &render(&c.obj)))).await.is_err() {
                                return;
                            }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let gone = ApiError::gone("watch fell too far behind; relist");
                        let _ = tx.send(Ok(event_line("ERROR", &gone.to_status()))).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    if tx.send(Ok(bookmark(last, false))).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(sleep_until) => return,
                _ = state.drop_watches.notified() => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Body::from_stream(ReceiverStream::new(body_rx)))
}

/// The event type a watcher with these selectors sees for a change, if any.
fn classify(c: &Change, matches: &dyn Fn(&Value) -> bool) -> Option<&'static str> {
    let now = matches(&c.obj);
    let before = c.old.as_deref().is_some_and(matches);
    match c.kind {
        ChangeKind::Added => now.then_some("ADDED"),
        ChangeKind::Deleted => (now || before).then_some("DELETED"),
        ChangeKind::Modified => match (before, now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        let q = parse_query("labelSelector=app%3Dkmm%2Ctier+in+%28a%2Cb%29&watch=true&x");
        assert_eq!(q["labelSelector"], "app=kmm,tier in (a,b)");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "");
        assert_eq!(decode("%zz%4"), "%zz%4");
    }
}
