//! The provider seam: [`LlmProvider`], the request and response types, and the providers
//! that ship with the crate ([`OpenAiProvider`] for OpenAI-compatible endpoints and
//! [`AnthropicProvider`] for Anthropic's Messages API over HTTP, [`MockProvider`],
//! [`OfflineModel`]).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};

mod anthropic;
pub(crate) mod batch_http;
mod failover;
mod http;
#[cfg(any(test, feature = "testing"))]
mod mock;
#[cfg(feature = "offline")]
mod offline;
mod openai;
pub(crate) mod parse;
mod rate_limit;
mod router;
pub(crate) mod sse;
mod transport;
pub(crate) mod wire;
#[cfg(feature = "otel")]
pub(crate) use transport::{Settings, Transport, TransportError};

pub(crate) use anthropic::parse_message as parse_anthropic_message;
#[cfg_attr(not(feature = "testing"), allow(unused_imports))] // reached through `internals`
pub use anthropic::{ANTHROPIC_BASE_URL, ANTHROPIC_VERSION};
pub use anthropic::{AnthropicProvider, AnthropicProviderBuilder};
pub use failover::{Failover, FailoverBuilder, Route};
pub(crate) use failover::{RouteEntry, moves_on};
#[cfg(any(test, feature = "testing"))]
pub use mock::{MockCall, MockProvider};
#[cfg(feature = "offline")]
pub use offline::OfflineModel;
pub use openai::{OpenAiProvider, OpenAiProviderBuilder};
pub use rate_limit::RateLimited;
pub use router::{RouteRequest, Router, RouterBuilder};
pub use sse::StreamLimits;

/// The default `max_tokens` of every pattern and of [`OpenAiProvider`].
///
/// ```
/// use executionkit::{Consensus, MockProvider, RunContext, internals::provider::DEFAULT_MAX_TOKENS};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["a"]);
/// Consensus::new().samples(1).run(&p, "q", &RunContext::new()).await.unwrap();
/// assert_eq!(p.last_call().unwrap().request.max_tokens, Some(DEFAULT_MAX_TOKENS));
/// assert_eq!(DEFAULT_MAX_TOKENS, 4096);
/// # });
/// ```
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// A chat-completions endpoint: anything that can answer a [`ChatRequest`].
///
/// The trait is object-safe: patterns take `&dyn LlmProvider` and pipes hold
/// `Arc<dyn LlmProvider>`. Retry, budget and events are applied around it by the engine, so an
/// implementation only speaks its protocol.
///
/// ```
/// use std::sync::Arc;
/// use executionkit::{ChatRequest, LlmProvider, Message, MockProvider};
/// # futures::executor::block_on(async {
/// let p: Arc<dyn LlmProvider> = Arc::new(MockProvider::new(["hi"]));
/// let r = p.complete(&ChatRequest::new(vec![Message::user("hello")])).await.unwrap();
/// assert_eq!(r.content(), "hi");
/// # });
/// ```
#[async_trait]
pub trait LlmProvider: Send + Sync + fmt::Debug {
    /// The model requests go to when [`ChatRequest::model`] is unset.
    ///
    /// ```
    /// use executionkit::{LlmProvider, MockProvider, OfflineModel};
    /// assert_eq!(MockProvider::default().with_model("gpt-test").model(), "gpt-test");
    /// assert!(!OfflineModel::new().model().is_empty());
    /// ```
    fn model(&self) -> &str;

    /// Sends one request and returns every choice.
    ///
    /// ```
    /// use executionkit::{ChatRequest, LlmProvider, Message, MockProvider};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["pong"]);
    /// let r = p.complete(&ChatRequest::new(vec![Message::user("ping")])).await.unwrap();
    /// assert_eq!(r.content(), "pong");
    /// # });
    /// ```
    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse>;

    /// Streams one request. Nothing is sent until the stream is first polled. The stream yields
    /// text deltas and tool-call deltas, and ends with exactly one [`StreamEvent::Finished`]
    /// carrying the accumulated response and its usage.
    ///
    /// The default implementation fails with a `provider` error: the provider cannot stream.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use executionkit::{ChatRequest, LlmProvider, Message, MockProvider, StreamEvent};
    /// # futures::executor::block_on(async {
    /// let p = MockProvider::new(["hi"]);
    /// let events: Vec<StreamEvent> = p
    ///     .stream(ChatRequest::new(vec![Message::user("hello")]))
    ///     .map(|e| e.unwrap())
    ///     .collect()
    ///     .await;
    /// assert_eq!(events[0], StreamEvent::TextDelta("h".into()));
    /// assert!(matches!(events.last(), Some(StreamEvent::Finished(r)) if r.content() == "hi"));
    /// # });
    /// ```
    fn stream(&self, request: ChatRequest) -> ChatStream {
        let _ = request;
        Box::pin(futures::stream::once(async {
            Err(Error::new(
                ErrorKind::Provider,
                "this provider does not support streaming",
            ))
        }))
    }

