//! `ek mcp`: an MCP server over stdio (newline-delimited JSON-RPC 2.0), on `rmcp`, the official
//! Rust SDK, which owns the protocol (initialize, `tools/list`, `tools/call`, JSON-RPC errors).
//!
//! Tools (the reference's section 21): `consensus` (`prompt`, `n` 1..=9 default 3, `strategy`,
//! `temperature` 0..=2) and `react_loop` (`prompt`, `max_rounds` 1..=8 default 5) over the CLI's
//! built-in side-effect-free tools; beyond it, `refine`, `structured` (a JSON Schema argument)
//! and `pipe` (`--step` strings). The endpoint comes from the usual flags and variables, else
//! the embedded offline model. Each tool call runs under its own budget from the `--max-*`
//! flags. A result is the pattern's JSON (`value`, `cost`, `metadata`); a failure is a tool
//! error (`isError: true`) carrying the error's JSON with its spend. Secrets are redacted from
//! both.
//!
//! Progress: a `tools/call` whose `_meta` carries a `progressToken` gets `notifications/progress`
//! as the pattern's LLM calls finish (`progress` = calls done, `total` = the calls the pattern
//! plans or the `--max-calls` budget when either is known), all sent before the result.
//!
//! Malformed input (tested in `tests/cli_mcp.rs`): a line that is not JSON gets a Parse error
//! (-32700, id null) from the line filter in front of `rmcp` ([`serve`]); well-formed JSON that is
//! not a JSON-RPC message gets `rmcp`'s Invalid Request error (-32600, id null); an unknown method
//! gets an error (-32601, or `rmcp`'s -32602 for `server/discover`); none stops the server.
//! At EOF the requests still in flight are answered (with their progress) before the server ends.

use std::sync::Arc;

