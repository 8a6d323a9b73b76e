//! `ek`: executionkit's patterns from the shell. The interface is fixed in `docs/cli.md`
//! (the CLI contract): endpoint and key rules, common flags, the `--step` grammar, `--json`
//! shapes and exit codes 0 (success), 1 (failure after the run started), 2 (invalid usage, before
//! any request) and 130 (interrupted).

mod batch;
mod calc;
mod cli;
mod config;
mod endpoint;
mod eval;
#[cfg(test)]
mod fuzz_replay;
mod inputs;
mod many;
mod mcp;
mod output;
mod progress;
mod secrets;
mod serve;
mod step;
mod streaming;
mod tools;
mod traces;

use executionkit::{CallOptions, WithCallOptions as _};
use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use executionkit::StopRule;
use executionkit::{
    Budget, Consensus, CostRates, Error, ErrorKind, LlmProvider, MapReduce, Pattern, PatternResult,
    Pipe, ReactLoop, RefineLoop, RetryPolicy, RunContext, StructuredValue, Tool, ToolChoice,
    VotingStrategy,
};
use serde_json::Value;

use crate::cli::{
    Cli, Command, Common, ConsensusArgs, MapReduceArgs, ReactArgs, RefineArgs, StructuredArgs,
};
use crate::output::Shape;
use crate::progress::Progress;
use crate::secrets::Secrets;
use crate::step::{StepPattern, parse_step};

/// Exit code: the run failed after it started.
const EXIT_FAILURE: u8 = 1;
/// Exit code: invalid usage or argument, before any request.
const EXIT_USAGE: u8 = 2;
/// Exit code: interrupted (Ctrl-C).
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let json_requested = args.iter().any(|a| a == "--json");
    let env = endpoint::Env::from_process();
    // Gathered before parsing, so that a usage error quoting an argument is redacted too.
    let secrets = Secrets::gather(&args, &env);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            if json_requested && e.use_stderr() {
                let msg = e.render().to_string();
                let msg = msg.trim();
                let msg = msg.strip_prefix("error: ").unwrap_or(msg);
                let err = Error::invalid_argument("arguments", msg.to_owned());
                output::print_json(output::error_json(&err), &secrets);
                return ExitCode::from(EXIT_USAGE);
            }
            let rendered = e.render().to_string();
            if let std::borrow::Cow::Owned(clean) = secrets.text(&rendered) {
                // clap quoted a secret: print the message without it (and without colour).
                let _ = if e.use_stderr() {
                    std::io::stderr().write_all(clean.as_bytes())
                } else {
                    std::io::stdout().write_all(clean.as_bytes())
                };
                return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE));
            }
            e.exit();
        }
    };
    let json = cli.command.common().json;
    let otlp = match traces::start(cli.command.common().otlp_endpoint.as_deref()) {
        Ok(o) => o,
        Err(e) => {
            output::print_error(&e, json, &secrets);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // One thread: every pattern fans out inside its own task (samples, map items and tool
    // calls are polled together), so a work-stealing pool buys nothing here and costs CPU per
    // call (bench/RESULTS.md: 2.5x -> 1.8x wrk's CPU per request at 10,000 samples).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let err = Error::new(
                ErrorKind::Provider,
                format!("cannot start the runtime: {e}"),
            );
            output::print_error(&err, json, &secrets);
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let code = runtime.block_on(run(cli.command, json, &env, &secrets));
    // In-flight requests of an interrupted run are dropped with the runtime, not awaited.
    runtime.shutdown_background();
    traces::finish(otlp, &secrets);
    ExitCode::from(code)
}

/// What a command runs, fully built and validated.
enum Job {
    Consensus(Consensus),
    Refine(RefineLoop),
    Pipe(Pipe),
    /// The loop, with its tools.
    React(ReactLoop),
    Structured(StructuredValue),
    /// The pattern and its items.
    MapReduce(MapReduce, Vec<String>),
    /// `consensus --inputs`: many questions under one total sample budget.
    Many(many::Many),
    /// `ek eval`: the pipe and the cases.
    Eval(eval::Eval),
}

