//! `ek serve`: an OpenAI-compatible HTTP gateway (axum, HTTP/1.1) in front of the upstream the
//! usual endpoint flags (or `--config`/`--provider`) name (docs/guide-serve.md).
//!
//! - `POST /v1/chat/completions`: an upstream model passes through the library's provider
//!   (its transport, retry policy and budget ledger), as JSON or SSE (`stream: true`, tools and
//!   usage included); a virtual model (`ek:consensus:N:MODEL`, `ek:refine:MODEL`,
//!   `ek:pipe:NAME`) runs a pattern and answers a `chat.completion` whose `usage` is the
//!   pattern's total and whose `executionkit` object holds its metadata and cost; streamed, it
//!   sends `: keep-alive` comments while the pattern runs, then the value, then usage.
//! - `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text).
//! - `--keys FILE`: Bearer keys stored as SHA-256 hashes, each with a budget per window,
//!   reserved before every upstream call; without it no authentication, and loopback only.
//! - Bodies over 8 MiB are refused (413); every response passes through the secrets filter, so
//!   an upstream key never reaches a client; SIGTERM / Ctrl-C stop accepting and drain the
//!   requests in flight; a client that goes away drops its request's future, which cancels
//!   its pattern and its calls in flight (what they spent stays counted in `/metrics`).

mod keys;
mod metrics;
mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use executionkit::{
    Budget, BudgetLedger, CallOptions, Consensus, CostRates, CostTracker, Error, LlmProvider,
    Pattern as _, PatternResult, Pipe, RefineLoop, RetryPolicy, RunContext, StreamEvent,
    WithCallOptions as _,
};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt as _};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::cli::ServeArgs;
use crate::config;
use crate::endpoint;
use crate::output;
use crate::secrets::Secrets;
use wire::{ApiError, Parsed};

/// Exit code: the server failed after it started (or could not bind).
const EXIT_FAILURE: u8 = 1;
/// Exit code: invalid flags or files, before the server starts.
const EXIT_USAGE: u8 = 2;
/// The largest request body.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// How often a streamed virtual model sends `: keep-alive` while its pattern runs.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// The routes, as `ek_requests_total` labels them.
const ROUTES: &[&str] = &["/health", "/metrics", "/v1/models", "/v1/chat/completions"];
/// The N `/v1/models` lists for `ek:consensus:N:MODEL`.
const LISTED_SAMPLES: usize = 3;

/// The gateway's shared state.
struct App {
    provider: Arc<dyn LlmProvider>,
    /// The upstream's model (what `/v1/models` lists).
    model: String,
    /// `[pipes]` of the config file, built.
    pipes: BTreeMap<String, Arc<Pipe>>,
    /// What a virtual model's requests inherit: `--system`, `--seed`, `--tier`.
    call: CallOptions,
    /// The budget flags, applied to each request.
    request_budget: Budget,
    retry: RetryPolicy,
    /// The ledger every request's ledger is a child of (prices only, no limits).
    root: Arc<BudgetLedger>,
    keys: Option<keys::Keys>,
    metrics: metrics::Metrics,
    secrets: Secrets,
    next_id: AtomicU64,
}

