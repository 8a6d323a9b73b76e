//! The OpenAI chat-completions wire shapes of `ek serve`: a client's request body read into the
//! library's [`ChatRequest`], the library's [`LlmResponse`] and pattern results written back as
//! `chat.completion` objects and `chat.completion.chunk` SSE events, and OpenAI-shaped errors.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use executionkit::{
    ChatRequest, Error, ErrorKind, LlmResponse, Message, Role, TokenUsage, ToolChoice, ToolSpec,
    Usage,
};
use serde_json::{Map, Value, json};

/// The keys of a request body the gateway reads itself; every other key is passed upstream as
/// is (`ChatRequest::extra`).
const KNOWN: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "top_p",
    "stop",
    "seed",
    "n",
    "tools",
    "tool_choice",
    "response_format",
    "logprobs",
    "stream",
    "stream_options",
];

/// A client's request, read.
#[derive(Debug)]
pub struct Parsed {
    /// The `model` it asked for (an upstream model or a virtual `ek:…` one).
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
    /// The request for the library (its `model` set to `model`).
    pub request: ChatRequest,
}

/// An error as the gateway answers it: an HTTP status and an OpenAI-shaped body
/// `{"error": {"message", "type", "param", "code"}}`, plus what was spent when a run failed.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The OpenAI `type` (`invalid_request_error`, `authentication_error`, …).
    pub kind: &'static str,
    /// The `code`: the executionkit error kind or a gateway-specific one; also the `kind` label
    /// of `ek_errors_total`.
    pub code: String,
    /// The message (already free of secrets).
    pub message: String,
    /// `Retry-After` for a 429 from upstream.
    pub retry_after: Option<Duration>,
    /// `{"cost", "usd"}` when something was spent before the failure.
    pub spent: Option<Value>,
}

impl ApiError {
    /// An error with this status, type, code and message.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code: code.to_owned(),
            message: message.into(),
            retry_after: None,
            spent: None,
        }
    }

    /// A 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        )
    }

    /// The body, as JSON.
    pub fn body(&self) -> Value {
        let mut v = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": null,
                "code": self.code,
            }
        });
        if let Some(spent) = &self.spent {
            v["executionkit"] = spent.clone();
        }
        v
    }

    /// A library error as the gateway answers it; `clean` removes secrets from its text.
    pub fn from_error(e: &Error, clean: impl Fn(&str) -> String) -> Self {
        let message = clean(e.message());
        let (status, kind) = match e.kind() {
            ErrorKind::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            ErrorKind::BudgetExhausted => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota"),
            ErrorKind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
            // What the upstream refused as the client's request keeps its status; a refused
            // upstream key (401/403) is the gateway's problem, not the client's.
            ErrorKind::Permanent => match e.http_status() {
                Some(s @ (400 | 404 | 405 | 413 | 422)) => (
                    StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY),
                    "invalid_request_error",
                ),
                _ => (StatusCode::BAD_GATEWAY, "upstream_error"),
            },
            ErrorKind::Provider | ErrorKind::Transport | ErrorKind::Parse => {
                (StatusCode::BAD_GATEWAY, "upstream_error")
            }
            ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_error"),
            ErrorKind::Cancelled => (
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "cancelled",
            ),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "pattern_error"),
        };
        let spent = (!e.cost().is_zero()).then(|| json!({"cost": e.cost(), "usd": e.usd()}));
        Self {
            status,
            kind,
            code: e.kind().as_str().to_owned(),
            message,
            retry_after: e.retry_after(),
            spent,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body().to_string(),
        )
            .into_response();
        if let Some(d) = self.retry_after {
            let secs = d.as_secs_f64().ceil().max(1.0);
            if let Ok(v) = HeaderValue::from_str(&format!("{secs:.0}")) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

/// A field of the wrong type.
fn wrong(field: &str, what: &str) -> ApiError {
    ApiError::bad_request(format!("'{field}' must be {what}"))
}

fn f64_field(o: &Map<String, Value>, field: &str) -> Result<Option<f64>, ApiError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| wrong(field, "a number")),
    }
}

fn u64_field(o: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong(field, "a non-negative integer")),
    }
}

fn u32_field(o: &Map<String, Value>, field: &str) -> Result<Option<u32>, ApiError> {
    u64_field(o, field)?
        .map(|n| u32::try_from(n).map_err(|_| wrong(field, "at most 4294967295")))
        .transpose()
}

/// One message: the OpenAI shape, with `developer` read as `system` and content parts joined.
fn message(v: &Value, i: usize) -> Result<Message, ApiError> {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        if o.get("role").and_then(Value::as_str) == Some("developer") {
            o.insert("role".into(), "system".into());
        }
    }
    serde_json::from_value(v).map_err(|e| {
        ApiError::bad_request(format!(
            "messages[{i}]: not a chat message ({e}); expected {{\"role\": \"system\" | \"user\" | \"assistant\" | \"tool\", \"content\": …}}"
        ))
    })
}

