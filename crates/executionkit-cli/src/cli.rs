//! The command line, as clap sees it. Defaults are the reference's (CLI-CONTRACT.md).

use std::ops::Deref;

use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand};

/// `ek`: run executionkit's LLM reasoning patterns from the shell.
///
/// With no endpoint configured (`--base-url` / `EXECUTIONKIT_BASE_URL`) every command runs on the
/// embedded offline model, a deterministic stand-in for demos and tests.
#[derive(Debug, Parser)]
#[command(name = "ek", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// One pattern (or a pipe of them).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// N samples in parallel, majority (or unanimous) vote on the normalised text.
    Consensus(Deferred<ConsensusArgs>),
    /// Generate, score with an LLM judge, improve until the target score is reached.
    Refine(Deferred<RefineArgs>),
    /// Chain steps (`--step "consensus samples=5"`, `--step "refine target_score=0.9"`) under
    /// one budget; each step's value is the next step's input.
    Pipe(Deferred<PipeArgs>),
    /// A ReAct tool loop with built-in, side-effect-free tools: `calculator`, `utc_now`, `echo`.
    React(Deferred<ReactArgs>),
    /// JSON output validated against a JSON Schema file, with repair retries.
    Structured(Deferred<StructuredArgs>),
    /// One call per item (each FILE, or each line with --lines), then a reduce call.
    #[command(name = "map-reduce")]
    MapReduce(Deferred<MapReduceArgs>),
    /// Run the pipe of `--step`s on each case of a JSONL eval file and check the values:
    /// accuracy, a table (or `--json`), exit 1 below `--min-accuracy`.
    Eval(Deferred<EvalArgs>),
    /// An MCP server over stdio (newline-delimited JSON-RPC): tools `consensus` and
    /// `react_loop`; the budget flags apply to each tool call.
    Mcp(Deferred<McpArgs>),
    /// An OpenAI-compatible HTTP gateway: upstream models pass through, virtual models
    /// (`ek:consensus:N:MODEL`, `ek:refine:MODEL`, `ek:pipe:NAME`) run a pattern.
    Serve(Deferred<ServeArgs>),
    /// The providers' batch APIs (OpenAI Batch, Anthropic Message Batches): `submit` prompts,
    /// `status`, `results` (waits, streams the results to a file, prints the vote or texts).
    Batch(Deferred<BatchArgs>),
}

// `ek batch` (no doc comment: see `ConsensusArgs`).
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: BatchAction,
}

/// An `ek batch` action.
#[derive(Debug, Subcommand)]
pub enum BatchAction {
    /// Submit the prompts as one batch (one request each), or with --samples N, N samples of
    /// one prompt (a consensus); writes the state file.
    Submit(BatchSubmitArgs),
    /// Poll the batch named by the state file once and print its status.
    Status(BatchStatusArgs),
    /// Wait for the batch, stream its results to --out, print the vote or the texts; run it
    /// again after a kill: the state file names the batch.
    Results(BatchResultsArgs),
}

impl BatchAction {
    /// The common flags of the action.
    pub fn common(&self) -> &Common {
        match self {
            Self::Submit(a) => &a.common,
            Self::Status(a) => &a.common,
            Self::Results(a) => &a.common,
        }
    }
}

/// The batch an action works on.
#[derive(Debug, Args)]
pub struct BatchTarget {
    /// The state file (JSON: provider, batch id, entries, status; no secret).
    #[arg(long, value_name = "FILE")]
    pub state: String,
    /// The batch API.
    #[arg(long, default_value = "openai", value_parser = ["openai", "anthropic"])]
    pub api: String,
}

// `ek batch submit` (no doc comment: see `ConsensusArgs`).
#[derive(Debug, Args)]
pub struct BatchSubmitArgs {
    /// The prompts.
    #[arg(value_name = "PROMPT", required = true)]
    pub prompts: Vec<String>,
    /// N samples of the one prompt, voted on by `ek batch results`.
    #[arg(long, value_name = "N")]
    pub samples: Option<usize>,
    /// max_tokens of each request (the budget may grant less).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_tokens: u32,
    /// The batch.
    #[command(flatten)]
    pub target: BatchTarget,
    /// Flags every command takes.
    #[command(flatten)]
    pub common: Common,
}