/// A virtual model, parsed from its id.
enum Virtual {
    Consensus { samples: usize, model: String },
    Refine { model: String },
    Pipe(Arc<Pipe>),
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn run(args: &ServeArgs, env: &endpoint::Env, secrets: &Secrets) -> u8 {
    let app = match App::new(args, env, secrets) {
        Ok(a) => a,
        Err(e) => {
            output::print_error(&e, false, secrets);
            return EXIT_USAGE;
        }
    };
    let addr = match listen_addr(&args.listen, args.keys.is_some()) {
        Ok(a) => a,
        Err(e) => {
            output::print_error(&e, false, secrets);
            return EXIT_USAGE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            output::eprint_line(&format!("ek serve: cannot listen on {addr}: {e}"), secrets);
            return EXIT_FAILURE;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    output::eprint_line(&format!("ek serve: listening on http://{bound}"), secrets);
    let secrets = app.secrets.clone();
    let router = router(Arc::new(app));
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal(secrets.clone()))
        .await;
    match served {
        Ok(()) => {
            output::eprint_line("ek serve: stopped", &secrets);
            0
        }
        Err(e) => {
            output::eprint_line(&format!("ek serve: {e}"), &secrets);
            EXIT_FAILURE
        }
    }
}

/// `--listen`: `ADDR:PORT` (or `localhost:PORT`); not loopback only with `--keys`.
fn listen_addr(listen: &str, keys: bool) -> Result<SocketAddr, Error> {
    let addr: SocketAddr = match listen.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}").parse(),
        None => listen.parse(),
    }
    .map_err(|_| {
        Error::invalid_argument(
            "listen",
            format!(
                "--listen must be ADDR:PORT (e.g. 127.0.0.1:8080 or [::1]:8080), got `{listen}`"
            ),
        )
    })?;
    if !addr.ip().is_loopback() && !keys {
        return Err(Error::invalid_argument(
            "listen",
            format!(
                "--listen {addr} is not a loopback address: without --keys anyone who can reach it could spend the upstream budget; pass --keys FILE, or listen on 127.0.0.1"
            ),
        ));
    }
    Ok(addr)
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal(secrets: Secrets) {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    output::eprint_line(
        "ek serve: shutting down; finishing the requests in flight",
        &secrets,
    );
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), track))
        .with_state(app)
}

/// Counts the request, its status and latency; a request whose future is dropped (the client
/// went away) counts as `client_disconnected`.
async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    struct Guard<'a>(&'a metrics::Metrics, bool);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            if !self.1 {
                self.0.dropped();
            }
        }
    }
    // A fixed set of labels: an unknown path counts as `other`.
    let route = ROUTES
        .iter()
        .find(|r| **r == req.uri().path())
        .copied()
        .unwrap_or("other");
    let start = Instant::now();
    app.metrics.started();
    let mut guard = Guard(&app.metrics, false);
    let r = next.run(req).await;
    guard.1 = true;
    app.metrics
        .answered(route, r.status().as_u16(), start.elapsed());
    r
}

async fn health() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn not_found(State(app): State<Arc<App>>) -> Response {
    app.fail(ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        "no such route; the gateway serves POST /v1/chat/completions, GET /v1/models, GET /health and GET /metrics",
    ))
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = app.authenticate(&headers) {
        return app.fail(e);
    }
    let model = |id: String, owner: &str| json!({"id": id, "object": "model", "created": 0, "owned_by": owner});
    let m = &app.model;
    let mut data = vec![
        model(m.clone(), "upstream"),
        model(format!("ek:consensus:{LISTED_SAMPLES}:{m}"), "executionkit"),
        model(format!("ek:refine:{m}"), "executionkit"),
    ];
    data.extend(
        app.pipes
            .keys()
            .map(|name| model(format!("ek:pipe:{name}"), "executionkit")),
    );
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

async fn chat(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    match chat_inner(&app, &headers, body).await {
        Ok(r) => r,
        Err(e) => app.fail(e),
    }
}

async fn chat_inner(app: &Arc<App>, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let key = app.authenticate(headers)?;
    let bytes = read_body(headers, body).await?;
    let parsed = wire::parse_request(&bytes)?;
    let parent = match &key {
        Some(k) => {
            let l = k.ledger(&app.root);
            k.check(&l)?;
            l
        }
        None => Arc::clone(&app.root),
    };
    let ctx = RunContext::new()
        .with_ledger(Arc::new(BudgetLedger::child(
            parent,
            app.request_budget.clone(),
        )))
        .retry(app.retry.clone());
    let key_name = key.as_ref().map(|k| k.name.as_str());
    match app.virtual_model(&parsed.model)? {
        Some(v) => app.run_virtual(v, parsed, ctx, key_name).await,
        None if parsed.stream => app.stream_through(parsed, ctx, key_name).await,
        None => {
            let tracker = CostTracker::new();
            let r = ctx
                .complete(app.provider.as_ref(), parsed.request, &tracker)
                .await
                .map_err(|e| app.api_error(&e, key_name))?;
            let mut v = wire::completion(&app.id(), &parsed.model, &r);
            app.secrets.json(&mut v);
            Ok(json_response(StatusCode::OK, &v))
        }
    }
}