    /// `true` when the provider sends tools to the model.
    ///
    /// ```
    /// use executionkit::{LlmProvider, MockProvider, OfflineModel};
    /// assert!(MockProvider::default().supports_tools());
    /// assert!(!OfflineModel::new().supports_tools());
    /// ```
    fn supports_tools(&self) -> bool {
        false
    }

    /// `true` when [`LlmProvider::stream`] really streams.
    ///
    /// ```
    /// use executionkit::{LlmProvider, MockProvider};
    /// assert!(MockProvider::default().supports_streaming());
    /// ```
    fn supports_streaming(&self) -> bool {
        false
    }

    /// `true` when the provider honours `n` (several choices in one request).
    ///
    /// ```
    /// use executionkit::{LlmProvider, MockProvider};
    /// assert!(!MockProvider::default().supports_n());
    /// assert!(MockProvider::default().with_n_support().supports_n());
    /// ```
    fn supports_n(&self) -> bool {
        false
    }

    /// An API key whose text must never appear in output: the engine redacts it from every
    /// failed call's error, and every pattern from its errors and result metadata (in every
    /// form [`redact_secret`](crate::redact::redact_secret) knows). Wrappers must forward it.
    ///
    /// ```
    /// use executionkit::{LlmProvider, MockProvider};
    /// assert_eq!(MockProvider::default().secret(), None);
    /// assert_eq!(MockProvider::default().with_secret("sk-test-1234").secret(), Some("sk-test-1234"));
    /// ```
    fn secret(&self) -> Option<&str> {
        None
    }

    /// For a provider made of other providers (a [`Failover`] chain): the providers the engine
    /// tries for `request`, each attempt reserved and counted in the run's ledger. `None` (the
    /// default): the engine calls this provider, with the run's retry policy. A wrapper that
    /// holds another provider forwards it (as [`RateLimited`] does, limiting every entry).
    ///
    /// ```
    /// use executionkit::{ChatRequest, LlmProvider, Message, MockProvider};
    /// assert!(MockProvider::default().route(&ChatRequest::new(vec![Message::user("q")])).is_none());
    /// ```
    fn route(&self, request: &ChatRequest) -> Option<Route> {
        let _ = request;
        None
    }

    /// Every credential this provider holds, removed from results and errors like
    /// [`secret`](Self::secret): one for a plain provider (the default), each provider's for a
    /// [`Failover`] chain or a [`Router`].
    ///
    /// ```
    /// use executionkit::{Failover, LlmProvider, MockProvider};
    /// let f = Failover::builder()
    ///     .provider("a", MockProvider::default().with_secret("key-of-a-1234"))
    ///     .provider("b", MockProvider::default().with_secret("key-of-b-5678"))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(f.secrets(), ["key-of-a-1234", "key-of-b-5678"]);
    /// ```
    fn secrets(&self) -> Vec<&str> {
        self.secret().into_iter().collect()
    }

    /// `true` once the endpoint has refused a JSON-schema `response_format` (an HTTP 400 or 422
    /// to a request carrying one, noted with
    /// [`note_response_format_refused`](Self::note_response_format_refused)): the refine judge
    /// and the consensus selection call then ask in plain text from the start, in every later
    /// run on this provider. Default `false`; [`OpenAiProvider`] remembers it (its clones
    /// share it), wrappers forward it.
    ///
    /// ```
    /// use executionkit::{LlmProvider, OpenAiProvider};
    /// let p = OpenAiProvider::new("http://127.0.0.1:8080/v1", "m").unwrap();
    /// assert!(!p.response_format_refused());
    /// p.clone().note_response_format_refused();
    /// assert!(p.response_format_refused());
    /// ```
    fn response_format_refused(&self) -> bool {
        false
    }

    /// Notes that the endpoint refused a `response_format`; see
    /// [`response_format_refused`](Self::response_format_refused). The default forgets it.
    ///
    /// ```
    /// use executionkit::{LlmProvider, MockProvider};
    /// let p = MockProvider::default();
    /// p.note_response_format_refused();
    /// assert!(!p.response_format_refused());
    /// ```
    fn note_response_format_refused(&self) {}
}