use executionkit::events::Event;
use executionkit::{
    Budget, CallOptions, Consensus, Error, LlmProvider, Pattern as _, PatternResult, ReactLoop,
    RefineLoop, RetryPolicy, RunContext, StructuredValue, VotingStrategy, WithCallOptions as _,
};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, Implementation, ProgressNotificationParam, ProgressToken, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::{RoleServer, ServerHandler, ServiceExt as _, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::cli::Common;
use crate::endpoint;
use crate::output;
use crate::secrets::Secrets;
use crate::tools;

/// Exit code: the server could not start or its transport failed.
const EXIT_FAILURE: u8 = 1;
/// Exit code: invalid flags, before the server starts.
const EXIT_USAGE: u8 = 2;

/// An optional argument's schema says its type alone (`"integer"`, not `["integer", "null"]`):
/// clients that convert command-line values by the schema's type (the MCP Inspector's `--cli`)
/// understand nothing else. `null` is still accepted, as absent.
fn plain_types(schema: &mut schemars::Schema) {
    let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for p in properties.values_mut() {
        let Some(t) = p.get_mut("type") else { continue };
        let kept: Vec<Value> = t
            .as_array()
            .map(|a| a.iter().filter(|v| *v != "null").cloned().collect())
            .unwrap_or_default();
        if let [only] = kept.as_slice() {
            *t = only.clone();
        }
    }
}

/// `consensus` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = plain_types)]
pub struct ConsensusParams {
    /// The question; must not be blank.
    pub prompt: String,
    /// Number of samples (1 to 9, default 3).
    #[schemars(range(min = 1, max = 9), extend("default" = 3))]
    pub n: Option<i64>,
    /// `majority` (default) or `unanimous`.
    #[schemars(extend("enum" = ["majority", "unanimous"], "default" = "majority"))]
    pub strategy: Option<String>,
    /// Sampling temperature (0 to 2).
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f64>,
}

/// `react_loop` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = plain_types)]
pub struct ReactParams {
    /// The task; must not be blank.
    pub prompt: String,
    /// The most LLM rounds (1 to 8, default 5).
    #[schemars(range(min = 1, max = 8), extend("default" = 5))]
    pub max_rounds: Option<i64>,
}

/// `refine` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = plain_types)]
pub struct RefineParams {
    /// The task; must not be blank.
    pub prompt: String,
    /// Stop once a draft scores at least this (0 to 1, default 0.9).
    #[schemars(range(min = 0.0, max = 1.0), extend("default" = 0.9))]
    pub target_score: Option<f64>,
    /// Improvement rounds after the first draft (1 to 10, default 5).
    #[schemars(range(min = 1, max = 10), extend("default" = 5))]
    pub max_iterations: Option<i64>,
}

/// `structured` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = plain_types)]
pub struct StructuredParams {
    /// The request; must not be blank.
    pub prompt: String,
    /// The JSON Schema the answer must validate against (an object).
    pub schema: serde_json::Map<String, serde_json::Value>,
    /// Repair attempts after an invalid answer (0 to 5, default 3).
    #[schemars(range(min = 0, max = 5), extend("default" = 3))]
    pub max_repairs: Option<i64>,
}

/// `pipe` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = plain_types)]
pub struct PipeParams {
    /// The input of the first step; must not be blank.
    pub prompt: String,
    /// The steps, as `ek pipe --step` takes them (`consensus samples=3`, `refine
    /// target_score=0.8`, …); 1 to 8 steps, without `provider=`.
    #[schemars(length(min = 1, max = 8))]
    pub steps: Vec<String>,
}

/// The server: one provider, the per-call budget and options, the secrets to redact.
#[derive(Clone)]
pub struct Server {
    provider: Arc<dyn LlmProvider>,
    offline: bool,
    budget: Budget,
    retry: RetryPolicy,
    call: CallOptions,
    secrets: Secrets,
}

/// Runs the server on stdin/stdout until EOF.
pub async fn serve(common: &Common, env: &endpoint::Env, secrets: &Secrets) -> u8 {
    let server = match Server::new(common, env, secrets) {
        Ok(s) => s,
        Err(e) => {
            output::print_error(&e, false, secrets);
            return EXIT_USAGE;
        }
    };
    if server.offline {
        output::eprint_line(endpoint::OFFLINE_NOTICE, secrets);
    }
    // stdin → the line filter → rmcp; rmcp → the writer → stdout. The filter answers a line that
    // is not JSON itself, through the writer, so no reply is written inside another.
    let (to_rmcp, rmcp_in) = tokio::io::duplex(PIPE_BUFFER);
    let (rmcp_out, from_rmcp) = tokio::io::duplex(PIPE_BUFFER);
    let (errors, error_lines) = mpsc::unbounded_channel();
    let pending = Pending::default();
    let filter = tokio::spawn(filter_lines(
        tokio::io::stdin(),
        to_rmcp,
        errors,
        pending.clone(),
    ));
    let writer = tokio::spawn(write_lines(
        from_rmcp,
        error_lines,
        tokio::io::stdout(),
        pending,
    ));
    let code = match server.serve((rmcp_in, rmcp_out)).await {
        Ok(running) => match running.waiting().await {
            Ok(_) => 0,
            Err(e) => {
                output::eprint_line(&format!("ek mcp: {e}"), secrets);
                EXIT_FAILURE
            }
        },
        Err(e) => {
            output::eprint_line(&format!("ek mcp: cannot start: {e}"), secrets);
            EXIT_FAILURE
        }
    };
    // rmcp has dropped its end of the pipe: the writer flushes what is left and ends.
    if let Ok(Err(e)) = writer.await {
        output::eprint_line(&format!("ek mcp: cannot write to stdout: {e}"), secrets);
        return EXIT_FAILURE;
    }
    filter.abort();
    code
}

/// The in-memory pipes between the line filter, rmcp and the writer.
const PIPE_BUFFER: usize = 256 * 1024;
/// The longest line read (as rmcp's own limit): a longer one is discarded and answered with an
/// Invalid Request error.
const MAX_LINE: usize = 16 * 1024 * 1024;
/// The reply to a line that is not JSON.
const PARSE_ERROR: &str =
    r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#;
/// The reply to a line over [`MAX_LINE`].
const TOO_LONG: &str = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request: line too long"}}"#;

/// The ids of the requests passed on to rmcp and not answered yet. At EOF, rmcp's input is
/// closed only once they are all answered (or cancelled): rmcp stops relaying notifications when
/// its input ends, so a call's progress notifications would hold up its result.
#[derive(Clone)]
struct Pending {
    ids: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    count: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            ids: Arc::default(),
            count: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

impl Pending {
    fn update(&self, f: impl FnOnce(&mut std::collections::HashSet<String>)) {
        let n = match self.ids.lock() {
            Ok(mut ids) => {
                f(&mut ids);
                ids.len()
            }
            Err(_) => 0,
        };
        self.count.send_replace(n);
    }

    /// Notes a line passed on to rmcp: a request (one rmcp will parse too) is pending until its
    /// answer; a cancellation ends its request (rmcp does not answer a cancelled one).
    fn inbound(&self, line: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        let method = v.get("method").and_then(Value::as_str);
        if method == Some("notifications/cancelled") {
            if let Some(id) = v.pointer("/params/requestId") {
                let id = id.to_string();
                self.update(|ids| {
                    ids.remove(&id);
                });
            }
            return;
        }
        let Some(id) = v.get("id").filter(|id| !id.is_null()) else {
            return;
        };
        if method.is_some()
            && serde_json::from_value::<rmcp::model::ClientJsonRpcMessage>(v.clone()).is_ok()
        {
            let id = id.to_string();
            self.update(|ids| {
                ids.insert(id);
            });
        }
    }

    /// Notes a line rmcp wrote: an answer ends its request.
    fn outbound(&self, line: &[u8]) {
        #[derive(Deserialize)]
        struct Head {
            id: Option<Value>,
            method: Option<serde::de::IgnoredAny>,
        }
        if let Ok(Head {
            id: Some(id),
            method: None,
        }) = serde_json::from_slice::<Head>(line)
        {
            let id = id.to_string();
            self.update(|ids| {
                ids.remove(&id);
            });
        }
    }

    /// Waits until no request is pending (or the writer has ended).
    async fn drained(&self) {
        let mut rx = self.count.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// Reads `input` line by line (at most [`MAX_LINE`] bytes each): a JSON line goes on to rmcp, a
/// blank one is skipped, anything else is answered through `errors`. At EOF, once every request
/// has been answered, closes rmcp's input, which ends the server.
async fn filter_lines(
    input: impl AsyncRead + Unpin,
    mut to_rmcp: impl AsyncWrite + Unpin,
    errors: mpsc::UnboundedSender<&'static str>,
    pending: Pending,
) -> std::io::Result<()> {
    let mut input = tokio::io::BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut too_long = false;
        // One line, never buffering more than MAX_LINE of it.
        let eof = loop {
            let buf = input.fill_buf().await?;
            if buf.is_empty() {
                break true;
            }
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            if !too_long && line.len() + chunk.len() <= MAX_LINE {
                line.extend_from_slice(chunk);
            } else {
                too_long = true;
                line.clear();
            }
            let used = done.unwrap_or(buf.len());
            input.consume(used);
            if done.is_some() {
                break false;
            }
        };
        if too_long {
            let _ = errors.send(TOO_LONG);
        } else {
            let text = line.strip_suffix(b"\r").unwrap_or(&line);
            let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
            if !text.iter().all(u8::is_ascii_whitespace) {
                if serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok() {
                    pending.inbound(text);
                    to_rmcp.write_all(text).await?;
                    to_rmcp.write_all(b"\n").await?;
                    to_rmcp.flush().await?;
                } else {
                    let _ = errors.send(PARSE_ERROR);
                }
            }
        }
        if eof {
            pending.drained().await;
            return to_rmcp.shutdown().await;
        }
    }
}

/// Copies rmcp's lines and the filter's error lines to `out`, one whole line at a time, until
/// rmcp's output ends; then writes the errors still queued.
async fn write_lines(
    from_rmcp: impl AsyncRead + Unpin,
    mut errors: mpsc::UnboundedReceiver<&'static str>,
    mut out: impl AsyncWrite + Unpin,
    pending: Pending,
) -> std::io::Result<()> {
    let mut from_rmcp = tokio::io::BufReader::new(from_rmcp);
    let mut line = Vec::new();
    let mut errors_open = true;
    loop {
        // `read_until` keeps what it read in `line` when the other branch wins: the line is
        // cleared only once it has been written whole.
        tokio::select! {
            n = from_rmcp.read_until(b'\n', &mut line) => {
                if n? == 0 {
                    out.write_all(&line).await?;
                    break;
                }
                out.write_all(&line).await?;
                pending.outbound(&line);
                line.clear();
            }
            e = errors.recv(), if errors_open => match e {
                Some(e) => {
                    out.write_all(e.as_bytes()).await?;
                    out.write_all(b"\n").await?;
                }
                None => errors_open = false,
            },
        }
        out.flush().await?;
    }
    while let Ok(e) = errors.try_recv() {
        out.write_all(e.as_bytes()).await?;
        out.write_all(b"\n").await?;
    }
    out.flush().await
}

/// An argument error as a tool error: nothing was spent.
fn bad(argument: &str, message: &str) -> Error {
    Error::invalid_argument(argument, message.to_owned())
}

/// Runs `work` until the client cancels the request (`notifications/cancelled`): then `work`
/// is dropped, which cancels its calls in flight, and the result is a `cancelled` error with
/// the spend so far (rmcp sends no reply to a cancelled request; the error is for the logs and
/// for a client that does not drop it).
async fn until_cancelled<T>(
    request: &RequestContext<RoleServer>,
    ctx: &RunContext,
    work: impl std::future::Future<Output = Result<PatternResult<T>, Error>>,
) -> Result<PatternResult<T>, Error> {
    tokio::select! {
        r = work => r,
        () = request.ct.cancelled() => {
            let ledger = ctx.ledger();
            Err(Error::cancelled()
                .with_cost(ledger.spent())
                .with_usd(ledger.spent_usd()))
        }
    }
}

/// What a call's event means for its progress.
enum Step {
    Finished,
    Failed,
}

/// The progress notifications of one tool call, when its request asked for them.
struct Progress {
    peer: Peer<RoleServer>,
    token: ProgressToken,
    tool: &'static str,
    total: Option<u64>,
    steps: mpsc::UnboundedReceiver<Step>,
    done: u64,
}

impl Progress {
    /// Runs `work`, sending a progress notification as each of its calls finishes (or fails for
    /// good); the last one is sent before this returns, so before the result.
    async fn drive<T>(mut self, work: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(work);
        let out = loop {
            tokio::select! {
                out = &mut work => break out,
                Some(step) = self.steps.recv() => self.send(step).await,
            }
        };
        while let Ok(step) = self.steps.try_recv() {
            self.send(step).await;
        }
        out
    }

    async fn send(&mut self, step: Step) {
        self.done += 1;
        let what = match step {
            Step::Finished => "finished",
            Step::Failed => "failed",
        };
        let mut p = ProgressNotificationParam::new(self.token.clone(), self.done as f64);
        // A total only while it holds (retries are calls too).
        p = match self.total {
            Some(t) if self.done <= t => p
                .with_total(t as f64)
                .with_message(format!("{}: call {} of {t} {what}", self.tool, self.done)),
            _ => p.with_message(format!("{}: call {} {what}", self.tool, self.done)),
        };
        // A client that went away gets no more notifications; the run goes on to its end.
        let _ = self.peer.notify_progress(p).await;
    }
}

/// A blank prompt is refused before any call.
fn prompt(p: &str) -> Result<&str, Error> {
    if p.trim().is_empty() {
        return Err(bad(
            "prompt",
            "'prompt' is required and must be a non-empty string",
        ));
    }
    Ok(p)
}

/// An optional integer within `lo..=hi`, else `default`.
fn within(name: &str, v: Option<i64>, lo: i64, hi: i64, default: i64) -> Result<usize, Error> {
    let v = v.unwrap_or(default);
    if !(lo..=hi).contains(&v) {
        return Err(bad(
            name,
            &format!("'{name}' must be between {lo} and {hi}"),
        ));
    }
    usize::try_from(v).map_err(|_| bad(name, &format!("'{name}' must be between {lo} and {hi}")))
}

impl Server {
    fn new(common: &Common, env: &endpoint::Env, secrets: &Secrets) -> Result<Self, Error> {
        if common.provider.is_some() || common.config.is_some() {
            return Err(bad(
                "config",
                "ek mcp takes its endpoint from --base-url / EXECUTIONKIT_BASE_URL; --config and --provider are not supported here yet",
            ));
        }
        endpoint::timeout(common.timeout)?;
        let retry = RetryPolicy::new().try_max_retries(common.max_retries)?;
        let selected = endpoint::select(common, env)?;
        let budget = crate::budget(common, &[], &[], None)?;
        let mut call = CallOptions::new();
        call.seed = common.seed.or(selected.offline.then_some(0));
        call.system.clone_from(&common.system);
        call.tier.clone_from(&common.tier);
        Ok(Self {
            provider: selected.provider,
            offline: selected.offline,
            budget,
            retry,
            call,
            secrets: secrets.clone(),
        })
    }

    /// A fresh context per tool call: the budget flags apply to each call on its own. When the
    /// request carries a progress token, the context reports its calls to the [`Progress`]
    /// returned with it; `planned` is the pattern's own call count when it is known up front.
    fn ctx(
        &self,
        tool: &'static str,
        request: &RequestContext<RoleServer>,
        planned: Option<u64>,
    ) -> (RunContext, Option<Progress>) {
        let ctx = RunContext::new()
            .budget(self.budget.clone())
            .retry(self.retry.clone());
        let Some(token) = request.meta.get_progress_token() else {
            return (ctx, None);
        };
        let total = match (planned, self.budget.calls_limit()) {
            (Some(p), Some(b)) => Some(p.min(b)),
            (p, b) => p.or(b),
        };
        let (tx, steps) = mpsc::unbounded_channel();
        let ctx = ctx.on_event(move |e| {
            let step = match e {
                Event::CallFinished { .. } => Step::Finished,
                Event::CallFailed { call, .. } if *call != 0 => Step::Failed,
                _ => return,
            };
            let _ = tx.send(step);
        });
        let progress = Progress {
            peer: request.peer.clone(),
            token,
            tool,
            total,
            steps,
            done: 0,
        };
        (ctx, Some(progress))
    }

    /// Runs `work` under `ctx` until it ends or the client cancels it, with its progress
    /// notifications when asked for, and answers with its result.
    async fn run<T: serde::Serialize>(
        &self,
        request: &RequestContext<RoleServer>,
        ctx: &RunContext,
        progress: Option<Progress>,
        work: impl std::future::Future<Output = Result<PatternResult<T>, Error>>,
    ) -> CallToolResult {
        let work = until_cancelled(request, ctx, work);
        let r = match progress {
            Some(p) => p.drive(work).await,
            None => work.await,
        };
        self.answer(r)
    }

    /// The pattern's result or error as an MCP tool result, secrets redacted.
    fn answer<T: serde::Serialize>(&self, r: Result<PatternResult<T>, Error>) -> CallToolResult {
        match r {
            Ok(r) => {
                let mut v = r.to_json();
                self.secrets.json(&mut v);
                CallToolResult::structured(v)
            }
            Err(e) => {
                let mut v = output::error_json(&e);
                self.secrets.json(&mut v);
                CallToolResult::structured_error(v)
            }
        }
    }

    async fn run_consensus(
        &self,
        p: ConsensusParams,
        ctx: &RunContext,
    ) -> Result<PatternResult<String>, Error> {
        let text = prompt(&p.prompt)?;
        let n = within("n", p.n, 1, 9, 3)?;
        let mut options = self.call.clone();
        if let Some(t) = p.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(bad("temperature", "'temperature' must be between 0 and 2"));
            }
            options = options.temperature(t);
        }
        let strategy: VotingStrategy = match p.strategy.as_deref().unwrap_or("majority") {
            s @ ("majority" | "unanimous") => s
                .parse()
                .map_err(|_| bad("strategy", "'strategy' must be 'majority' or 'unanimous'"))?,
            _ => {
                return Err(bad(
                    "strategy",
                    "'strategy' must be 'majority' or 'unanimous'",
                ));
            }
        };
        let c = Consensus::default()
            .options(options)
            .samples(n)
            .strategy(strategy);
        c.validate()?;
        let r = c.run(self.provider.as_ref(), text, ctx).await?;
        Ok(r.erase_stats())
    }

    async fn run_react(
        &self,
        p: ReactParams,
        ctx: &RunContext,
    ) -> Result<PatternResult<String>, Error> {
        let text = prompt(&p.prompt)?;
        let rounds = within("max_rounds", p.max_rounds, 1, 8, 5)?;
        let provider: Arc<dyn LlmProvider> = if self.offline {
            // The offline model never calls a tool; it is offered the tools and answers.
            Arc::new(tools::AnswersWithoutTools(self.provider.clone()))
        } else {
            self.provider.clone()
        };
        let r = ReactLoop::new()
            .options(self.call.clone())
            .tools(tools::builtin())
            .max_rounds(rounds);
        r.validate(provider.as_ref())?;
        let r = r.run(provider.as_ref(), text, ctx).await?;
        Ok(r.erase_stats())
    }
}

impl Server {
    async fn run_refine(
        &self,
        p: RefineParams,
        ctx: &RunContext,
    ) -> Result<PatternResult<String>, Error> {
        let text = prompt(&p.prompt)?;
        let iterations = within("max_iterations", p.max_iterations, 1, 10, 5)?;
        let target = p.target_score.unwrap_or(0.9);
        if !(0.0..=1.0).contains(&target) {
            return Err(bad(
                "target_score",
                "'target_score' must be between 0 and 1",
            ));
        }
        let r = RefineLoop::default()
            .options(self.call.clone())
            .target_score(target)
            .max_iterations(iterations);
        r.validate()?;
        let r = r.run(self.provider.as_ref(), text, ctx).await?;
        Ok(r.erase_stats())
    }

    async fn run_structured(
        &self,
        p: StructuredParams,
        ctx: &RunContext,
    ) -> Result<PatternResult<Value>, Error> {
        let text = prompt(&p.prompt)?;
        let repairs = within("max_repairs", p.max_repairs, 0, 5, 3)?;
        let s = StructuredValue::new()
            .options(self.call.clone())
            .schema("answer", Value::Object(p.schema))
            .max_repairs(repairs);
        s.validate()?;
        let r = s.run(self.provider.as_ref(), text, ctx).await?;
        Ok(r.erase_stats())
    }

    async fn run_pipe(
        &self,
        p: PipeParams,
        ctx: &RunContext,
    ) -> Result<PatternResult<String>, Error> {
        let text = prompt(&p.prompt)?;
        if p.steps.is_empty() || p.steps.len() > 8 {
            return Err(bad("steps", "'steps' must hold 1 to 8 steps"));
        }
        let pipe = crate::pipe(&p.steps, &self.call, None)?;
        let r = pipe.run(self.provider.as_ref(), text, ctx).await?;
        Ok(r.erase_stats())
    }
}

#[tool_router]
impl Server {
    /// `consensus`: N samples, majority or unanimous vote.
    #[tool(
        name = "consensus",
        description = "Runs N parallel samples of the prompt and returns the majority (or unanimous) answer with its agreement ratio and the cost. Uses the endpoint from EXECUTIONKIT_BASE_URL / EXECUTIONKIT_MODEL; with none configured, the embedded offline model (deterministic, not a real LLM)."
    )]
    async fn consensus(
        &self,
        Parameters(p): Parameters<ConsensusParams>,
        request: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let (ctx, progress) = self.ctx(
            "consensus",
            &request,
            p.n.and_then(|n| u64::try_from(n).ok()).or(Some(3)),
        );
        self.run(&request, &ctx, progress, self.run_consensus(p, &ctx))
            .await
    }

    /// `react_loop`: a ReAct tool loop over the built-in tools.
    #[tool(
        name = "react_loop",
        description = "Runs a ReAct tool loop on the prompt over a fixed set of side-effect-free tools (calculator, utc_now, echo); callers cannot register tools. Returns the final answer and the cost. Uses the endpoint from EXECUTIONKIT_BASE_URL / EXECUTIONKIT_MODEL; with none configured, the embedded offline model, which answers without calling tools."
    )]
    async fn react_loop(
        &self,
        Parameters(p): Parameters<ReactParams>,
        request: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let (ctx, progress) = self.ctx("react_loop", &request, None);
        self.run(&request, &ctx, progress, self.run_react(p, &ctx))
            .await
    }

    /// `refine`: draft, judge, improve.
    #[tool(
        name = "refine",
        description = "Drafts an answer, scores it with an LLM judge and improves it until target_score or max_iterations. Returns the best draft, its score and the cost. Uses the endpoint from EXECUTIONKIT_BASE_URL / EXECUTIONKIT_MODEL; with none configured, the embedded offline model."
    )]
    async fn refine(
        &self,
        Parameters(p): Parameters<RefineParams>,
        request: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let (ctx, progress) = self.ctx("refine", &request, None);
        self.run(&request, &ctx, progress, self.run_refine(p, &ctx))
            .await
    }

    /// `structured`: JSON validated against a schema.
    #[tool(
        name = "structured",
        description = "Asks for a JSON answer that validates against the given JSON Schema, repairing invalid answers up to max_repairs times. Returns the JSON value and the cost. Uses the endpoint from EXECUTIONKIT_BASE_URL / EXECUTIONKIT_MODEL; with none configured, the embedded offline model."
    )]
    async fn structured(
        &self,
        Parameters(p): Parameters<StructuredParams>,
        request: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let (ctx, progress) = self.ctx("structured", &request, None);
        self.run(&request, &ctx, progress, self.run_structured(p, &ctx))
            .await
    }

    /// `pipe`: steps under one budget.
    #[tool(
        name = "pipe",
        description = "Chains consensus / refine steps (as `ek pipe --step` takes them) under one budget; each step's value is the next step's input. Returns the last value, every step's metadata and the cost. Uses the endpoint from EXECUTIONKIT_BASE_URL / EXECUTIONKIT_MODEL; with none configured, the embedded offline model."
    )]
    async fn pipe(
        &self,
        Parameters(p): Parameters<PipeParams>,
        request: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let (ctx, progress) = self.ctx("pipe", &request, None);
        self.run(&request, &ctx, progress, self.run_pipe(p, &ctx))
            .await
    }
}