/// The body, refused with 413 past [`MAX_BODY`] (by its `Content-Length` before reading it,
/// else as it arrives).
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "body_too_large",
            format!(
                "the request body is larger than {} MiB",
                MAX_BODY / (1024 * 1024)
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| usize::try_from(n).unwrap_or(0)));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if buf.len() + chunk.len() > MAX_BODY {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn sse_response(body: impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

impl App {
    fn new(args: &ServeArgs, env: &endpoint::Env, secrets: &Secrets) -> Result<Self, Error> {
        let common = &args.common;
        let timeout = endpoint::timeout(common.timeout)?;
        let retry = RetryPolicy::new().try_max_retries(common.max_retries)?;
        let config = endpoint::config(common, env)?;
        let read_key = |var: &str| std::env::var(var).ok();
        let opts = config::BuildOptions {
            timeout,
            max_retries: u32::try_from(common.max_retries).unwrap_or(u32::MAX),
        };
        let mut builder = config
            .as_ref()
            .map(|c| config::Builder::new(c, &read_key, opts));
        let selected = match &common.provider {
            Some(name) => endpoint::from_config(common, name, builder.as_mut())?,
            None => endpoint::select(common, env)?,
        };
        if selected.offline {
            output::eprint_line(endpoint::OFFLINE_NOTICE, secrets);
        }
        let mut call = CallOptions::new();
        call.seed = common.seed.or(selected.offline.then_some(0));
        call.system.clone_from(&common.system);
        call.tier.clone_from(&common.tier);
        let mut pipes = BTreeMap::new();
        if let Some(c) = &config {
            for (name, steps) in c.pipes() {
                let pipe = crate::pipe(steps, &call, builder.as_mut()).map_err(|e| {
                    Error::invalid_argument(
                        "config",
                        format!("{}: [pipes] {name}: {}", c.path(), e.message()),
                    )
                })?;
                pipes.insert(name.clone(), Arc::new(pipe));
            }
        }
        let (prices, unpriced, keys) = match &builder {
            Some(b) => (
                b.prices().map(|(m, r)| (m.to_owned(), r)).collect(),
                b.unpriced().into_iter().map(str::to_owned).collect(),
                b.keys().to_vec(),
            ),
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        let request_budget = crate::budget(common, &prices, &unpriced, config.as_ref())?;
        let root_budget = prices_only(common, &prices)?;
        let client_keys = args
            .keys
            .as_deref()
            .map(|path| keys::Keys::load(path, &root_budget))
            .transpose()?;
        let root = Arc::new(BudgetLedger::new(root_budget));
        Ok(Self {
            model: selected.provider.model().to_owned(),
            provider: selected.provider,
            pipes,
            call,
            request_budget,
            retry,
            metrics: metrics::Metrics::new(Arc::clone(&root)),
            root,
            keys: client_keys,
            secrets: secrets.with(&keys),
            next_id: AtomicU64::new(1),
        })
    }

    /// A fresh completion id.
    fn id(&self) -> String {
        format!(
            "chatcmpl-ek-{}-{}",
            wire::now(),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The request's key (`None` without `--keys`).
    fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Arc<keys::Key>>, ApiError> {
        self.keys
            .as_ref()
            .map(|k| k.authenticate(headers))
            .transpose()
    }

    /// Counts and renders an error.
    fn fail(&self, e: ApiError) -> Response {
        self.metrics.error(&e.code);
        e.into_response()
    }

    /// A library error as the gateway answers it (secrets removed); a budget refused at the
    /// key's level names the key.
    fn api_error(&self, e: &Error, key: Option<&str>) -> ApiError {
        let mut a = ApiError::from_error(e, |t| self.secrets.text(t).into_owned());
        if let (true, Some(name)) = (e.is_budget_exhausted(), key) {
            let level = e.metadata().get("budget_level").and_then(Value::as_u64);
            if level == Some(1) {
                a.message = format!("the budget of API key `{name}` is exhausted: {}", a.message);
            }
        }
        if let Some(spent) = &mut a.spent {
            self.secrets.json(spent);
        }
        a
    }

    /// The virtual model `model` names, `None` for an upstream model.
    fn virtual_model(&self, model: &str) -> Result<Option<Virtual>, ApiError> {
        let Some(rest) = model.strip_prefix("ek:") else {
            return Ok(None);
        };
        let unknown = |why: &str| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                format!(
                    "unknown virtual model `{model}`: {why}; virtual models are ek:consensus:N:MODEL, ek:refine:MODEL and ek:pipe:NAME (GET /v1/models lists them)"
                ),
            )
        };
        let nonempty = |m: &str| {
            if m.trim().is_empty() {
                Err(unknown("MODEL is empty"))
            } else {
                Ok(m.to_owned())
            }
        };
        if let Some(r) = rest.strip_prefix("consensus:") {
            let (n, m) = r
                .split_once(':')
                .ok_or_else(|| unknown("expected ek:consensus:N:MODEL"))?;
            let samples: usize = n
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| unknown("N must be a whole number >= 1"))?;
            return Ok(Some(Virtual::Consensus {
                samples,
                model: nonempty(m)?,
            }));
        }
        if let Some(m) = rest.strip_prefix("refine:") {
            return Ok(Some(Virtual::Refine {
                model: nonempty(m)?,
            }));
        }
        if let Some(name) = rest.strip_prefix("pipe:") {
            return match self.pipes.get(name) {
                Some(p) => Ok(Some(Virtual::Pipe(Arc::clone(p)))),
                None => Err(unknown(&format!(
                    "no pipe `{name}` in the config file's [pipes] ({})",
                    if self.pipes.is_empty() {
                        "none is defined".to_owned()
                    } else {
                        self.pipes.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ))),
            };
        }
        Err(unknown("not a virtual model"))
    }

    /// Runs a virtual model's pattern: one JSON completion, or an SSE stream of keep-alives,
    /// then the value and the usage.
    async fn run_virtual(
        self: &Arc<Self>,
        v: Virtual,
        parsed: Parsed,
        ctx: RunContext,
        key: Option<&str>,
    ) -> Result<Response, ApiError> {
        let r = &parsed.request;
        if !r.tools.is_empty() || r.tool_choice.is_some() {
            return Err(ApiError::bad_request(
                "virtual models (ek:…) do not take tools; call an upstream model for tool calls",
            ));
        }
        if r.n.is_some_and(|n| n > 1) {
            return Err(ApiError::bad_request(
                "virtual models (ek:…) answer one choice ('n' must be 1)",
            ));
        }
        let (prompt, system) = wire::prompt_of(&r.messages)?;
        let mut call = self.call.clone();
        if system.is_some() {
            call.system.clone_from(&system);
        }
        call.temperature = r.temperature;
        call.max_tokens = r.max_tokens;
        if r.seed.is_some() {
            call.seed = r.seed;
        }
        let provider = Arc::clone(&self.provider);
        let bad = |e: Error| ApiError::bad_request(e.message().to_owned());
        let (pattern, work): (
            &str,
            BoxFuture<'static, Result<PatternResult<String>, Error>>,
        ) = match v {
            Virtual::Consensus { samples, model } => {
                let c = Consensus::default()
                    .options(call.model(model))
                    .samples(samples);
                c.validate().map_err(bad)?;
                let ctx = ctx.clone();
                (
                    "consensus",
                    Box::pin(async move {
                        c.run(provider.as_ref(), &prompt, &ctx)
                            .await
                            .map(PatternResult::erase_stats)
                    }),
                )
            }
            Virtual::Refine { model } => {
                let rl = RefineLoop::default().options(call.model(model));
                rl.validate().map_err(bad)?;
                let ctx = ctx.clone();
                (
                    "refine",
                    Box::pin(async move {
                        rl.run(provider.as_ref(), &prompt, &ctx)
                            .await
                            .map(PatternResult::erase_stats)
                    }),
                )
            }
            Virtual::Pipe(pipe) => {
                // The steps carry their own options; a system message goes before the prompt.
                let prompt = match &system {
                    Some(s) => format!("{s}\n\n{prompt}"),
                    None => prompt,
                };
                let ctx = ctx.clone();
                (
                    "pipe",
                    Box::pin(async move {
                        pipe.run(provider.as_ref(), &prompt, &ctx)
                            .await
                            .map(PatternResult::erase_stats)
                    }),
                )
            }
        };
        let id = self.id();
        if !parsed.stream {
            let result = work.await.map_err(|e| self.api_error(&e, key))?;
            let mut v = self.pattern_json(&id, &parsed.model, pattern, &result);
            self.secrets.json(&mut v);
            return Ok(json_response(StatusCode::OK, &v));
        }
        let mut tick = tokio::time::interval(KEEP_ALIVE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let st = VirtualStream {
            phase: Phase::Running(work),
            tick,
            app: Arc::clone(self),
            id,
            model: parsed.model,
            created: wire::now(),
            key: key.map(str::to_owned),
            pattern,
        };
        // Dropping the body (the client went away) drops `work`: the pattern stops.
        let body = futures::stream::unfold(st, |mut st| async move {
            loop {
                match &mut st.phase {
                    Phase::Running(work) => {
                        // Biased: the first tick is immediate, so a keep-alive opens every stream.
                        let done = tokio::select! {
                            biased;
                            _ = st.tick.tick() => None,
                            r = work => Some(r),
                        };
                        match done {
                            None => {
                                return Some((
                                    Ok(Bytes::from_static(wire::SSE_KEEP_ALIVE.as_bytes())),
                                    st,
                                ));
                            }
                            Some(r) => {
                                let tail = st.tail(r);
                                st.phase = Phase::Tail(tail);
                            }
                        }
                    }
                    Phase::Tail(q) => {
                        let next = q.pop_front()?;
                        return Some((Ok::<_, Infallible>(Bytes::from(next)), st));
                    }
                }
            }
        });
        Ok(sse_response(body))
    }

    /// A pattern's result as a `chat.completion`.
    fn pattern_json(
        &self,
        id: &str,
        model: &str,
        pattern: &str,
        r: &PatternResult<String>,
    ) -> Value {
        let mut extra = r.to_json();
        if let Some(o) = extra.as_object_mut() {
            o.remove("value");
            o.insert("pattern".into(), pattern.into());
            o.insert("usd".into(), json!(r.usd));
        }
        wire::pattern_completion(id, model, &r.value, &r.cost, extra)
    }

    /// An upstream model, streamed: the library's checked stream runs in its own task (it
    /// stops when the client goes away), its events become `chat.completion.chunk`s. A failure
    /// before the first event is an ordinary error response.
    async fn stream_through(
        self: &Arc<Self>,
        parsed: Parsed,
        ctx: RunContext,
        key: Option<&str>,
    ) -> Result<Response, ApiError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<StreamEvent, Error>>(32);
        let provider = Arc::clone(&self.provider);
        let request = parsed.request;
        let closed = tx.clone();
        tokio::spawn(async move {
            let work = async move {
                let tracker = CostTracker::new();
                match ctx.stream(provider.as_ref(), request, &tracker).await {
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                    }
                    Ok(mut events) => {
                        while let Some(item) = events.next().await {
                            let failed = item.is_err();
                            if tx.send(item).await.is_err() || failed {
                                break;
                            }
                        }
                    }
                }
            };
            tokio::select! {
                () = work => {}
                () = closed.closed() => {}
            }
        });
        let first = match rx.recv().await {
            Some(Ok(event)) => event,
            Some(Err(e)) => return Err(self.api_error(&e, key)),
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "provider",
                    "the upstream stream ended before it started",
                ));
            }
        };
        let mut enc = ChunkEncoder {
            app: Arc::clone(self),
            id: self.id(),
            model: parsed.model,
            created: wire::now(),
            key: key.map(str::to_owned),
            started: false,
            finished: false,
            pending: String::new(),
            hold: 2 * self.secrets.longest(),
        };
        let head = enc.encode(Ok(first));
        let rest = futures::stream::unfold((rx, enc), |(mut rx, mut enc)| async move {
            if enc.finished {
                return None;
            }
            let text = match rx.recv().await {
                Some(item) => enc.encode(item),
                None => {
                    // The stream ended without its `Finished` event: close it anyway.
                    enc.finished = true;
                    let mut out = enc
                        .release(true)
                        .map(|t| enc.text_delta(&t))
                        .unwrap_or_default();
                    out.push_str(wire::SSE_DONE);
                    out
                }
            };
            Some((Ok::<_, Infallible>(Bytes::from(text)), (rx, enc)))
        });
        let body = futures::stream::once(async move { Ok::<_, Infallible>(Bytes::from(head)) })
            .chain(rest);
        Ok(sse_response(body))
    }
}