#[async_trait]
impl<P: LlmProvider + ?Sized> LlmProvider for Arc<P> {
    fn model(&self) -> &str {
        (**self).model()
    }
    async fn complete(&self, request: &ChatRequest) -> Result<LlmResponse> {
        (**self).complete(request).await
    }
    fn stream(&self, request: ChatRequest) -> ChatStream {
        (**self).stream(request)
    }
    fn supports_tools(&self) -> bool {
        (**self).supports_tools()
    }
    fn supports_streaming(&self) -> bool {
        (**self).supports_streaming()
    }
    fn supports_n(&self) -> bool {
        (**self).supports_n()
    }
    fn secret(&self) -> Option<&str> {
        (**self).secret()
    }
    fn route(&self, request: &ChatRequest) -> Option<Route> {
        (**self).route(request)
    }
    fn secrets(&self) -> Vec<&str> {
        (**self).secrets()
    }
    fn response_format_refused(&self) -> bool {
        (**self).response_format_refused()
    }
    fn note_response_format_refused(&self) {
        (**self).note_response_format_refused();
    }
}

/// A stream of [`StreamEvent`]s from [`LlmProvider::stream`].
///
/// ```
/// use futures::StreamExt;
/// use executionkit::{ChatRequest, LlmProvider, Message, OfflineModel, ChatStream};
/// # futures::executor::block_on(async {
/// let s: ChatStream = OfflineModel::new().stream(ChatRequest::new(vec![Message::user("hello")]));
/// let items: Vec<_> = s.collect().await;
/// assert!(items.iter().all(|e| e.is_ok()));
/// assert!(items.len() >= 2); // at least one delta, then the end
/// # });
/// ```
pub type ChatStream = BoxStream<'static, Result<StreamEvent>>;

/// One item of a streamed completion.
///
/// ```
/// use futures::StreamExt;
/// use executionkit::{ChatRequest, LlmProvider, Message, MockProvider, StreamEvent};
/// # futures::executor::block_on(async {
/// let mut text = String::new();
/// let mut s = MockProvider::new(["abc"]).stream(ChatRequest::new(vec![Message::user("q")]));
/// while let Some(event) = s.next().await {
///     match event.unwrap() {
///         StreamEvent::TextDelta(d) => text.push_str(&d),
///         StreamEvent::Finished(r) => assert_eq!(r.content(), text),
///         _ => {}
///     }
/// }
/// assert_eq!(text, "abc");
/// # });
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// A piece of text of the first choice.
    TextDelta(String),
    /// A piece of a tool call of the first choice (accumulated by `index`).
    ToolCallDelta {
        /// The tool call's position.
        index: u32,
        /// The call id, when this delta carries it.
        id: Option<String>,
        /// The function name, when this delta carries it.
        name: Option<String>,
        /// A fragment of the JSON arguments string.
        arguments: String,
    },
    /// The end: the accumulated response with its usage (the last item of every stream).
    Finished(LlmResponse),
}

/// Who speaks a message.
///
/// ```
/// use executionkit::{Message, Role};
/// assert_eq!(Message::assistant("hi").role, Role::Assistant);
/// assert_eq!(serde_json::to_value(Role::Tool).unwrap(), "tool");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