/// A finished run: a text value, or a JSON value (`ek structured`).
enum Done {
    Text(PatternResult<String>),
    Json(PatternResult<Value>),
    /// `consensus --inputs`: printed as JSON Lines.
    Many(many::Outcome),
    /// `ek eval`: the report, printed as a table or one JSON object.
    Eval(eval::Outcome),
}

impl Done {
    fn text<S>(r: PatternResult<String, S>) -> Self {
        Self::Text(r.erase_stats())
    }
}

/// Everything prepared before the first request.
struct Prepared {
    job: Job,
    provider: Arc<dyn LlmProvider>,
    prompt: String,
    ctx: RunContext,
    progress: Option<Progress>,
    /// Prints the answer as it is generated (`--stream`, or a terminal).
    streamer: Option<streaming::Streamer>,
    /// The process's secrets and the keys the config file's providers were given.
    secrets: Secrets,
}

async fn run(command: Command, json: bool, env: &endpoint::Env, secrets: &Secrets) -> u8 {
    if let Command::Mcp(a) = &command {
        return mcp::serve(&a.common, env, secrets).await;
    }
    if let Command::Serve(a) = &command {
        return serve::run(a, env, secrets).await;
    }
    if let Command::Batch(a) = &command {
        return batch::run(a, env, secrets).await;
    }
    let shape = match command {
        Command::Pipe(_) => Shape::Pipe,
        _ => Shape::Single,
    };
    let prepared = match prepare(&command, env, secrets) {
        Ok(p) => p,
        Err(e) => {
            output::print_error(&e, json, secrets);
            return EXIT_USAGE;
        }
    };
    let Prepared {
        job,
        provider,
        prompt,
        ctx,
        progress,
        streamer,
        secrets,
    } = prepared;
    let secrets = &secrets;
    let work = async {
        let p = provider.as_ref();
        match &job {
            // The typed statistics are already in the metadata, which is what is printed.
            Job::Consensus(c) => c.run(p, &prompt, &ctx).await.map(Done::text),
            Job::Refine(r) => r.run(p, &prompt, &ctx).await.map(Done::text),
            Job::Pipe(pipe) => pipe.run(p, &prompt, &ctx).await.map(Done::text),
            Job::React(r) => r.run(p, &prompt, &ctx).await.map(Done::text),
            Job::Structured(s) => s
                .run(p, &prompt, &ctx)
                .await
                .map(|r| Done::Json(r.erase_stats())),
            Job::MapReduce(m, items) => m.run(p, items, &ctx).await.map(Done::text),
            Job::Many(m) => m.run(p, &ctx).await.map(Done::Many),
            Job::Eval(e) => e.run(p, &ctx).await.map(Done::Eval),
        }
    };
    let outcome: Result<Done, (Error, u8)> = tokio::select! {
        r = work => r.map_err(|e| {
            // An argument rejected before anything was spent is a usage error.
            let code = if e.is_invalid_argument() && e.cost().is_zero() { EXIT_USAGE } else { EXIT_FAILURE };
            (e, code)
        }),
        _ = tokio::signal::ctrl_c() => {
            // Dropping `work` (the select's other branch) cancels every in-flight request.
            let ledger = ctx.ledger();
            let e = Error::cancelled()
                .with_cost(ledger.spent())
                .with_usd(ledger.spent_usd());
            Err((e, EXIT_INTERRUPTED))
        }
    };
    if let Some(p) = &progress {
        p.finish();
    }
    // What was streamed is the value line (and, on a failure, stays on stdout).
    let streamed = streamer.as_ref().is_some_and(streaming::Streamer::finish);
    match outcome {
        Ok(done) => {
            match &done {
                Done::Text(r) if streamed => output::print_after_stream(r, shape, secrets),
                Done::Json(r) if streamed => output::print_after_stream(r, shape, secrets),
                Done::Text(r) => output::print_success(r, json, shape, secrets),
                Done::Json(r) => output::print_success(r, json, shape, secrets),
                Done::Many(o) => return many::print(o, secrets),
                Done::Eval(o) => return eval::print(o, json, secrets),
            }
            0
        }
        Err((e, code)) => {
            output::print_error(&e, json, secrets);
            code
        }
    }
}