// `ek batch status` (no doc comment: see `ConsensusArgs`).
#[derive(Debug, Args)]
pub struct BatchStatusArgs {
    /// The batch.
    #[command(flatten)]
    pub target: BatchTarget,
    /// Flags every command takes.
    #[command(flatten)]
    pub common: Common,
}

// `ek batch results` (no doc comment: see `ConsensusArgs`).
#[derive(Debug, Args)]
pub struct BatchResultsArgs {
    /// Where the results (JSONL, as the provider sent them) are written.
    #[arg(long, value_name = "FILE")]
    pub out: String,
    /// The vote of a consensus batch.
    #[arg(long, default_value = "majority", value_parser = ["majority", "unanimous"])]
    pub strategy: String,
    /// The first wait between polls in seconds (it doubles up to 60 s).
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub poll_interval: f64,
    /// The batch.
    #[command(flatten)]
    pub target: BatchTarget,
    /// Flags every command takes.
    #[command(flatten)]
    pub common: Common,
}

// `ek serve` (no doc comment: see `ConsensusArgs`).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Flags every command takes (the budget flags apply to each request).
    #[command(flatten)]
    pub common: Common,
    /// The address to listen on; port 0 picks a free port. Not loopback: needs --keys.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub listen: String,
    /// The gateway's API keys (TOML or JSON): SHA-256 hashes, names and per-key budgets.
    /// Without it, no client authentication (and loopback only).
    #[arg(long, value_name = "FILE")]
    pub keys: Option<String>,
}

// `ek mcp` (no doc comment: see `ConsensusArgs`).
#[derive(Debug, Args)]
pub struct McpArgs {
    /// Flags every command takes.
    #[command(flatten)]
    pub common: Common,
}

// `ek eval` (no doc comment: see `ConsensusArgs`).
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The eval file (`-`: stdin): one JSON object per line, `{"id"?, "prompt", "expected"? |
    /// "contains"?}`.
    #[arg(value_name = "FILE.jsonl")]
    pub file: String,
    /// Flags every command takes.
    #[command(flatten)]
    pub common: Common,
    /// A step of the pipe run on each prompt, as in `ek pipe`: `NAME KEY=VALUE …`. Repeat for
    /// more steps.
    #[arg(long = "step", value_name = "SPEC", required = true)]
    pub steps: Vec<String>,
    /// Exit 1 when the share of passing cases is below this (0 to 1).
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    pub min_accuracy: f64,
}

/// A command's flags, built by clap only when that command runs or its help is shown
/// (`Command::defer`). Building all six commands' flags and help texts cost ~0.3 M instructions
/// on every start of `ek` (callgrind), a third of its user-space start-up.
#[derive(Debug)]
pub struct Deferred<T>(pub T);

impl<T> Deref for Deferred<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: FromArgMatches> FromArgMatches for Deferred<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Self)
    }
    fn from_arg_matches_mut(matches: &mut ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches_mut(matches).map(Self)
    }
    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }
    fn update_from_arg_matches_mut(&mut self, matches: &mut ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches_mut(matches)
    }
}

impl<T: Args> Args for Deferred<T> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.defer(T::augment_args)
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(T::augment_args_for_update)
    }
    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }
}

// Flags every command takes (the prompt is per command: `map-reduce` takes files instead).
// No doc comment: clap would show it as each command's about (see `ConsensusArgs`).
#[derive(Debug, Args)]
pub struct Common {
    /// The OpenAI-compatible endpoint (default: `EXECUTIONKIT_BASE_URL`; none: the offline model).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,

    /// The model (default: `EXECUTIONKIT_MODEL`); required with an endpoint.
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,

    /// The API key (default: `EXECUTIONKIT_API_KEY`; `OPENAI_API_KEY` only for api.openai.com).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,

    /// The config file of named providers, failover chains and routers (default: `EK_CONFIG`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,

    /// A provider, failover chain or router of the config file, by name (not with --base-url,
    /// --model or --api-key; the EXECUTIONKIT_* variables are then ignored).
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,

    /// A routing tag on every request, for a router's `tier == '…'` rules (never sent).
    #[arg(long, value_name = "TIER")]
    pub tier: Option<String>,

