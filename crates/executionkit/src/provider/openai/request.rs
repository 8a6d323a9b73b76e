//! The request: a [`ChatRequest`] as a chat-completions JSON body, serialized in one pass with
//! `extra` keys merged in.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::Inner;
use crate::error::{Error, Result};
use crate::provider::ChatRequest;

/// The JSON body: model, messages, temperature, max_tokens, tools, tool_choice,
/// response_format, top_p, stop, seed, n, logprobs (when asked for), (stream, stream_options), then `extra` merged last:
/// an extra key that names one of these replaces its value in place; the others follow.
struct WireBody<'a> {
    model: &'a str,
    request: &'a ChatRequest,
    temperature: f64,
    max_tokens: u32,
    stream: bool,
}

impl WireBody<'_> {
    /// `true` when the body already holds `key` (so an extra with that name replaced it).
    fn has_key(&self, key: &str) -> bool {
        let r = self.request;
        match key {
            "model" | "messages" | "temperature" | "max_tokens" => true,
            "tools" => !r.tools.is_empty(),
            "tool_choice" => r.tool_choice.is_some(),
            "response_format" => r.response_format.is_some(),
            "top_p" => r.top_p.is_some(),
            "stop" => !r.stop.is_empty(),
            "seed" => r.seed.is_some(),
            "n" => r.n.is_some(),
            "logprobs" => r.logprobs,
            "stream" | "stream_options" => self.stream,
            _ => false,
        }
    }
}

fn put<M: SerializeMap, T: Serialize + ?Sized>(
    m: &mut M,
    extra: &Map<String, Value>,
    key: &'static str,
    value: &T,
) -> std::result::Result<(), M::Error> {
    match extra.get(key) {
        Some(v) => m.serialize_entry(key, v),
        None => m.serialize_entry(key, value),
    }
}

struct StreamOptions;

impl Serialize for StreamOptions {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("include_usage", &true)?;
        m.end()
    }
}

impl Serialize for WireBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let r = self.request;
        let x = &r.extra;
        let mut m = s.serialize_map(None)?;
        put(&mut m, x, "model", self.model)?;
        put(&mut m, x, "messages", &r.messages)?;
        put(&mut m, x, "temperature", &self.temperature)?;
        put(&mut m, x, "max_tokens", &self.max_tokens)?;
        if !r.tools.is_empty() {
            put(&mut m, x, "tools", &r.tools)?;
        }
        if let Some(tc) = &r.tool_choice {
            put(&mut m, x, "tool_choice", tc)?;
        }
        if let Some(rf) = &r.response_format {
            put(&mut m, x, "response_format", rf)?;
        }
        if let Some(p) = r.top_p {
            put(&mut m, x, "top_p", &p)?;
        }
        if !r.stop.is_empty() {
            put(&mut m, x, "stop", &r.stop)?;
        }
        if let Some(seed) = r.seed {
            put(&mut m, x, "seed", &seed)?;
        }
        if let Some(n) = r.n {
            put(&mut m, x, "n", &n)?;
        }
        if r.logprobs {
            put(&mut m, x, "logprobs", &true)?;
        }
        if self.stream {
            put(&mut m, x, "stream", &true)?;
            put(&mut m, x, "stream_options", &StreamOptions)?;
        }
        for (k, v) in x {
            if !self.has_key(k) {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

impl Inner {
    pub(super) fn body(&self, request: &ChatRequest, stream: bool) -> Result<Vec<u8>> {
        let body = WireBody {
            model: request.model.as_deref().unwrap_or(&self.model),
            request,
            temperature: request.temperature.unwrap_or(self.default_temperature),
            max_tokens: request.max_tokens.unwrap_or(self.default_max_tokens),
            stream,
        };
        let estimate = 192
            + request
                .messages
                .iter()
                .map(|m| m.content.len() + 32)
                .sum::<usize>();
        let mut buf = Vec::with_capacity(estimate);
        serde_json::to_writer(&mut buf, &body).map_err(|e| {
            Error::invalid_argument(
                "request",
                format!("the request could not be encoded as JSON: {e}"),
            )
        })?;
        Ok(buf)
    }
}