/// One chat message, serialised in the OpenAI wire shape.
///
/// ```
/// use executionkit::{Message, ToolCall};
/// let m = Message::user("hi");
/// assert_eq!(serde_json::to_value(&m).unwrap(), serde_json::json!({"role": "user", "content": "hi"}));
/// let t = Message::tool_result("tc1", "42");
/// assert_eq!(serde_json::to_value(&t).unwrap(),
///            serde_json::json!({"role": "tool", "tool_call_id": "tc1", "content": "42"}));
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Message {
    /// The speaker.
    pub role: Role,
    /// The text (empty for an assistant turn that only calls tools).
    #[serde(default, deserialize_with = "parse::null_as_empty")]
    pub content: String,
    /// Tool calls of an assistant turn.
    #[serde(default, deserialize_with = "parse::wire_tool_calls")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

impl Message {
    fn plain(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// A system message.
    ///
    /// ```
    /// assert_eq!(executionkit::Message::system("be brief").role, executionkit::Role::System);
    /// ```
    #[must_use]
    pub fn system(content: impl Into<String>) -> Self {
        Self::plain(Role::System, content)
    }

    /// A user message.
    ///
    /// ```
    /// assert_eq!(executionkit::Message::user("q").content, "q");
    /// ```
    #[must_use]
    pub fn user(content: impl Into<String>) -> Self {
        Self::plain(Role::User, content)
    }

    /// An assistant message.
    ///
    /// ```
    /// assert_eq!(executionkit::Message::assistant("a").role, executionkit::Role::Assistant);
    /// ```
    #[must_use]
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::plain(Role::Assistant, content)
    }

    /// An assistant turn that calls tools. On the wire its `content` is `""` (never `null`):
    /// some servers reject `null` there.
    ///
    /// ```
    /// use executionkit::{Message, ToolCall};
    /// let call = ToolCall::new("tc1", "search", serde_json::json!({"query": "hi"}));
    /// let v = serde_json::to_value(Message::assistant_tool_calls("", vec![call])).unwrap();
    /// assert_eq!(v["content"], "");
    /// assert_eq!(v["tool_calls"][0]["function"]["arguments"], r#"{"query":"hi"}"#);
    /// ```
    #[must_use]
    pub fn assistant_tool_calls(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
            tool_calls,
            tool_call_id: None,
        }
    }

    /// A tool result answering `tool_call_id`.
    ///
    /// ```
    /// let m = executionkit::Message::tool_result("id1", "ok");
    /// assert_eq!(m.tool_call_id.as_deref(), Some("id1"));
    /// ```
    #[must_use]
    pub fn tool_result(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(tool_call_id.into()),
        }
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("role", &self.role)?;
        if self.role == Role::Tool {
            m.serialize_entry("tool_call_id", self.tool_call_id.as_deref().unwrap_or(""))?;
        }
        m.serialize_entry("content", &self.content)?;
        if !self.tool_calls.is_empty() {
            m.serialize_entry("tool_calls", &self.tool_calls)?;
        }
        m.end()
    }
}

/// A tool call made by the model: `id`, function `name` and decoded JSON `arguments`.
///
/// Serialises to the wire shape `{"id", "type": "function", "function": {"name", "arguments":
/// "<JSON string>"}}`.
///
/// ```
/// let c = executionkit::ToolCall::new("tc1", "echo", serde_json::json!({"text": "hi"}));
/// assert_eq!(c.arguments["text"], "hi");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The call's id (may be empty when the server sends none).
    pub id: String,
    /// The function to call.
    pub name: String,
    /// Its arguments, a JSON object (`{}` when [`arguments_error`](ToolCall::arguments_error)
    /// is set).
    pub arguments: Map<String, Value>,
    /// Why the server's arguments could not be used: `None` when they decoded to a JSON object;
    /// otherwise a short, bounded reason (e.g. `arguments were not valid JSON (…)`) that never
    /// holds the argument text. A loop answers such a call with an observation instead of
    /// running the tool; the response itself is not rejected.
    ///
    /// ```
    /// let v = serde_json::json!([{"id": "a", "function": {"name": "f", "arguments": "{bad"}}]);
    /// let calls = executionkit::internals::parse::parse_tool_calls(Some(&v)).unwrap();
    /// assert!(calls[0].arguments.is_empty());
    /// assert!(calls[0].arguments_error.as_deref().unwrap().contains("not valid JSON"));
    /// assert!(executionkit::ToolCall::new("a", "f", serde_json::json!({})).arguments_error.is_none());
    /// ```
    pub arguments_error: Option<String>,
}

impl ToolCall {
    /// A tool call; `arguments` that are not an object become `{}`.
    ///
    /// ```
    /// let c = executionkit::ToolCall::new("", "f", serde_json::json!(3));
    /// assert!(c.arguments.is_empty());
    /// ```
    #[must_use]
    pub fn new(id: impl Into<String>, name: impl Into<String>, arguments: Value) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            arguments: match arguments {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            arguments_error: None,
        }
    }
}

// The wire shape: `arguments_error` is not sent; a call whose arguments were unusable goes back
// to the server with `"{}"`.
impl Serialize for ToolCall {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        struct Function<'a>(&'a ToolCall);
        impl Serialize for Function<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                let mut f = s.serialize_struct("function", 2)?;
                f.serialize_field("name", &self.0.name)?;
                let args =
                    serde_json::to_string(&self.0.arguments).map_err(serde::ser::Error::custom)?;
                f.serialize_field("arguments", &args)?;
                f.end()
            }
        }
        let mut m = s.serialize_struct("tool_call", 3)?;
        m.serialize_field("id", &self.id)?;
        m.serialize_field("type", "function")?;
        m.serialize_field("function", &Function(self))?;
        m.end()
    }
}