    /// A system message before the prompt.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,

    /// Sent as `seed` on every request; consensus sample i sends N + i (offline model: 0).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Per-request timeout in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 120.0,
        allow_negative_numbers = true
    )]
    pub timeout: f64,

    /// HTTP retries after the first attempt (retryable errors only).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 3,
        allow_negative_numbers = true
    )]
    pub max_retries: i64,

    /// Budget: input tokens for the whole run.
    #[arg(long, value_name = "N")]
    pub max_input_tokens: Option<u64>,

    /// Budget: output tokens for the whole run.
    #[arg(long, value_name = "N")]
    pub max_output_tokens: Option<u64>,

    /// Budget: LLM calls for the whole run (retries count).
    #[arg(long, value_name = "N")]
    pub max_calls: Option<u64>,

    /// Budget: US dollars for the whole run; needs --price-in and --price-out.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub max_usd: Option<f64>,

    /// Price of input tokens, USD per million.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub price_in: Option<f64>,

    /// Price of output tokens, USD per million.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub price_out: Option<f64>,

    /// Price of cached input tokens read, USD per million (default: --price-in); needs
    /// --price-in and --price-out.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub price_cache_read: Option<f64>,

    /// Price of input tokens written to the cache, USD per million (default: --price-in);
    /// needs --price-in and --price-out.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub price_cache_write: Option<f64>,

    /// Print exactly one JSON object on stdout (success or error).
    #[arg(long)]
    pub json: bool,

    /// Export the run's spans to this OpenTelemetry collector over OTLP/HTTP (protobuf), e.g.
    /// `http://localhost:4318` (`/v1/traces` is appended unless the URL ends with it).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

// `ek consensus`. No doc comment: clap would show it as the command's about, in place of the
// one on its `Command` variant (the flags are built late, by `Deferred`).
#[derive(Debug, Args)]
pub struct ConsensusArgs {
    /// The prompt; `-` reads it from stdin. Not with --inputs.
    #[arg(
        value_name = "PROMPT",
        required_unless_present = "inputs",
        conflicts_with = "inputs"
    )]
    pub prompt: Option<String>,
    /// Many questions instead of PROMPT: a JSON Lines file (`-`: stdin), one
    /// `{"prompt": "…", "id": "…"}` per line (`id` optional: the line number). Prints one JSON
    /// line per question, in input order, then a summary line.
    #[arg(long, value_name = "FILE.jsonl")]
    pub inputs: Option<String>,
    /// With --inputs: the samples for all questions together, spent where the votes are most
    /// split (every question at least one, none more than --samples; default: --samples ×
    /// the number of questions).
    #[arg(long, value_name = "N")]
    pub total_samples: Option<usize>,
    /// Flags every command takes.
    #[command(flatten)]
    pub common: Common,
    /// Number of samples.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub samples: usize,
    /// Sampling temperature.
    #[arg(
        long,
        default_value_t = 0.9,
        value_name = "T",
        allow_negative_numbers = true
    )]
    pub temperature: f64,
    /// Samples in flight at once.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub max_concurrency: usize,
    /// `majority` or `unanimous`.
    #[arg(long, default_value = "majority", value_name = "STRATEGY")]
    pub strategy: String,
    /// Output tokens per sample.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_tokens: u32,
    /// Stop sampling when the answer is settled: `none`, `window[:K]` (the last K answers
    /// agree; K defaults to 5) or `adaptive[:P]` (the leader beats the runner-up with posterior
    /// probability P; default 0.95). With a rule, --samples is the cap.
    #[arg(long, default_value = "none", value_name = "RULE")]
    pub early_stop: String,
    /// Weigh each vote by the model's confidence: asks for token log-probabilities and weighs
    /// a sample by exp(mean token log-probability); plain counting when a sample has none.
    #[arg(long)]
    pub logprob_weights: bool,
    /// Universal self-consistency: when every answer differs, one extra (counted) call asks the
    /// model which answer is the most consistent with the others, and that answer wins.
    #[arg(long)]
    pub usc: bool,
}

