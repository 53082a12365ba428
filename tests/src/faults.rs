//! A fault-injecting HTTP proxy between a product binary (or a test's client) and its
//! kube-apiserver or registry: the weather a real hub sees (throttling with Retry-After, 5xx
//! bursts, slow answers, dropped watches, refused connections), switched on and off at run time
//! through a shared handle, drawn from a seeded generator so a run can be replayed, and counted.
//!
//! Clients speak plain HTTP to the proxy (kube-rs sends a ServiceAccount's bearer token over
//! http, and the proxy forwards the Authorization header); the proxy speaks TLS to the real
//! apiserver and trusts its CA. [`rewrite_kubeconfig`] points a kubeconfig at the proxy.

mod cut;
mod kubeconfig;
mod rng;

use std::{
    fmt,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
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

pub use cut::CutBody;
pub use kubeconfig::{point_at, rewrite_kubeconfig};
pub use rng::XorShift;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;
type Upstream = Client<HttpsConnector<HttpConnector>, Incoming>;

/// What the proxy does to traffic; [`Faults::default`] is a transparent proxy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Share of requests answered by the proxy with an error instead of being forwarded.
    pub error_rate: f64,
    /// The status codes injected errors use, picked uniformly (429, 500, 503 when empty).
    pub error_codes: Vec<u16>,
    /// The Retry-After of an injected 429 or 503 (whole seconds; 1 s when zero).
    pub retry_after: Duration,
    /// Each forwarded request waits a uniform time in `[latency / 2, latency]` first.
    pub latency: Duration,
    /// Watch responses (`watch=true`) are broken off after a uniform time in this range.
    pub watch_cut: Option<(Duration, Duration)>,
}

impl Faults {
    /// The chaos scenario's weather: `error_rate` errors of every kind, 100 to 200 ms latency,
    /// watches cut within 2 to 10 s.
    pub fn weather(error_rate: f64) -> Self {
        Self {
            error_rate,
            error_codes: Vec::new(),
            retry_after: Duration::from_secs(1),
            latency: Duration::from_millis(200),
            watch_cut: Some((Duration::from_secs(2), Duration::from_secs(10))),
        }
    }

    fn codes(&self) -> &[u16] {
        if self.error_codes.is_empty() {
            &[429, 500, 503]
        } else {
            &self.error_codes
        }
    }
}

/// What happens to one request, drawn before it is forwarded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Answer with this status instead of forwarding.
    pub error: Option<u16>,
    pub delay: Duration,
    /// Break the response body off after this long (watches only).
    pub cut: Option<Duration>,
}

/// Draws the fate of one request from `faults` (pure apart from the generator).
pub fn decide(faults: &Faults, rng: &mut XorShift, is_watch: bool) -> Decision {
    if rng.chance(faults.error_rate) {
        let codes = faults.codes();
        let pick = rng.between(0, codes.len() as u64 - 1) as usize;
        return Decision {
            error: Some(codes[pick]),
            ..Decision::default()
        };
    }
    let max = faults.latency.as_millis() as u64;
    let delay = Duration::from_millis(rng.between(max / 2, max));
    let cut = match faults.watch_cut {
        Some((lo, hi)) if is_watch => Some(Duration::from_millis(
            rng.between(lo.as_millis() as u64, hi.as_millis() as u64),
        )),
        _ => None,
    };
    Decision {
        error: None,
        delay,
        cut,
    }
}

/// Whether a request is a watch (`watch=true` or `watch=1` in its query).
pub fn is_watch(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

/// What the proxy did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub forwarded: u64,
    pub errors_429: u64,
    pub errors_500: u64,
    pub errors_503: u64,
    /// Injected errors with another code.
    pub errors_other: u64,
    /// Requests that waited for injected latency.
    pub delayed: u64,
    pub watches_cut: u64,
    /// Connections closed at accept and requests dropped while refusing.
    pub refused: u64,
}

impl Counts {
    pub fn errors(&self) -> u64 {
        self.errors_429 + self.errors_500 + self.errors_503 + self.errors_other
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "forwarded {}, errors 429/500/503/other {}/{}/{}/{}, delayed {}, watches cut {}, refused {}",
            self.forwarded,
            self.errors_429,
            self.errors_500,
            self.errors_503,
            self.errors_other,
            self.delayed,
            self.watches_cut,
            self.refused
        )
    }
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    errors_429: AtomicU64,
    errors_500: AtomicU64,
    errors_503: AtomicU64,
    errors_other: AtomicU64,
    delayed: AtomicU64,
    watches_cut: AtomicU64,
    refused: AtomicU64,
}

struct Shared {
    faults: Mutex<Faults>,
    rng: Mutex<XorShift>,
    refuse_until: Mutex<Option<Instant>>,
    counts: Counters,
    seed: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn refusing(&self) -> bool {
        lock(&self.refuse_until).is_some_and(|until| Instant::now() < until)
    }

    fn count_error(&self, code: u16) {
        let c = &self.counts;
        match code {
            429 => &c.errors_429,
            500 => &c.errors_500,
            503 => &c.errors_503,
            _ => &c.errors_other,
        }
        .fetch_add(1, Ordering::Relaxed);
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
        let c = &self.0.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            forwarded: get(&c.forwarded),
            errors_429: get(&c.errors_429),
            errors_500: get(&c.errors_500),
            errors_503: get(&c.errors_503),
            errors_other: get(&c.errors_other),
            delayed: get(&c.delayed),
            watches_cut: get(&c.watches_cut),
            refused: get(&c.refused),
        }
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
        shared.count_error(code);
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
    fn decisions_follow_the_rates_and_replay_from_the_seed() {
        let faults = Faults::weather(0.2);
        let draw = |seed| {
            let mut rng = XorShift::new(seed);
            (0..1000)
                .map(|i| decide(&faults, &mut rng, i % 2 == 0))
                .collect::<Vec<_>>()
        };
        let run = draw(42);
        assert_eq!(run, draw(42));
        let errors = run.iter().filter(|d| d.error.is_some()).count();
        assert!((120..280).contains(&errors), "{errors} errors of 1000 at 20 %");
        assert!(
            run.iter()
                .all(|d| d.error.is_some() || d.delay <= Duration::from_millis(200))
        );
        assert!(
            run.iter()
                .enumerate()
                .all(|(i, d)| d.error.is_some() || (d.cut.is_some() == (i % 2 == 0)))
        );
        let off = decide(&Faults::default(), &mut XorShift::new(1), true);
        assert_eq!(off, Decision::default());
    }

    #[test]
    fn watches_are_recognised_by_their_query() {
        let uri = |s: &str| s.parse::<Uri>().unwrap_or_default();
        assert!(is_watch(&uri("/api/v1/pods?watch=true&resourceVersion=1")));
        assert!(is_watch(&uri("/api/v1/pods?allowWatchBookmarks=true&watch=1")));
        assert!(!is_watch(&uri("/api/v1/pods?allowWatchBookmarks=true")));
        assert!(!is_watch(&uri("/api/v1/pods")));
    }

    #[test]
    fn injected_errors_look_like_the_apiserver_s() {
        let r = error_response(429, 3);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        assert!(!error_response(500, 3).headers().contains_key(header::RETRY_AFTER));
    }
}