#[tool_handler(name = "executionkit")]
impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "executionkit",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "executionkit's reasoning patterns as tools; each call runs under its own budget.",
            )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Runs the filter over `input`: what reached rmcp, and the error replies.
    async fn filter(input: &[u8]) -> (String, Vec<&'static str>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut out = Vec::new();
        filter_lines(input, &mut out, tx, Pending::default())
            .await
            .unwrap();
        let mut errors = Vec::new();
        while let Ok(e) = rx.try_recv() {
            errors.push(e);
        }
        (String::from_utf8(out).unwrap(), errors)
    }

    #[tokio::test]
    async fn json_lines_pass_and_garbage_is_answered() {
        let input = b"{\"a\":1}\r\n\n   \n\xEF\xBB\xBF[1,2]\nnot json\n\xff\xfe\n{\"b\":2}";
        let (passed, errors) = filter(input).await;
        assert_eq!(passed, "{\"a\":1}\n[1,2]\n{\"b\":2}\n");
        assert_eq!(errors, [PARSE_ERROR, PARSE_ERROR]);
        let e: Value = serde_json::from_str(PARSE_ERROR).unwrap();
        assert_eq!(e["error"]["code"], -32700);
        assert!(e["id"].is_null());
    }

    #[tokio::test]
    async fn a_line_over_the_limit_is_discarded_and_answered() {
        let mut input = vec![b'1'; MAX_LINE + 1];
        input.extend_from_slice(b"\n{\"ok\":true}\n");
        let (passed, errors) = filter(&input).await;
        assert_eq!(passed, "{\"ok\":true}\n");
        assert_eq!(errors, [TOO_LONG]);
    }

    #[tokio::test]
    async fn eof_waits_for_the_pending_requests() {
        let pending = Pending::default();
        let (tx, _rx) = mpsc::unbounded_channel();
        let input: &'static [u8] = concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#,
            "\n",
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":2}}"#,
            "\n"
        )
        .as_bytes();
        let task = tokio::spawn(filter_lines(input, tokio::io::sink(), tx, pending.clone()));
        while *pending.count.borrow() != 1 {
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(!task.is_finished(), "EOF did not wait for request 1");
        // A notification with the same id is no answer; the response is.
        pending.outbound(br#"{"jsonrpc":"2.0","id":1,"method":"x"}"#);
        assert_eq!(*pending.count.borrow(), 1);
        pending.outbound(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_writer_writes_whole_lines_from_both_sources() {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(PARSE_ERROR).unwrap();
        drop(tx);
        let rmcp: &[u8] = b"{\"id\":1,\"result\":{}}\n{\"id\":2,\"result\":{}}";
        let mut out = Vec::new();
        write_lines(rmcp, rx, &mut out, Pending::default())
            .await
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        let mut lines: Vec<&str> = out.lines().collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                "{\"id\":1,\"result\":{}}",
                "{\"id\":2,\"result\":{}}",
                PARSE_ERROR
            ]
        );
    }
}