/// Reads and validates everything; no request is sent here.
fn prepare(command: &Command, env: &endpoint::Env, secrets: &Secrets) -> Result<Prepared, Error> {
    let common = command.common();
    let prompt = match command.prompt() {
        Some(p) => read_prompt(p)?,
        None => String::new(),
    };
    // Checked here too, so a bad --timeout is an error on the offline model as well.
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
    // What every request inherits from the command line; each command adds its own
    // temperature and max_tokens.
    let mut call = CallOptions::new();
    call.seed = common.seed.or(selected.offline.then_some(0));
    call.system.clone_from(&common.system);
    call.tier.clone_from(&common.tier);
    let mut provider = selected.provider;
    let job = match command {
        Command::Consensus(a) => match many::inputs(a)? {
            None => Job::Consensus(consensus(a, &call)?),
            Some(path) => Job::Many(many::prepare(a, path, consensus(a, &call)?)?),
        },
        Command::Refine(a) => Job::Refine(refine(a, &call)?),
        Command::Pipe(a) => Job::Pipe(pipe(&a.steps, &call, builder.as_mut())?),
        Command::Eval(a) => Job::Eval(eval::prepare(a, pipe(&a.steps, &call, builder.as_mut())?)?),
        Command::React(a) => {
            if selected.offline {
                // The offline model never calls a tool; it is offered the tools and answers.
                provider = Arc::new(tools::AnswersWithoutTools(provider));
            }
            let r = react(a, &call, tools::builtin())?;
            r.validate(provider.as_ref())?;
            Job::React(r)
        }
        Command::Structured(a) => Job::Structured(structured(a, &call)?),
        Command::Mcp(_) => {
            return Err(Error::invalid_argument(
                "command",
                "ek mcp is served by `mcp::serve`",
            ));
        }
        Command::Serve(_) => {
            return Err(Error::invalid_argument(
                "command",
                "ek serve is served by `serve::run`",
            ));
        }
        Command::Batch(_) => {
            return Err(Error::invalid_argument(
                "command",
                "ek batch is served by `batch::run`",
            ));
        }
        Command::MapReduce(a) => {
            let m = map_reduce(a, &call)?;
            let items = inputs::read_items(&a.files, a.lines)?;
            Job::MapReduce(m, items)
        }
    };
    let (prices, unpriced, keys) = match &builder {
        Some(b) => (
            b.prices().map(|(m, r)| (m.to_owned(), r)).collect(),
            b.unpriced().into_iter().map(str::to_owned).collect(),
            b.keys().to_vec(),
        ),
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    let secrets = secrets.with(&keys);
    let budget = budget(common, &prices, &unpriced, config.as_ref())?;
    let mut ctx = RunContext::new().budget(budget.clone()).retry(retry);
    // The bar exists only on a terminal; otherwise no event callback is registered at all.
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| Progress::new(&budget, secrets.clone()));
    if let Some(p) = &progress {
        let p = p.clone();
        ctx = ctx.on_event(move |e| p.on_event(e));
    }
    let streamer = streaming::wanted(command.stream_flags(), common.json)
        .then(|| streaming::Streamer::stdout(secrets.clone(), progress.clone()));
    if let Some(s) = &streamer {
        ctx = s.attach(ctx);
    }
    Ok(Prepared {
        job,
        provider,
        prompt,
        ctx,
        progress,
        streamer,
        secrets,
    })
}

/// The prompt, or stdin for `-`.
fn read_prompt(arg: &str) -> Result<String, Error> {
    let prompt = if arg == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| {
            Error::invalid_argument("prompt", format!("cannot read the prompt from stdin: {e}"))
        })?;
        s.strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&s)
            .to_owned()
    } else {
        arg.to_owned()
    };
    if prompt.trim().is_empty() {
        return Err(Error::invalid_argument(
            "prompt",
            "PROMPT is empty (pass the prompt, or `-` to read it from stdin)",
        ));
    }
    Ok(prompt)
}