fn tool(v: &Value, i: usize) -> Result<ToolSpec, ApiError> {
    let f = v
        .get("function")
        .filter(|_| v.get("type").and_then(Value::as_str).unwrap_or("function") == "function")
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "tools[{i}]: expected {{\"type\": \"function\", \"function\": {{\"name\", \"description\"?, \"parameters\"?}}}}"
            ))
        })?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("tools[{i}].function.name is required")))?;
    let description = f.get("description").and_then(Value::as_str).unwrap_or("");
    let parameters = f
        .get("parameters")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    Ok(ToolSpec::new(name, description, parameters))
}

fn tool_choice(v: &Value) -> Result<ToolChoice, ApiError> {
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "required" => Ok(ToolChoice::Required),
            "none" => Ok(ToolChoice::None),
            _ => Err(wrong(
                "tool_choice",
                "\"auto\", \"required\", \"none\" or {\"type\": \"function\", \"function\": {\"name\"}}",
            )),
        },
        _ => v
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Function(n.to_owned()))
            .ok_or_else(|| {
                wrong(
                    "tool_choice",
                    "\"auto\", \"required\", \"none\" or {\"type\": \"function\", \"function\": {\"name\"}}",
                )
            }),
    }
}

/// Reads a chat-completions request body.
///
/// # Errors
/// A 400 naming the field that is missing or of the wrong type.
pub fn parse_request(body: &[u8]) -> Result<Parsed, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let model = o
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("'model' is required (a non-empty string)"))?
        .to_owned();
    let messages = o
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("'messages' is required (a non-empty array)"))?
        .iter()
        .enumerate()
        .map(|(i, m)| message(m, i))
        .collect::<Result<Vec<_>, _>>()?;
    let stream = match o.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(wrong("stream", "a boolean")),
    };
    let mut r = ChatRequest::new(messages).model(model.clone());
    r.temperature = f64_field(&o, "temperature")?;
    r.top_p = f64_field(&o, "top_p")?;
    r.max_tokens = match u32_field(&o, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => u32_field(&o, "max_tokens")?,
    };
    r.seed = u64_field(&o, "seed")?;
    r.n = u32_field(&o, "n")?;
    r.stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| wrong("stop", "a string or an array of strings"))?,
        Some(_) => return Err(wrong("stop", "a string or an array of strings")),
    };
    if let Some(tools) = o.get("tools").filter(|t| !t.is_null()) {
        let tools = tools
            .as_array()
            .ok_or_else(|| wrong("tools", "an array of function tools"))?;
        r.tools = tools
            .iter()
            .enumerate()
            .map(|(i, t)| tool(t, i))
            .collect::<Result<_, _>>()?;
    }
    if let Some(c) = o.get("tool_choice").filter(|t| !t.is_null()) {
        r.tool_choice = Some(tool_choice(c)?);
    }
    r.response_format = o.get("response_format").filter(|v| !v.is_null()).cloned();
    r.logprobs = matches!(o.get("logprobs"), Some(Value::Bool(true)));
    for (k, v) in &o {
        if !KNOWN.contains(&k.as_str()) {
            r.extra.insert(k.clone(), v.clone());
        }
    }
    if stream && r.n.is_some_and(|n| n > 1) {
        return Err(ApiError::bad_request(
            "'n' above 1 cannot be streamed; ask without 'stream' for several choices",
        ));
    }
    r.validate()
        .map_err(|e| ApiError::bad_request(e.message().to_owned()))?;
    Ok(Parsed {
        model,
        stream,
        request: r,
    })
}

/// The prompt a pattern runs on, and the system text, from a conversation: the last user
/// message when every other message is a system one, else the conversation as a transcript
/// (`role: content` lines).
pub fn prompt_of(messages: &[Message]) -> Result<(String, Option<String>), ApiError> {
    let system: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    let rest: Vec<&Message> = messages.iter().filter(|m| m.role != Role::System).collect();
    let prompt = match rest.as_slice() {
        [] => {
            return Err(ApiError::bad_request(
                "a virtual model needs a user message",
            ));
        }
        [only] if only.role == Role::User => only.content.clone(),
        many => many
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::User => "user",
                    Role::Assistant => "assistant",
                    Role::Tool => "tool",
                    Role::System => "system",
                };
                format!("{role}: {}", m.content)
            })
            .collect::<Vec<_>>()
            .join("\n\n"),
    };
    if prompt.trim().is_empty() {
        return Err(ApiError::bad_request(
            "the prompt (the user message) is empty",
        ));
    }
    Ok((prompt, system))
}

/// Seconds since the epoch, for `created`.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An OpenAI `usage` object.
pub fn usage_json(input: u64, output: u64) -> Value {
    json!({
        "prompt_tokens": input,
        "completion_tokens": output,
        "total_tokens": input.saturating_add(output),
    })
}