// `ek refine` (no doc comment: see `ConsensusArgs`).
#[derive(Debug, Args)]
pub struct RefineArgs {
    /// The prompt; `-` reads it from stdin.
    #[arg(value_name = "PROMPT")]
    pub prompt: String,
    /// Flags every command takes.
    #[command(flatten)]
    pub common: Common,
    /// Stop once a draft scores at least this (0..=1).
    #[arg(
        long,
        default_value_t = 0.9,
        value_name = "X",
        allow_negative_numbers = true
    )]
    pub target_score: f64,
    /// Improvement rounds after the first draft.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub max_iterations: usize,
    /// Stop after this many rounds without a score change above --delta-threshold.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub patience: usize,
    /// The score change that counts as progress.
    #[arg(
        long,
        default_value_t = 0.01,
        value_name = "X",
        allow_negative_numbers = true
    )]
    pub delta_threshold: f64,
    /// Sampling temperature of the writer.
    #[arg(
        long,
        default_value_t = 0.7,
        value_name = "T",
        allow_negative_numbers = true
    )]
    pub temperature: f64,
    /// Output tokens per draft.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_tokens: u32,
    /// The judge sees at most this many characters of a draft.
    #[arg(long, default_value_t = 32768, value_name = "N")]
    pub max_eval_chars: usize,
}

// `ek pipe` (no doc comment: see `ConsensusArgs`).
#[derive(Debug, Args)]
pub struct PipeArgs {
    /// The prompt; `-` reads it from stdin.
    #[arg(value_name = "PROMPT")]
    pub prompt: String,
    /// Flags every command takes.
    #[command(flatten)]
    pub common: Common,
    /// A step: `NAME KEY=VALUE …` with NAME `consensus` or `refine`; keys are that command's
    /// options with `_` for `-`, plus `model=NAME`, `provider=NAME` (from --config), `tier=T`
    /// and `if_score_below=X`. Repeat for more steps.
    #[arg(long = "step", value_name = "SPEC", required = true)]
    pub steps: Vec<String>,
}

// `ek react` (no doc comment: see `ConsensusArgs`).
#[derive(Debug, Args)]
pub struct ReactArgs {
    /// The prompt; `-` reads it from stdin.
    #[arg(value_name = "PROMPT")]
    pub prompt: String,
    /// Flags every command takes.
    #[command(flatten)]
    pub common: Common,
    /// When the answer is printed as it is generated.
    #[command(flatten)]
    pub stream: StreamFlags,
    /// The most LLM rounds; with no answer after them the run fails (`max_iterations`).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub max_rounds: usize,
    /// Sampling temperature.
    #[arg(
        long,
        default_value_t = 0.3,
        value_name = "T",
        allow_negative_numbers = true
    )]
    pub temperature: f64,
    /// Output tokens per round.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_tokens: u32,
    /// `auto` (the model decides), `none` (no tool calls), `required` (the first round must
    /// call a tool; later rounds are `auto`) or a tool's name (the first round must call that
    /// tool; later rounds are `auto`).
    #[arg(long, value_name = "CHOICE", default_value = "auto")]
    pub tool_choice: String,
}

// `ek structured` (no doc comment: see `ConsensusArgs`).
#[derive(Debug, Args)]
pub struct StructuredArgs {
    /// The prompt; `-` reads it from stdin.
    #[arg(value_name = "PROMPT")]
    pub prompt: String,
    /// Flags every command takes.
    #[command(flatten)]
    pub common: Common,
    /// When the answer is printed as it is generated.
    #[command(flatten)]
    pub stream: StreamFlags,
    /// The JSON Schema the reply must match (a file holding one JSON object).
    #[arg(long, value_name = "FILE.json", required = true)]
    pub schema: std::path::PathBuf,
    /// Repair calls after the first call (0 = none).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub max_repairs: usize,
    /// Sampling temperature.
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "T",
        allow_negative_numbers = true
    )]
    pub temperature: f64,
    /// Output tokens per call.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_tokens: u32,
    /// Do not send the schema as `response_format` (for servers without `json_schema` support);
    /// replies are still validated against it.
    #[arg(long)]
    pub no_response_format: bool,
}

