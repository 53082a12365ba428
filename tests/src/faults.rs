//! A fault-injecting HTTP proxy between a product binary (or a test's client) and its
//! kube-apiserver or registry: the weather a real hub sees (throttling with Retry-After, 5xx
//! bursts, slow answers, dropped watches, refused connections), switched on and off at run time
//! through a shared handle, drawn from a seeded generator so a run can be replayed, and counted.
//!
//! Clients speak plain HTTP to the proxy (kube-rs sends a ServiceAccount's bearer token over
//! http, and the proxy forwards the Authorization header); the proxy speaks TLS to the real
//! apiserver and trusts its CA. [`rewrite_kubeconfig`] points a kubeconfig at the proxy.

mod counts;
mod cut;
mod kubeconfig;
mod rng;
mod weather;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tokio::{net::TcpListener, task::JoinHandle};

use counts::Counters;
pub use counts::Counts;
pub use cut::CutBody;
pub use kubeconfig::{point_at, rewrite_kubeconfig};
pub use rng::XorShift;
pub use weather::{Decision, Faults, decide, is_watch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;
type Upstream = Client<HttpsConnector<HttpConnector>, Incoming>;

struct Shared {
    faults: Mutex<Faults>,
    rng: Mutex<XorShift>,
    refuse_until: Mutex<Option<Instant>>,
    counts: Counters,
    seed: u64,
    /// Set when the proxy is dropped: open connections stop forwarding too.
    stopped: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn refusing(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
            || lock(&self.refuse_until).is_some_and(|until| Instant::now() < until)
    }
}

/// Turns a proxy's faults on and off while it runs; cheap to clone.
#[derive(Clone)]
pub struct FaultHandle(Arc<Shared>);

impl FaultHandle {
    /// Replaces the faults (in-flight requests keep what they drew).
    pub fn set(&self, faults: Faults) {
        *lock(&self.0.faults) = faults;
    }

    /// Back to a transparent proxy (refusal ended too).
    pub fn clear(&self) {
        self.set(Faults::default());
        *lock(&self.0.refuse_until) = None;
    }

    pub fn faults(&self) -> Faults {
        lock(&self.0.faults).clone()
    }

    /// Closes every new connection, and drops every request on an open one, for `span`.
    pub fn refuse_for(&self, span: Duration) {
        *lock(&self.0.refuse_until) = Some(Instant::now() + span);
    }

    pub fn seed(&self) -> u64 {
        self.0.seed
    }

    pub fn counts(&self) -> Counts {
        self.0.counts.snapshot()
    }
}

/// A running proxy on 127.0.0.1; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    handle: FaultHandle,
    task: JoinHandle<()>,
}

impl std::ops::Deref for FaultProxy {
    type Target = FaultHandle;

    fn deref(&self) -> &FaultHandle {
        &self.handle
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.handle.0.stopped.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

impl FaultProxy {
    /// A transparent proxy to `upstream` (`https://host:port` trusting the PEM CA at `ca`, or
    /// `http://host:port`), its faults drawn from `seed`.
    pub async fn start(upstream: &str, ca: Option<&Path>, seed: u64) -> anyhow::Result<Self> {
        let base: Uri = upstream.parse().with_context(|| format!("upstream {upstream}"))?;
        let client = upstream_client(ca)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            faults: Mutex::new(Faults::default()),
            rng: Mutex::new(XorShift::new(seed)),
            refuse_until: Mutex::new(None),
            counts: Counters::default(),
            seed,
            stopped: AtomicBool::new(false),
        });
        let task = tokio::spawn(serve(listener, shared.clone(), client, base));
        Ok(Self {
            addr,
            handle: FaultHandle(shared),
            task,
        })
    }

    /// The URL a client uses: `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }
}

fn upstream_client(ca: Option<&Path>) -> anyhow::Result<Upstream> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
            roots.add(cert.context("a CA certificate")?)?;
        }
    }
    let tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, client: Upstream, base: Uri) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if shared.refusing() {
            shared.counts.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        let (shared, client, base) = (shared.clone(), client.clone(), base.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(shared.clone(), client.clone(), base.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    shared: Arc<Shared>,
    client: Upstream,
    base: Uri,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, BoxError> {
    if shared.refusing() {
        shared.counts.refused.fetch_add(1, Ordering::Relaxed);
        return Err("fault proxy: refusing".into());
    }
    let decision = {
        let faults = lock(&shared.faults).clone();
        decide(&faults, &mut lock(&shared.rng), is_watch(req.uri()))
    };
    if let Some(code) = decision.error {
        shared.counts.error(code);
        let retry = lock(&shared.faults).retry_after.as_secs().max(1);
        return Ok(error_response(code, retry));
    }
    if !decision.delay.is_zero() {
        shared.counts.delayed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(decision.delay).await;
    }
    let (mut parts, body) = req.into_parts();
    let mut uri = base.into_parts();
    uri.path_and_query = parts.uri.path_and_query().cloned();
    parts.uri = Uri::from_parts(uri)?;
    parts.headers.remove(header::HOST);
    shared.counts.forwarded.fetch_add(1, Ordering::Relaxed);
    let response = match client.request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            return Ok(status(
                502,
                "BadGateway",
                &format!("fault proxy upstream: {e}"),
                None,
            ));
        }
    };
    Ok(response.map(|body| match decision.cut {
        Some(after) => CutBody::new(body, after, shared.clone()).boxed(),
        None => body.map_err(BoxError::from).boxed(),
    }))
}

/// An injected error as the apiserver would write it: a `Status`, with Retry-After on 429/503.
fn error_response(code: u16, retry_after_secs: u64) -> Response<ProxyBody> {
    let reason = match code {
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    };
    let retry = matches!(code, 429 | 503).then_some(retry_after_secs);
    status(code, reason, &format!("fault proxy: injected {code}"), retry)
}

fn status(code: u16, reason: &str, message: &str, retry: Option<u64>) -> Response<ProxyBody> {
    let mut body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if let Some(secs) = retry {
        body["details"] = serde_json::json!({"retryAfterSeconds": secs});
    }
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(secs) = retry {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_errors_look_like_the_apiserver_s() {
        let r = error_response(429, 3);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        assert!(!error_response(500, 3).headers().contains_key(header::RETRY_AFTER));
    }
}