/// Where a streamed virtual model is.
enum Phase {
    /// The pattern runs; keep-alives go out.
    Running(BoxFuture<'static, Result<PatternResult<String>, Error>>),
    /// The SSE events left to send.
    Tail(VecDeque<String>),
}

/// A streamed virtual model's state.
struct VirtualStream {
    phase: Phase,
    tick: tokio::time::Interval,
    app: Arc<App>,
    id: String,
    model: String,
    created: u64,
    key: Option<String>,
    pattern: &'static str,
}

impl VirtualStream {
    /// The events after the pattern ended: the value, the finish, the usage chunk (with the
    /// `executionkit` object) and `[DONE]`; or the error.
    fn tail(&self, r: Result<PatternResult<String>, Error>) -> VecDeque<String> {
        let app = &self.app;
        let data = |choices: Value, usage: Option<Value>| {
            let mut v = wire::chunk(&self.id, &self.model, self.created, choices, usage);
            app.secrets.json(&mut v);
            wire::sse_data(&v)
        };
        let mut q = VecDeque::new();
        match r {
            Ok(r) => {
                q.push_back(data(
                    wire::delta(json!({"role": "assistant", "content": r.value}), None),
                    None,
                ));
                q.push_back(data(wire::delta(json!({}), Some("stop")), None));
                let full = app.pattern_json(&self.id, &self.model, self.pattern, &r);
                let mut v = wire::chunk(
                    &self.id,
                    &self.model,
                    self.created,
                    json!([]),
                    Some(full["usage"].clone()),
                );
                v["executionkit"] = full["executionkit"].clone();
                app.secrets.json(&mut v);
                q.push_back(wire::sse_data(&v));
                q.push_back(wire::SSE_DONE.to_owned());
            }
            Err(e) => {
                let a = app.api_error(&e, self.key.as_deref());
                app.metrics.error(&a.code);
                q.push_back(wire::sse_data(&a.body()));
            }
        }
        q
    }
}

/// Turns the library's stream events into SSE `chat.completion.chunk` events.
struct ChunkEncoder {
    app: Arc<App>,
    id: String,
    model: String,
    created: u64,
    key: Option<String>,
    started: bool,
    finished: bool,
    /// Text received but not sent yet: the last `hold` bytes are held back, so that a secret
    /// split across deltas is still redacted whole.
    pending: String,
    /// Twice the longest secret's length (0 without secrets: nothing is held back).
    hold: usize,
}

impl ChunkEncoder {
    /// The text that can go out now (redacted); with `all`, everything held back too.
    fn release(&mut self, all: bool) -> Option<String> {
        let text = self.app.secrets.text(&self.pending).into_owned();
        let mut cut = if all {
            text.len()
        } else {
            text.len().saturating_sub(self.hold)
        };
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        self.pending = text[cut..].to_owned();
        let mut out = text;
        out.truncate(cut);
        (!out.is_empty()).then_some(out)
    }