/// A tool offered to the model: name, description and JSON-Schema parameters.
///
/// ```
/// let t = executionkit::ToolSpec::new("echo", "Echo text", serde_json::json!({"type": "object"}));
/// assert_eq!(serde_json::to_value(&t).unwrap()["function"]["name"], "echo");
/// assert_eq!(serde_json::to_value(&t).unwrap()["type"], "function");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// The function name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// A JSON Schema object for its arguments.
    pub parameters: Value,
}

impl ToolSpec {
    /// A tool spec.
    ///
    /// ```
    /// let t = executionkit::ToolSpec::new("f", "d", serde_json::json!({}));
    /// assert_eq!(t.name, "f");
    /// ```
    #[must_use]
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            parameters,
        }
    }
}

impl Serialize for ToolSpec {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        serde_json::json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            }
        })
        .serialize(s)
    }
}

/// How the model may use tools.
///
/// ```
/// use executionkit::ToolChoice;
/// assert_eq!(serde_json::to_value(ToolChoice::Required).unwrap(), "required");
/// assert_eq!(serde_json::to_value(ToolChoice::Function("calc".into())).unwrap()["function"]["name"], "calc");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// The model must call a tool.
    Required,
    /// The model must not call a tool.
    None,
    /// The model must call this function.
    Function(String),
}

impl Serialize for ToolChoice {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::Required => s.serialize_str("required"),
            Self::None => s.serialize_str("none"),
            Self::Function(name) => {
                serde_json::json!({"type": "function", "function": {"name": name}}).serialize(s)
            }
        }
    }
}

/// One chat-completions request. Unset fields are left to the provider's defaults.
///
/// ```
/// use executionkit::{ChatRequest, Message};
/// let r = ChatRequest::new(vec![Message::user("hi")]).temperature(0.2).max_tokens(64).seed(7);
/// assert_eq!(r.max_tokens, Some(64));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct ChatRequest {
    /// Another model than the provider's default.
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Completion token limit.
    pub max_tokens: Option<u32>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Sampling seed.
    pub seed: Option<u64>,
    /// Number of choices.
    pub n: Option<u32>,
    /// Tools offered.
    pub tools: Vec<ToolSpec>,
    /// Tool choice.
    pub tool_choice: Option<ToolChoice>,
    /// `response_format` (e.g. a JSON schema).
    pub response_format: Option<Value>,
    /// Any other body keys, merged last (they override the keys above).
    pub extra: Map<String, Value>,
    /// A routing tag for a [`Router`]'s rules (e.g. `"best"`); never sent to a server.
    pub tier: Option<String>,
    /// Asks for the log-probability of each generated token (`"logprobs": true` in an
    /// OpenAI-compatible body; Anthropic has none and ignores it). The reply's
    /// [`Choice::logprobs`] then holds their summary when the server sent them.
    pub logprobs: bool,
}