/// The run's budget from the budget flags, and the prices of the config file's providers the
/// run uses (`prices`: model → rates; `unpriced`: used providers without prices).
fn budget(
    common: &Common,
    prices: &[(String, CostRates)],
    unpriced: &[String],
    config: Option<&config::Config>,
) -> Result<Budget, Error> {
    let mut b = Budget::new();
    if let Some(n) = common.max_input_tokens {
        b = b.max_input_tokens(n);
    }
    if let Some(n) = common.max_output_tokens {
        b = b.max_output_tokens(n);
    }
    if let Some(n) = common.max_calls {
        b = b.max_calls(n);
    }
    match (common.price_in, common.price_out) {
        (Some(p_in), Some(p_out)) => {
            let mut rates = CostRates::new(p_in, p_out)?;
            if let Some(p) = common.price_cache_read {
                rates = rates.with_cache_read(p)?;
            }
            if let Some(p) = common.price_cache_write {
                rates = rates.with_cache_write(p)?;
            }
            b = b.default_price(rates);
        }
        (None, None) => {
            if common.price_cache_read.is_some() || common.price_cache_write.is_some() {
                return Err(Error::invalid_argument(
                    "price",
                    "--price-cache-read and --price-cache-write need --price-in and --price-out (USD per million input / output tokens)",
                ));
            }
            if common.max_usd.is_some() {
                match config {
                    Some(_) if !prices.is_empty() && unpriced.is_empty() => {}
                    Some(c) if !prices.is_empty() => {
                        return Err(Error::invalid_argument(
                            "max_usd",
                            format!(
                                "--max-usd: {} in {} {} no price_in / price_out, and no --price-in / --price-out is given",
                                unpriced.join(", "),
                                c.path(),
                                if unpriced.len() == 1 { "has" } else { "have" }
                            ),
                        ));
                    }
                    _ => {
                        return Err(Error::invalid_argument(
                            "max_usd",
                            "--max-usd needs --price-in and --price-out (USD per million input / output tokens)",
                        ));
                    }
                }
            }
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::invalid_argument(
                "price",
                "--price-in and --price-out go together (USD per million input / output tokens)",
            ));
        }
    }
    for (model, rates) in prices {
        b = b.price(model.clone(), *rates);
    }
    if let Some(usd) = common.max_usd {
        b = b.max_usd(usd);
    }
    b.validate()?;
    Ok(b)
}

fn consensus(a: &ConsensusArgs, call: &CallOptions) -> Result<Consensus, Error> {
    let strategy: VotingStrategy = a.strategy.parse().map_err(|_| {
        Error::invalid_argument(
            "strategy",
            format!(
                "--strategy must be one of: majority, unanimous; got `{}`",
                a.strategy
            ),
        )
    })?;
    let early_stop: StopRule = a.early_stop.parse().map_err(|e: Error| {
        Error::invalid_argument("early_stop", format!("--early-stop: {}", e.message()))
    })?;
    let c = Consensus::default()
        .options(
            call.clone()
                .temperature(a.temperature)
                .max_tokens(a.max_tokens),
        )
        .samples(a.samples)
        .max_concurrency(a.max_concurrency)
        .strategy(strategy)
        .early_stop(early_stop)
        .logprob_weights(a.logprob_weights)
        .usc(a.usc);
    c.validate()?;
    Ok(c)
}

fn refine(a: &RefineArgs, call: &CallOptions) -> Result<RefineLoop, Error> {
    let r = RefineLoop::default()
        .options(
            call.clone()
                .temperature(a.temperature)
                .max_tokens(a.max_tokens),
        )
        .target_score(a.target_score)
        .max_iterations(a.max_iterations)
        .patience(a.patience)
        .delta_threshold(a.delta_threshold)
        .max_eval_chars(a.max_eval_chars);
    r.validate()?;
    Ok(r)
}