    fn text_delta(&self, text: &str) -> String {
        self.data(wire::delta(json!({"content": text}), None), None)
    }

    fn data(&self, choices: Value, usage: Option<Value>) -> String {
        let mut v = wire::chunk(&self.id, &self.model, self.created, choices, usage);
        self.app.secrets.json(&mut v);
        wire::sse_data(&v)
    }

    fn encode(&mut self, item: Result<StreamEvent, Error>) -> String {
        let mut out = String::new();
        if !self.started {
            self.started = true;
            out.push_str(&self.data(
                wire::delta(json!({"role": "assistant", "content": ""}), None),
                None,
            ));
        }
        if let Ok(StreamEvent::TextDelta(t)) = &item {
            self.pending.push_str(t);
            if let Some(text) = self.release(false) {
                out.push_str(&self.text_delta(&text));
            }
            return out;
        }
        if let Some(text) = self.release(true) {
            out.push_str(&self.text_delta(&text));
        }
        match item {
            Ok(StreamEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            }) => {
                let mut call = json!({"index": index, "function": {"arguments": arguments}});
                if let Some(id) = id {
                    call["id"] = id.into();
                    call["type"] = "function".into();
                }
                if let Some(name) = name {
                    call["function"]["name"] = name.into();
                }
                out.push_str(&self.data(wire::delta(json!({"tool_calls": [call]}), None), None));
            }
            Ok(StreamEvent::Finished(r)) => {
                let reason = r
                    .choices
                    .first()
                    .and_then(|c| c.finish_reason.clone())
                    .unwrap_or_else(|| "stop".to_owned());
                out.push_str(&self.data(wire::delta(json!({}), Some(&reason)), None));
                out.push_str(&self.data(
                    json!([]),
                    Some(wire::usage_json(
                        r.usage.input_tokens,
                        r.usage.output_tokens,
                    )),
                ));
                out.push_str(wire::SSE_DONE);
                self.finished = true;
            }
            Ok(_) => {}
            Err(e) => {
                let a = self.app.api_error(&e, self.key.as_deref());
                self.app.metrics.error(&a.code);
                out.push_str(&wire::sse_data(&a.body()));
                self.finished = true;
            }
        }
        out
    }
}