impl ChatRequest {
    /// A request with these messages.
    ///
    /// ```
    /// let r = executionkit::ChatRequest::new(vec![]);
    /// assert!(r.messages.is_empty());
    /// ```
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }

    /// Sets the model.
    ///
    /// ```
    /// assert_eq!(executionkit::ChatRequest::new(vec![]).model("m").model.as_deref(), Some("m"));
    /// ```
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Sets the temperature.
    ///
    /// ```
    /// assert_eq!(executionkit::ChatRequest::new(vec![]).temperature(0.5).temperature, Some(0.5));
    /// ```
    pub fn temperature(mut self, t: f64) -> Self {
        self.temperature = Some(t);
        self
    }

    /// Sets `max_tokens`.
    ///
    /// ```
    /// assert_eq!(executionkit::ChatRequest::new(vec![]).max_tokens(9).max_tokens, Some(9));
    /// ```
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// Sets the seed.
    ///
    /// ```
    /// assert_eq!(executionkit::ChatRequest::new(vec![]).seed(3).seed, Some(3));
    /// ```
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Sets `n`.
    ///
    /// ```
    /// assert_eq!(executionkit::ChatRequest::new(vec![]).n(3).n, Some(3));
    /// ```
    pub fn n(mut self, n: u32) -> Self {
        self.n = Some(n);
        self
    }

    /// Sets `top_p`.
    ///
    /// ```
    /// assert_eq!(executionkit::ChatRequest::new(vec![]).top_p(0.8).top_p, Some(0.8));
    /// ```
    pub fn top_p(mut self, p: f64) -> Self {
        self.top_p = Some(p);
        self
    }

    /// Sets the stop sequences.
    ///
    /// ```
    /// assert_eq!(executionkit::ChatRequest::new(vec![]).stop(["\n"]).stop, vec!["\n"]);
    /// ```
    pub fn stop<I, S>(mut self, stop: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.stop = stop.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the tools.
    ///
    /// ```
    /// let t = executionkit::ToolSpec::new("f", "d", serde_json::json!({}));
    /// assert_eq!(executionkit::ChatRequest::new(vec![]).tools(vec![t]).tools.len(), 1);
    /// ```
    pub fn tools(mut self, tools: Vec<ToolSpec>) -> Self {
        self.tools = tools;
        self
    }

    /// Sets the tool choice.
    ///
    /// ```
    /// use executionkit::{ChatRequest, ToolChoice};
    /// assert_eq!(ChatRequest::new(vec![]).tool_choice(ToolChoice::Auto).tool_choice, Some(ToolChoice::Auto));
    /// ```
    pub fn tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = Some(choice);
        self
    }

    /// Sets `response_format`.
    ///
    /// ```
    /// let r = executionkit::ChatRequest::new(vec![]).response_format(serde_json::json!({"type": "json_object"}));
    /// assert!(r.response_format.is_some());
    /// ```
    pub fn response_format(mut self, format: Value) -> Self {
        self.response_format = Some(format);
        self
    }

    /// Tags the request for a [`Router`]'s rules; the tag is not sent.
    ///
    /// ```
    /// let r = executionkit::ChatRequest::new(vec![]).tier("best");
    /// assert_eq!(r.tier.as_deref(), Some("best"));
    /// ```
    pub fn tier(mut self, tier: impl Into<String>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// Asks for token log-probabilities (see [`ChatRequest::logprobs`](ChatRequest#structfield.logprobs)).
    ///
    /// ```
    /// assert!(executionkit::ChatRequest::new(vec![]).logprobs(true).logprobs);
    /// ```
    pub fn logprobs(mut self, yes: bool) -> Self {
        self.logprobs = yes;
        self
    }

    /// Adds an extra body key (merged last).
    ///
    /// ```
    /// let r = executionkit::ChatRequest::new(vec![]).extra("user", "me");
    /// assert_eq!(r.extra["user"], "me");
    /// ```
    pub fn extra(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Checks the arguments a caller controls: finite, non-negative temperature; `max_tokens`
    /// and `n` at least 1; `top_p` in [0, 1]; at least one message.
    ///
    /// ```
    /// use executionkit::{ChatRequest, Message};
    /// let bad = ChatRequest::new(vec![Message::user("x")]).temperature(f64::NAN);
    /// assert!(bad.validate().unwrap_err().is_invalid_argument());
    /// ```
    pub fn validate(&self) -> Result<()> {
        if self.messages.is_empty() {
            return Err(Error::invalid_argument(
                "messages",
                "messages must not be empty",
            ));
        }
        if let Some(t) = self.temperature {
            check_temperature(t)?;
        }
        if self.max_tokens == Some(0) {
            return Err(Error::invalid_argument(
                "max_tokens",
                "max_tokens must be >= 1, got 0",
            ));
        }
        if self.n == Some(0) {
            return Err(Error::invalid_argument("n", "n must be >= 1, got 0"));
        }
        if let Some(p) = self.top_p {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::invalid_argument(
                    "top_p",
                    format!("top_p must be in [0, 1], got {p}"),
                ));
            }
        }
        if matches!(&self.model, Some(m) if m.trim().is_empty()) {
            return Err(Error::invalid_argument("model", "model must not be empty"));
        }
        Ok(())
    }
}

/// Checks a temperature: finite and ≥ 0.
pub(crate) fn check_temperature(t: f64) -> Result<()> {
    if !t.is_finite() || t < 0.0 {
        return Err(Error::invalid_argument(
            "temperature",
            format!("temperature must be a finite number >= 0, got {t}"),
        ));
    }
    Ok(())
}