// `ek map-reduce` (no doc comment: see `ConsensusArgs`).
#[derive(Debug, Args)]
pub struct MapReduceArgs {
    /// The items: each FILE is one item (`-` reads stdin), or each non-empty line with --lines.
    #[arg(value_name = "FILE")]
    pub files: Vec<String>,
    /// Flags every command takes.
    #[command(flatten)]
    pub common: Common,
    /// When the answer is printed as it is generated.
    #[command(flatten)]
    pub stream: StreamFlags,
    /// The prompt for each item; `{item}` is replaced by the item.
    #[arg(long, value_name = "T", required = true)]
    pub map_template: String,
    /// The final prompt; `{mapped_outputs}` is replaced by the map outputs, separated by `---`.
    #[arg(long, value_name = "R", required = true)]
    pub reduce_template: String,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub max_concurrency: usize,
    /// Sampling temperature of every call.
    #[arg(
        long,
        default_value_t = 0.3,
        value_name = "T",
        allow_negative_numbers = true
    )]
    pub temperature: f64,
    /// Output tokens per call.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_tokens: u32,
    /// Each non-empty line of the files is one item.
    #[arg(long)]
    pub lines: bool,
}

// `--stream` / `--no-stream` of the commands whose value is one call's text (no doc comment:
// see `ConsensusArgs`).
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct StreamFlags {
    /// Print the answer as it is generated (the default when stdout is a terminal); no effect
    /// with --json.
    #[arg(long, conflicts_with = "no_stream")]
    pub stream: bool,
    /// Print the answer only once the run has finished, even on a terminal.
    #[arg(long)]
    pub no_stream: bool,
}

impl Command {
    /// The flags every command takes.
    pub fn common(&self) -> &Common {
        match self {
            Self::Consensus(a) => &a.common,
            Self::Refine(a) => &a.common,
            Self::Pipe(a) => &a.common,
            Self::React(a) => &a.common,
            Self::Structured(a) => &a.common,
            Self::MapReduce(a) => &a.common,
            Self::Eval(a) => &a.common,
            Self::Mcp(a) => &a.common,
            Self::Serve(a) => &a.common,
            Self::Batch(a) => a.action.common(),
        }
    }

    /// `--stream` / `--no-stream`, for the commands that can print their answer as it is
    /// generated.
    pub fn stream_flags(&self) -> Option<StreamFlags> {
        match self {
            Self::React(a) => Some(a.stream),
            Self::Structured(a) => Some(a.stream),
            Self::MapReduce(a) => Some(a.stream),
            _ => None,
        }
    }

    /// The prompt argument as given (`-` means stdin); `None` for `map-reduce` and for
    /// `consensus --inputs`.
    pub fn prompt(&self) -> Option<&str> {
        match self {
            Self::Consensus(a) => a.prompt.as_deref(),
            Self::Refine(a) => Some(&a.prompt),
            Self::Pipe(a) => Some(&a.prompt),
            Self::React(a) => Some(&a.prompt),
            Self::Structured(a) => Some(&a.prompt),
            Self::MapReduce(_) | Self::Eval(_) | Self::Mcp(_) | Self::Serve(_) | Self::Batch(_) => {
                None
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_whole_command_tree_is_consistent() {
        // `debug_assert` builds every deferred command too.
        Cli::command().debug_assert();
    }

    #[test]
    fn deferred_commands_keep_their_about_and_parse() {
        let mut cmd = Cli::command();
        cmd.build();
        for sub in cmd.get_subcommands() {
            let about = sub.get_about().map(ToString::to_string).unwrap_or_default();
            assert!(!about.is_empty(), "{} has no about", sub.get_name());
            assert!(
                !about.starts_with("Flags every command"),
                "{}: {about}",
                sub.get_name()
            );
            assert!(!about.starts_with("`ek"), "{}: {about}", sub.get_name());
        }
        let cli = Cli::try_parse_from(["ek", "consensus", "--samples", "7", "hello"]).unwrap();
        let Command::Consensus(a) = &cli.command else {
            panic!("not consensus: {cli:?}");
        };
        assert_eq!((a.samples, a.prompt.as_deref()), (7, Some("hello")));
        let err = Cli::try_parse_from(["ek", "refine", "--bogus", "x"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }
}