/// An upstream reply as a `chat.completion`.
pub fn completion(id: &str, model: &str, r: &LlmResponse) -> Value {
    let choices: Vec<Value> = r
        .choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut message = json!({"role": "assistant", "content": c.content});
            if !c.tool_calls.is_empty() {
                message["tool_calls"] = serde_json::to_value(&c.tool_calls).unwrap_or(Value::Null);
                if c.content.is_empty() {
                    message["content"] = Value::Null;
                }
            }
            json!({
                "index": i,
                "message": message,
                "finish_reason": c.finish_reason.as_deref().unwrap_or("stop"),
                "logprobs": null,
            })
        })
        .collect();
    let Usage {
        input_tokens,
        output_tokens,
        ..
    } = r.usage;
    json!({
        "id": id,
        "object": "chat.completion",
        "created": now(),
        "model": r.model.as_deref().unwrap_or(model),
        "choices": choices,
        "usage": usage_json(input_tokens, output_tokens),
    })
}

/// A pattern's text value as a `chat.completion` whose usage is the pattern's total; `extra`
/// is the `executionkit` object (metadata, cost).
pub fn pattern_completion(
    id: &str,
    model: &str,
    value: &str,
    cost: &TokenUsage,
    extra: Value,
) -> Value {
    let mut v = json!({
        "id": id,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": value},
            "finish_reason": "stop",
            "logprobs": null,
        }],
        "usage": usage_json(cost.input_tokens, cost.output_tokens),
    });
    v["executionkit"] = extra;
    v
}

/// One `chat.completion.chunk` with `choices` as given (empty for the usage chunk).
pub fn chunk(id: &str, model: &str, created: u64, choices: Value, usage: Option<Value>) -> Value {
    let mut v = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    });
    v["choices"] = choices;
    if let Some(u) = usage {
        v["usage"] = u;
    }
    v
}

/// A chunk's only choice, with `delta` and `finish_reason`.
pub fn delta(delta: Value, finish_reason: Option<&str>) -> Value {
    let mut choice = json!({"index": 0, "finish_reason": finish_reason, "logprobs": null});
    choice["delta"] = delta;
    Value::Array(vec![choice])
}

/// `data: {json}\n\n`.
pub fn sse_data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// The last SSE event.
pub const SSE_DONE: &str = "data: [DONE]\n\n";
/// The comment sent while a virtual model's pattern runs.
pub const SSE_KEEP_ALIVE: &str = ": keep-alive\n\n";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_read_with_its_tools_and_extra_keys() {
        let body = json!({
            "model": "org/m:q4",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]}
            ],
            "max_completion_tokens": 7,
            "stop": "\n",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "user": "u1",
            "stream": true,
            "stream_options": {"include_usage": true}
        });
        let p = parse_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(p.model, "org/m:q4");
        assert!(p.stream);
        assert_eq!(p.request.model.as_deref(), Some("org/m:q4"));
        assert_eq!(p.request.messages[0].role, Role::System);
        assert_eq!(p.request.messages[1].content, "hi");
        assert_eq!(p.request.max_tokens, Some(7));
        assert_eq!(p.request.stop, vec!["\n"]);
        assert_eq!(p.request.tools[0].name, "f");
        assert_eq!(
            p.request.tool_choice,
            Some(ToolChoice::Function("f".into()))
        );
        assert_eq!(p.request.extra.keys().collect::<Vec<_>>(), vec!["user"]);
    }

    #[test]
    fn bad_requests_name_the_field() {
        for (body, needle) in [
            ("[]", "JSON object"),
            ("{", "not valid JSON"),
            (
                r#"{"messages": [{"role": "user", "content": "x"}]}"#,
                "'model'",
            ),
            (r#"{"model": "m", "messages": []}"#, "'messages'"),
            (
                r#"{"model": "m", "messages": [{"role": "robot"}]}"#,
                "messages[0]",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#,
                "'temperature'",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2, "stream": true}"#,
                "'n'",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "x"}]}"#,
                "tools[0]",
            ),
        ] {
            let e = parse_request(body.as_bytes()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[test]
    fn a_conversation_becomes_one_prompt() {
        let (p, s) = prompt_of(&[Message::system("s"), Message::user("q")]).unwrap();
        assert_eq!((p.as_str(), s.as_deref()), ("q", Some("s")));
        let (p, s) = prompt_of(&[
            Message::user("a"),
            Message::assistant("b"),
            Message::user("c"),
        ])
        .unwrap();
        assert_eq!(p, "user: a\n\nassistant: b\n\nuser: c");
        assert!(s.is_none());
        assert!(prompt_of(&[Message::system("s")]).is_err());
    }

    #[test]
    fn errors_map_to_statuses() {
        let id = |s: &str| s.to_owned();
        let cases = [
            (Error::invalid_argument("x", "bad"), 400),
            (Error::new(ErrorKind::BudgetExhausted, "spent"), 429),
            (
                Error::new(ErrorKind::Permanent, "nope").with_http_status(404),
                404,
            ),
            (
                Error::new(ErrorKind::Permanent, "key").with_http_status(401),
                502,
            ),
            (
                Error::new(ErrorKind::Provider, "5xx").with_http_status(503),
                502,
            ),
            (Error::new(ErrorKind::Timeout, "slow"), 504),
            (Error::new(ErrorKind::ConsensusFailed, "split"), 500),
        ];
        for (e, status) in cases {
            let a = ApiError::from_error(&e, id);
            assert_eq!(a.status.as_u16(), status, "{e}");
            assert_eq!(a.body()["error"]["code"], e.kind().as_str());
        }
    }
}