/// Token counts a server reported for one response.
///
/// `input_tokens` counts every prompt token billed (cached ones included: for Anthropic the sum
/// of its `input_tokens`, `cache_read_input_tokens` and `cache_creation_input_tokens`);
/// `output_tokens` every completion token (reasoning included). The other three fields are
/// subsets of those two, zero when the server reported none.
///
/// ```
/// use executionkit::{LlmResponse, Usage};
/// let r = LlmResponse::text("x").with_usage(12, 3);
/// assert_eq!(r.usage, Usage { input_tokens: 12, output_tokens: 3, ..Usage::default() });
/// assert_eq!(LlmResponse::text("x").usage, Usage::default());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens (every one billed, cached ones included).
    pub input_tokens: u64,
    /// Completion tokens (reasoning included).
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from the prompt cache.
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    /// Of `input_tokens`, those written to the prompt cache.
    #[serde(default)]
    pub cache_write_input_tokens: u64,
    /// Of `output_tokens`, the reasoning tokens.
    #[serde(default)]
    pub reasoning_tokens: u64,
}

/// One choice of a response.
///
/// ```
/// use executionkit::{Choice, LlmResponse, ToolCall};
/// let r = LlmResponse {
///     choices: vec![Choice {
///         content: String::new(),
///         tool_calls: vec![ToolCall::new("tc1", "search", serde_json::json!({"q": "rust"}))],
///         finish_reason: Some("tool_calls".into()),
///         logprobs: None,
///     }],
///     ..LlmResponse::default()
/// };
/// assert_eq!(r.choices[0].tool_calls[0].name, "search");
/// assert_eq!(r.content(), "");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Choice {
    /// Its text (`""` when the server sent `null`).
    pub content: String,
    /// Its tool calls.
    pub tool_calls: Vec<ToolCall>,
    /// Why generation stopped, as the server said (`None` when absent or `null`).
    pub finish_reason: Option<String>,
    /// The summary of its tokens' log-probabilities, when the server sent them (asked for with
    /// [`ChatRequest::logprobs`](ChatRequest#structfield.logprobs)); `None` when it sent none or
    /// sent them in a shape that is not `logprobs.content[].logprob` numbers.
    pub logprobs: Option<LogprobSummary>,
}

/// The log-probabilities of one choice's tokens, summarised as their sum and count: the
/// tokens themselves are not kept, so a reply's log-probabilities cost the same few bytes
/// whatever their length.
///
/// Read from `choices[].logprobs.content[].logprob` (the OpenAI and llama-server shape), and
/// in a stream from the same key of every chunk. A list with an entry that has no `logprob`
/// number, or whose `logprob` is above 0, or a sum that is not finite, gives no summary at all.
///
/// ```
/// use executionkit::LogprobSummary;
/// let s = LogprobSummary { sum: -0.5, tokens: 2 };
/// assert_eq!(s.mean(), Some(-0.25));
/// assert!((s.weight().unwrap() - (-0.25f64).exp()).abs() < 1e-12);
/// assert_eq!(LogprobSummary::default().mean(), None); // no tokens, no mean
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LogprobSummary {
    /// The sum of the tokens' log-probabilities (≤ 0).
    pub sum: f64,
    /// How many tokens were summed.
    pub tokens: u64,
}

impl LogprobSummary {
    /// The lowest mean log-probability [`LogprobSummary::weight`] uses; a lower mean counts
    /// as this one, so that a weight is never 0.
    ///
    /// ```
    /// use executionkit::LogprobSummary;
    /// let s = LogprobSummary { sum: -1e6, tokens: 1 };
    /// assert_eq!(s.weight(), Some(LogprobSummary::MIN_MEAN.exp()));
    /// ```
    pub const MIN_MEAN: f64 = -100.0;

    /// The mean log-probability per token (`None` without tokens).
    ///
    /// ```
    /// assert_eq!(executionkit::LogprobSummary { sum: -3.0, tokens: 3 }.mean(), Some(-1.0));
    /// ```
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn mean(&self) -> Option<f64> {
        (self.tokens > 0).then(|| self.sum / self.tokens as f64)
    }

    /// The geometric mean of the tokens' probabilities, `exp(mean)`, with the mean clamped to
    /// [[`MIN_MEAN`](Self::MIN_MEAN), 0]: a number in (0, 1] (`None` without tokens). This is
    /// a sample's vote weight under [`Consensus::logprob_weights`](crate::Consensus::logprob_weights).
    ///
    /// ```
    /// let s = executionkit::LogprobSummary { sum: 0.0, tokens: 4 };
    /// assert_eq!(s.weight(), Some(1.0)); // every token certain
    /// ```
    #[must_use]
    pub fn weight(&self) -> Option<f64> {
        self.mean()
            .map(|m| m.clamp(Self::MIN_MEAN, 0.0).exp())
            .filter(|w| w.is_finite())
    }