/// A budget with the prices of `common` and the config file's providers, and no limits: the
/// server's root ledger's (so `/metrics` can count USD and keys can have USD budgets).
fn prices_only(
    common: &crate::cli::Common,
    prices: &[(String, CostRates)],
) -> Result<Budget, Error> {
    let mut b = Budget::new();
    if let (Some(p_in), Some(p_out)) = (common.price_in, common.price_out) {
        let mut rates = CostRates::new(p_in, p_out)?;
        if let Some(p) = common.price_cache_read {
            rates = rates.with_cache_read(p)?;
        }
        if let Some(p) = common.price_cache_write {
            rates = rates.with_cache_write(p)?;
        }
        b = b.default_price(rates);
    }
    for (model, rates) in prices {
        b = b.price(model.clone(), *rates);
    }
    Ok(b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_without_keys() {
        assert!(listen_addr("127.0.0.1:0", false).is_ok());
        assert!(listen_addr("[::1]:8080", false).is_ok());
        assert!(listen_addr("localhost:8080", false).is_ok());
        let e = listen_addr("0.0.0.0:8080", false).unwrap_err();
        assert!(e.message().contains("--keys"), "{}", e.message());
        assert!(listen_addr("0.0.0.0:8080", true).is_ok());
        assert!(listen_addr("nowhere", false).is_err());
    }
}