fn pipe(
    steps: &[String],
    call: &CallOptions,
    mut config: Option<&mut config::Builder<'_>>,
) -> Result<Pipe, Error> {
    let mut pipe = Pipe::new();
    for (i, spec) in steps.iter().enumerate() {
        let step = parse_step(i + 1, spec, call)?;
        let provider = match (&step.provider, config.as_deref_mut()) {
            (None, _) => None,
            (Some(name), Some(b)) => Some(b.get(&format!("--step {}: provider", i + 1), name)?),
            (Some(name), None) => {
                return Err(Error::invalid_argument(
                    "provider",
                    format!(
                        "--step {} (`{spec}`): provider={name} needs a config file: pass --config FILE or set EK_CONFIG",
                        i + 1
                    ),
                ));
            }
        };
        pipe = match (step.pattern, step.if_score_below, provider) {
            (StepPattern::Consensus(c), None, None) => pipe.step(c),
            (StepPattern::Refine(r), None, None) => pipe.step(r),
            (StepPattern::Consensus(c), Some(x), None) => pipe.step_if(below(x), c),
            (StepPattern::Refine(r), Some(x), None) => pipe.step_if(below(x), r),
            (StepPattern::Consensus(c), None, Some(p)) => pipe.step_with_provider(p, c),
            (StepPattern::Refine(r), None, Some(p)) => pipe.step_with_provider(p, r),
            (StepPattern::Consensus(c), Some(x), Some(p)) => {
                pipe.step_if_with_provider(below(x), p, c)
            }
            (StepPattern::Refine(r), Some(x), Some(p)) => {
                pipe.step_if_with_provider(below(x), p, r)
            }
        };
    }
    Ok(pipe)
}

/// `if_score_below=X`: the previous score is below X, or there is none.
fn below(x: f64) -> impl Fn(&PatternResult<String>) -> bool + Send + Sync + 'static {
    move |prev| prev.score.is_none_or(|s| s < x)
}

fn react(a: &ReactArgs, call: &CallOptions, tools: Vec<Tool>) -> Result<ReactLoop, Error> {
    let names: Vec<String> = tools.iter().map(|t| t.name().to_owned()).collect();
    let mut r = ReactLoop::new()
        .options(
            call.clone()
                .temperature(a.temperature)
                .max_tokens(a.max_tokens),
        )
        .tools(tools)
        .max_rounds(a.max_rounds);
    r = match a.tool_choice.as_str() {
        "auto" => r.tool_choice(ToolChoice::Auto),
        // Forcing every round would never let the model answer: force the first one only.
        "required" => r
            .initial_tool_choice(ToolChoice::Required)
            .tool_choice(ToolChoice::Auto),
        "none" => r.tool_choice(ToolChoice::None),
        name if names.iter().any(|n| n == name) => r
            .initial_tool_choice(ToolChoice::Function(name.to_owned()))
            .tool_choice(ToolChoice::Auto),
        other => {
            return Err(Error::invalid_argument(
                "tool_choice",
                format!(
                    "--tool-choice must be one of: auto, required, none, or a tool name ({}); got `{other}`",
                    names.join(", ")
                ),
            ));
        }
    };
    Ok(r)
}

fn structured(a: &StructuredArgs, call: &CallOptions) -> Result<StructuredValue, Error> {
    let (name, schema) = inputs::read_schema(&a.schema)?;
    let s = StructuredValue::new()
        .options(
            call.clone()
                .temperature(a.temperature)
                .max_tokens(a.max_tokens),
        )
        .schema(name, schema)
        .max_repairs(a.max_repairs)
        .use_response_format(!a.no_response_format);
    s.validate().map_err(|e| {
        if e.metadata().get("argument").and_then(Value::as_str) == Some("schema") {
            Error::invalid_argument(
                "schema",
                format!("--schema {}: {}", a.schema.display(), e.message()),
            )
        } else {
            e
        }
    })?;
    Ok(s)
}

fn map_reduce(a: &MapReduceArgs, call: &CallOptions) -> Result<MapReduce, Error> {
    let m = MapReduce::new()
        .options(
            call.clone()
                .temperature(a.temperature)
                .max_tokens(a.max_tokens),
        )
        .map_template(a.map_template.clone())
        .reduce_template(a.reduce_template.clone())
        .max_concurrency(a.max_concurrency);
    m.validate()?;
    Ok(m)
}