    /// Adds one token's log-probability.
    pub(crate) fn add(&mut self, logprob: f64) {
        self.sum += logprob;
        self.tokens += 1;
    }

    /// `Some(self)` when every token added was a log-probability and the sum is finite.
    pub(crate) fn checked(self) -> Option<Self> {
        (self.sum.is_finite() && self.sum <= 0.0).then_some(self)
    }
}

/// A provider's answer: every choice, the usage, and the server's id and model.
///
/// ```
/// let r = executionkit::LlmResponse::text("hello");
/// assert_eq!(r.content(), "hello");
/// assert!(!r.was_truncated());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmResponse {
    /// The choices, in server order (at least one).
    pub choices: Vec<Choice>,
    /// Reported usage.
    pub usage: Usage,
    /// The response id, if sent.
    pub id: Option<String>,
    /// The model that answered, if sent.
    pub model: Option<String>,
}

impl LlmResponse {
    /// A one-choice response with `content`, finish reason `stop` and zero usage.
    ///
    /// ```
    /// assert_eq!(executionkit::LlmResponse::text("x").choices.len(), 1);
    /// ```
    #[must_use]
    pub fn text(content: impl Into<String>) -> Self {
        Self {
            choices: vec![Choice {
                content: content.into(),
                tool_calls: Vec::new(),
                finish_reason: Some("stop".to_owned()),
                logprobs: None,
            }],
            ..Self::default()
        }
    }

    /// Sets the first choice's log-probability summary (for scripted replies).
    ///
    /// ```
    /// use executionkit::{LlmResponse, LogprobSummary};
    /// let r = LlmResponse::text("Paris").with_logprobs(LogprobSummary { sum: -0.1, tokens: 1 });
    /// assert_eq!(r.choices[0].logprobs.unwrap().tokens, 1);
    /// ```
    #[must_use]
    pub fn with_logprobs(mut self, logprobs: LogprobSummary) -> Self {
        if let Some(c) = self.choices.first_mut() {
            c.logprobs = Some(logprobs);
        }
        self
    }

    /// Sets the usage.
    ///
    /// ```
    /// let r = executionkit::LlmResponse::text("x").with_usage(3, 1);
    /// assert_eq!(r.usage.input_tokens, 3);
    /// ```
    #[must_use]
    pub fn with_usage(mut self, input_tokens: u64, output_tokens: u64) -> Self {
        self.usage = Usage {
            input_tokens,
            output_tokens,
            ..Usage::default()
        };
        self
    }

    /// The first choice's text (`""` when there is none).
    ///
    /// ```
    /// assert_eq!(executionkit::LlmResponse::default().content(), "");
    /// ```
    #[must_use]
    pub fn content(&self) -> &str {
        self.choices.first().map_or("", |c| c.content.as_str())
    }

    /// The first choice's text, taken out of the response (`""` when there is none).
    ///
    /// ```
    /// assert_eq!(executionkit::LlmResponse::text("x").into_content(), "x");
    /// ```
    #[must_use]
    pub fn into_content(self) -> String {
        self.choices
            .into_iter()
            .next()
            .map(|c| c.content)
            .unwrap_or_default()
    }

    /// The first choice's tool calls.
    ///
    /// ```
    /// assert!(executionkit::LlmResponse::text("x").tool_calls().is_empty());
    /// ```
    #[must_use]
    pub fn tool_calls(&self) -> &[ToolCall] {
        self.choices
            .first()
            .map_or(&[], |c| c.tool_calls.as_slice())
    }

    /// The first choice's finish reason.
    ///
    /// ```
    /// assert_eq!(executionkit::LlmResponse::text("x").finish_reason(), Some("stop"));
    /// ```
    #[must_use]
    pub fn finish_reason(&self) -> Option<&str> {
        self.choices
            .first()
            .and_then(|c| c.finish_reason.as_deref())
    }

    /// `true` when the first choice stopped at the token limit (`length` or `max_tokens`).
    ///
    /// ```
    /// let mut r = executionkit::LlmResponse::text("x");
    /// r.choices[0].finish_reason = Some("length".into());
    /// assert!(r.was_truncated());
    /// ```
    #[must_use]
    pub fn was_truncated(&self) -> bool {
        matches!(self.finish_reason(), Some("length" | "max_tokens"))
    }
}
