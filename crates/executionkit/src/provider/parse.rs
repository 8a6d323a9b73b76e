//! Parsing of chat-completions replies (JSON bodies and error bodies), with every edge case of
//! the reference: content given as a list of parts, tool-call arguments given as a string or an
//! object, usage under either naming, and hostile values. Nothing here panics on server input.
//!
//! [`parse_reply`] is the reply parser: a typed serde pass that borrows from the body and builds
//! nothing for keys it does not need, with [`parse_completion`] (the general parser, over
//! `serde_json::Value`) as its one fallback for unusual shapes and for every error, so both give
//! the same answer for every body. A choice may carry at most [`MAX_TOOL_CALLS`] tool calls.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{Choice, LlmResponse, ToolCall, Usage};
use crate::error::{Error, ErrorKind, Result};
use crate::redact::redact;

/// The largest token count a server may report (one billion).
pub const MAX_REPORTED_TOKENS: u64 = 1_000_000_000;

/// The most tool calls one choice of a reply may carry; a reply with more is a `provider` error
/// (a bound on what one reply can make the caller hold and run).
///
/// ```
/// use executionkit::provider::parse::{parse_completion, MAX_TOOL_CALLS};
/// let call = r#"{"id":"c","function":{"name":"f","arguments":"{}"}}"#;
/// let calls = vec![call; MAX_TOOL_CALLS + 1].join(",");
/// let body = format!(r#"{{"choices":[{{"message":{{"tool_calls":[{calls}]}}}}]}}"#);
/// let e = parse_completion(body.as_bytes()).unwrap_err();
/// assert!(e.is_provider());
/// assert!(e.message().contains("more than 128 tool calls"));
/// ```
pub const MAX_TOOL_CALLS: usize = 128;

fn provider_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Provider, msg)
}

fn too_many_tool_calls(choice: usize) -> Error {
    provider_err(format!(
        "Provider response choice {choice} has more than {MAX_TOOL_CALLS} tool calls (the limit MAX_TOOL_CALLS)"
    ))
}

/// Parses a 2xx response body. A body that is not JSON, or JSON that is not an object, is a
/// `provider` error.
///
/// ```
/// let r = executionkit::provider::parse::parse_completion(
///     br#"{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
/// ).unwrap();
/// assert_eq!(r.content(), "hi");
/// assert_eq!(r.usage.input_tokens, 3);
/// assert!(executionkit::provider::parse::parse_completion(b"not json").unwrap_err().is_provider());
/// ```
pub fn parse_completion(body: &[u8]) -> Result<LlmResponse> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        provider_err(format!(
            "Provider returned a response body that is not JSON: {e}"
        ))
    })?;
    parse_completion_value(value)
}

/// Parses a decoded 2xx response body (see [`parse_completion`]). Takes the value by value so
/// that the texts are moved, not copied.
///
/// ```
/// let v = serde_json::json!({"choices": []});
/// let e = executionkit::provider::parse::parse_completion_value(v).unwrap_err();
/// assert!(e.message().contains("did not include any choices"));
/// ```
pub fn parse_completion_value(value: Value) -> Result<LlmResponse> {
    let Value::Object(mut obj) = value else {
        return Err(provider_err(
            "Provider returned a response body that is not a JSON object",
        ));
    };
    let choices = match obj.remove("choices") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        _ => {
            return Err(provider_err(
                "Provider response did not include any choices",
            ));
        }
    };
    let mut out = Vec::with_capacity(choices.len());
    for (i, c) in choices.into_iter().enumerate() {
        let Value::Object(mut c) = c else {
            return Err(provider_err(format!(
                "Provider response choice {i} was not an object"
            )));
        };
        let mut message = match c.remove("message") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let content = match message.remove("content") {
            Some(Value::String(s)) => s,
            other => content_text(other.as_ref()),
        };
        let tool_calls = message.get("tool_calls");
        if let Some(Value::Array(calls)) = tool_calls {
            if calls.len() > MAX_TOOL_CALLS {
                return Err(too_many_tool_calls(i));
            }
        }
        out.push(Choice {
            content,
            tool_calls: parse_tool_calls(tool_calls)?,
            finish_reason: match c.remove("finish_reason") {
                Some(Value::String(s)) => Some(s),
                other => finish_reason(other.as_ref()),
            },
        });
    }
    let usage = match obj.get("usage") {
        Some(Value::Object(u)) => parse_usage(u)?,
        _ => Usage::default(),
    };
    let mut text = |key: &str| match obj.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    Ok(LlmResponse {
        choices: out,
        usage,
        id: text("id"),
        model: text("model"),
    })
}

/// Parses a 2xx response body: [`parse_completion`]'s result for every body, read the fast
/// way when it has one of the usual shapes.
///
/// The body is first read by a typed, borrowing serde pass (strings without escapes are not
/// copied until the response is built, and unknown keys build nothing) that understands the
/// shapes servers send: string, `null` or list-of-parts `content`, tool calls with string or
/// object arguments, either naming of usage. Whatever that pass does not take as is (a type
/// where another is expected, a count out of range, a tool call without a name, a body that is
/// not JSON, any error) goes to [`parse_completion`], which decides. Values the typed pass
/// skips are still checked as [`parse_completion`] checks them (numbers in range, strings
/// valid, nesting within serde_json's limit), so a body accepted here is one it accepts too,
/// read the same way.
///
/// A choice with more than [`MAX_TOOL_CALLS`] tool calls is a `provider` error; the typed pass
/// stops at the first call past the limit.
///
/// ```
/// use executionkit::provider::parse::{parse_completion, parse_reply};
/// let body = br#"{"id":"c1","model":"m","choices":[{"message":{"role":"assistant","content":"hi",
///   "tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]},
///   "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
/// let r = parse_reply(body).unwrap();
/// assert_eq!(r.content(), "hi");
/// assert_eq!(r.tool_calls()[0].arguments["x"], 1);
/// assert_eq!(r.usage.input_tokens, 3);
/// assert_eq!(r, parse_completion(body).unwrap());
/// let odd = br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":-1}}"#;
/// assert_eq!(parse_reply(odd).unwrap_err().message(), parse_completion(odd).unwrap_err().message());
/// ```
pub fn parse_reply(body: &[u8]) -> Result<LlmResponse> {
    match typed_reply(body) {
        Some(r) => Ok(r),
        None => parse_completion(body),
    }
}

/// The typed pass of [`parse_reply`]; `None` when the body is left to [`parse_completion`].
fn typed_reply(body: &[u8]) -> Option<LlmResponse> {
    serde_json::from_slice::<wire::Obj<wire::Reply<'_>>>(body)
        .ok()?
        .0
        .into_response()
}

/// The wire shapes of a reply for [`parse_reply`]. Each mirrors what [`parse_completion`] does
/// with the same value; where it would fail, or where its answer is not cheap to repeat, the
/// deserializer fails and the general parser takes over. Repeated keys keep the last value, as
/// a `serde_json::Value` does.
mod wire {
    use std::borrow::Cow;
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
    use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Value};

    use super::{
        Choice, LlmResponse, MAX_REPORTED_TOKENS, MAX_TOOL_CALLS, ToolCall, Usage, content_text,
        decode_argument_string, finish_reason,
    };

    /// A value that is read and dropped. It goes through `deserialize_any`, as a `Value` does
    /// (serde's `IgnoredAny` does not: serde_json then skips without checking number ranges,
    /// string encoding or depth), so it fails exactly where building a `Value` would.
    pub(super) struct Skip;

    impl<'de> Deserialize<'de> for Skip {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(SkipVisitor)
        }
    }

    struct SkipVisitor;

    impl<'de> Visitor<'de> for SkipVisitor {
        type Value = Skip;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_unit<E>(self) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
            while seq.next_element::<Skip>()?.is_some() {}
            Ok(Skip)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
            while map.next_entry::<Skip, Skip>()?.is_some() {}
            Ok(Skip)
        }
    }

    /// Any value, with strings kept borrowed when they have no escapes.
    pub(super) enum Loose<'de> {
        Null,
        Str(Cow<'de, str>),
        Other(Value),
    }

    impl<'de> Deserialize<'de> for Loose<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(LooseVisitor)
        }
    }

    struct LooseVisitor;

    impl<'de> Visitor<'de> for LooseVisitor {
        type Value = Loose<'de>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Loose<'de>, E> {
            Ok(Loose::Other(Value::Bool(v)))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Loose<'de>, E> {
            Ok(Loose::Other(Value::from(v)))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Loose<'de>, E> {
            Ok(Loose::Other(Value::from(v)))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Loose<'de>, E> {
            Ok(Loose::Other(Value::from(v)))
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Loose<'de>, E> {
            Ok(Loose::Str(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Loose<'de>, E> {
            Ok(Loose::Str(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E>(self, v: String) -> Result<Loose<'de>, E> {
            Ok(Loose::Str(Cow::Owned(v)))
        }
        fn visit_unit<E>(self) -> Result<Loose<'de>, E> {
            Ok(Loose::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Loose<'de>, A::Error> {
            Value::deserialize(SeqAccessDeserializer::new(seq)).map(Loose::Other)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Loose<'de>, A::Error> {
            Value::deserialize(MapAccessDeserializer::new(map)).map(Loose::Other)
        }
    }

    impl<'de> Loose<'de> {
        /// The string, or `None` for any other value.
        fn into_str(self) -> Option<String> {
            match self {
                Loose::Str(s) => Some(s.into_owned()),
                Loose::Null | Loose::Other(_) => None,
            }
        }
    }

    /// A string, or `None` for any other value (which is skipped without being built).
    pub(super) struct MaybeStr<'de>(Option<Cow<'de, str>>);

    impl<'de> Deserialize<'de> for MaybeStr<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(MaybeStrVisitor)
        }
    }

    struct MaybeStrVisitor;

    impl<'de> Visitor<'de> for MaybeStrVisitor {
        type Value = MaybeStr<'de>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<MaybeStr<'de>, E> {
            Ok(MaybeStr(Some(Cow::Borrowed(v))))
        }
        fn visit_str<E>(self, v: &str) -> Result<MaybeStr<'de>, E> {
            Ok(MaybeStr(Some(Cow::Owned(v.to_owned()))))
        }
        fn visit_string<E>(self, v: String) -> Result<MaybeStr<'de>, E> {
            Ok(MaybeStr(Some(Cow::Owned(v))))
        }
        fn visit_bool<E>(self, _: bool) -> Result<MaybeStr<'de>, E> {
            Ok(MaybeStr(None))
        }
        fn visit_i64<E>(self, _: i64) -> Result<MaybeStr<'de>, E> {
            Ok(MaybeStr(None))
        }
        fn visit_u64<E>(self, _: u64) -> Result<MaybeStr<'de>, E> {
            Ok(MaybeStr(None))
        }
        fn visit_f64<E>(self, _: f64) -> Result<MaybeStr<'de>, E> {
            Ok(MaybeStr(None))
        }
        fn visit_unit<E>(self) -> Result<MaybeStr<'de>, E> {
            Ok(MaybeStr(None))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<MaybeStr<'de>, A::Error> {
            SkipVisitor.visit_seq(seq).map(|_| MaybeStr(None))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MaybeStr<'de>, A::Error> {
            SkipVisitor.visit_map(map).map(|_| MaybeStr(None))
        }
    }

    impl MaybeStr<'_> {
        fn into_string(self) -> Option<String> {
            self.0.map(Cow::into_owned)
        }
    }

    /// An object key, borrowed when it has no escapes.
    struct Key<'de>(Cow<'de, str>);

    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_str(KeyVisitor)
        }
    }

    struct KeyVisitor;

    impl<'de> Visitor<'de> for KeyVisitor {
        type Value = Key<'de>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object key")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
            Ok(Key(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
            Ok(Key(Cow::Owned(v.to_owned())))
        }
    }

    /// The keys of one wire object that matter; any other key's value is skipped.
    pub(super) trait Fields<'de>: Default {
        /// Reads the value of `key` (the last of repeated keys wins).
        fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
    }

    fn read_fields<'de, T: Fields<'de>, A: MapAccess<'de>>(mut map: A) -> Result<T, A::Error> {
        let mut t = T::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            t.field(&key, &mut map)?;
        }
        Ok(t)
    }

    /// A JSON object read as `T`; any other value fails.
    pub(super) struct Obj<T>(pub(super) T);

    impl<'de, T: Fields<'de>> Deserialize<'de> for Obj<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(ObjVisitor(PhantomData))
        }
    }

    struct ObjVisitor<T>(PhantomData<T>);

    impl<'de, T: Fields<'de>> Visitor<'de> for ObjVisitor<T> {
        type Value = Obj<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
            read_fields(map).map(Obj)
        }
    }

    /// A JSON object read as `T`; any other value is skipped and read as `T::default()` (as
    /// [`parse_completion`](super::parse_completion) reads a `message` or `usage` that is not
    /// an object).
    pub(super) struct OrDefault<T>(T);

    impl<'de, T: Fields<'de>> Deserialize<'de> for OrDefault<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(OrDefaultVisitor(PhantomData))
        }
    }

    struct OrDefaultVisitor<T>(PhantomData<T>);

    impl<'de, T: Fields<'de>> Visitor<'de> for OrDefaultVisitor<T> {
        type Value = OrDefault<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<OrDefault<T>, A::Error> {
            read_fields(map).map(OrDefault)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<OrDefault<T>, A::Error> {
            SkipVisitor.visit_seq(seq)?;
            Ok(OrDefault(T::default()))
        }
        fn visit_bool<E>(self, _: bool) -> Result<OrDefault<T>, E> {
            Ok(OrDefault(T::default()))
        }
        fn visit_i64<E>(self, _: i64) -> Result<OrDefault<T>, E> {
            Ok(OrDefault(T::default()))
        }
        fn visit_u64<E>(self, _: u64) -> Result<OrDefault<T>, E> {
            Ok(OrDefault(T::default()))
        }
        fn visit_f64<E>(self, _: f64) -> Result<OrDefault<T>, E> {
            Ok(OrDefault(T::default()))
        }
        fn visit_str<E>(self, _: &str) -> Result<OrDefault<T>, E> {
            Ok(OrDefault(T::default()))
        }
        fn visit_unit<E>(self) -> Result<OrDefault<T>, E> {
            Ok(OrDefault(T::default()))
        }
    }

    /// The top-level object.
    #[derive(Default)]
    pub(super) struct Reply<'de> {
        id: Option<MaybeStr<'de>>,
        model: Option<MaybeStr<'de>>,
        choices: Option<Choices>,
        usage: Option<OrDefault<WireUsage>>,
    }

    impl<'de> Fields<'de> for Reply<'de> {
        fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
            match key {
                "id" => self.id = Some(map.next_value()?),
                "model" => self.model = Some(map.next_value()?),
                "choices" => self.choices = Some(map.next_value()?),
                "usage" => self.usage = Some(map.next_value()?),
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
            Ok(())
        }
    }

    impl Reply<'_> {
        /// The response, or `None` when `parse_completion` must decide (no choices, a tool call
        /// it rejects, a usage count it rejects).
        pub(super) fn into_response(self) -> Option<LlmResponse> {
            let Choices(choices) = self.choices.filter(|Choices(c)| !c.is_empty())?;
            let usage = match self.usage {
                Some(OrDefault(u)) => u.usage()?,
                None => Usage::default(),
            };
            Some(LlmResponse {
                choices,
                usage,
                id: self.id.and_then(MaybeStr::into_string),
                model: self.model.and_then(MaybeStr::into_string),
            })
        }
    }

    /// `choices`: a list of objects, each read into a [`Choice`] as it comes.
    pub(super) struct Choices(Vec<Choice>);

    impl<'de> Deserialize<'de> for Choices {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_seq(ChoicesVisitor)
        }
    }

    struct ChoicesVisitor;

    impl<'de> Visitor<'de> for ChoicesVisitor {
        type Value = Choices;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of choices")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Choices, A::Error> {
            let mut choices = Vec::with_capacity(1);
            while let Some(Obj(c)) = seq.next_element::<Obj<WireChoice<'de>>>()? {
                let c = c
                    .into_choice()
                    .ok_or_else(|| de::Error::custom("a choice for the general parser"))?;
                choices.push(c);
            }
            Ok(Choices(choices))
        }
    }

    #[derive(Default)]
    pub(super) struct WireChoice<'de> {
        message: Option<OrDefault<WireMessage<'de>>>,
        finish_reason: Option<Loose<'de>>,
    }

    impl<'de> Fields<'de> for WireChoice<'de> {
        fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
            match key {
                "message" => self.message = Some(map.next_value()?),
                "finish_reason" => self.finish_reason = Some(map.next_value()?),
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
            Ok(())
        }
    }

    impl WireChoice<'_> {
        fn into_choice(self) -> Option<Choice> {
            let message = self.message.map(|OrDefault(m)| m).unwrap_or_default();
            let content = match message.content {
                None | Some(Loose::Null) => String::new(),
                Some(Loose::Str(s)) => s.into_owned(),
                Some(Loose::Other(v)) => content_text(Some(&v)),
            };
            let tool_calls = match message.tool_calls {
                None | Some(WireToolCalls(None)) => Vec::new(),
                Some(WireToolCalls(Some(calls))) => calls
                    .into_iter()
                    .map(|Obj(c)| c.into_tool_call())
                    .collect::<Option<Vec<_>>>()?,
            };
            let finish_reason = match self.finish_reason {
                None | Some(Loose::Null) => None,
                Some(Loose::Str(s)) => Some(s.into_owned()),
                Some(Loose::Other(v)) => finish_reason(Some(&v)),
            };
            Some(Choice {
                content,
                tool_calls,
                finish_reason,
            })
        }
    }

    #[derive(Default)]
    pub(super) struct WireMessage<'de> {
        content: Option<Loose<'de>>,
        tool_calls: Option<WireToolCalls<'de>>,
    }

    impl<'de> Fields<'de> for WireMessage<'de> {
        fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
            match key {
                "content" => self.content = Some(map.next_value()?),
                "tool_calls" => self.tool_calls = Some(map.next_value()?),
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
            Ok(())
        }
    }

    /// `tool_calls`: `null` (`None`) or a list of at most [`MAX_TOOL_CALLS`] objects; a longer
    /// list fails at the first call past the limit, before it is built.
    pub(super) struct WireToolCalls<'de>(Option<Vec<Obj<WireCall<'de>>>>);

    impl<'de> Deserialize<'de> for WireToolCalls<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(ToolCallsVisitor)
        }
    }

    struct ToolCallsVisitor;

    impl<'de> Visitor<'de> for ToolCallsVisitor {
        type Value = WireToolCalls<'de>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "null or a list of at most {MAX_TOOL_CALLS} tool calls")
        }
        fn visit_unit<E>(self) -> Result<WireToolCalls<'de>, E> {
            Ok(WireToolCalls(None))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<WireToolCalls<'de>, A::Error> {
            let mut calls = Vec::new();
            while let Some(call) = seq.next_element()? {
                if calls.len() == MAX_TOOL_CALLS {
                    return Err(de::Error::invalid_length(calls.len() + 1, &self));
                }
                calls.push(call);
            }
            Ok(WireToolCalls(Some(calls)))
        }
    }

    #[derive(Default)]
    pub(super) struct WireCall<'de> {
        id: Option<MaybeStr<'de>>,
        function: Option<Obj<WireFunction<'de>>>,
    }

    impl<'de> Fields<'de> for WireCall<'de> {
        fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
            match key {
                "id" => self.id = Some(map.next_value()?),
                "function" => self.function = Some(map.next_value()?),
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
            Ok(())
        }
    }

    impl WireCall<'_> {
        fn into_tool_call(self) -> Option<ToolCall> {
            let Obj(function) = self.function?;
            let name = function.name?.into_str().filter(|n| !n.is_empty())?;
            let (arguments, arguments_error) = match function.arguments {
                None | Some(Loose::Null) => (Map::new(), None),
                Some(Loose::Str(s)) => decode_argument_string(&s),
                Some(Loose::Other(Value::Object(m))) => (m, None),
                Some(Loose::Other(_)) => return None,
            };
            Some(ToolCall {
                id: self.id.and_then(MaybeStr::into_string).unwrap_or_default(),
                name,
                arguments,
                arguments_error,
            })
        }
    }

    #[derive(Default)]
    pub(super) struct WireFunction<'de> {
        name: Option<Loose<'de>>,
        arguments: Option<Loose<'de>>,
    }

    impl<'de> Fields<'de> for WireFunction<'de> {
        fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
            match key {
                "name" => self.name = Some(map.next_value()?),
                "arguments" => self.arguments = Some(map.next_value()?),
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
            Ok(())
        }
    }

    /// A token count: `Some(n)` for a whole number, `None` for `null`; anything else fails.
    struct Count(Option<u64>);

    impl<'de> Deserialize<'de> for Count {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(CountVisitor)
        }
    }

    struct CountVisitor;

    impl<'de> Visitor<'de> for CountVisitor {
        type Value = Count;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number of tokens or null")
        }
        fn visit_u64<E>(self, v: u64) -> Result<Count, E> {
            Ok(Count(Some(v)))
        }
        fn visit_unit<E>(self) -> Result<Count, E> {
            Ok(Count(None))
        }
    }

    /// `usage`: each field tells absent (`None`) from present.
    #[derive(Default)]
    pub(super) struct WireUsage {
        input_tokens: Option<Count>,
        prompt_tokens: Option<Count>,
        output_tokens: Option<Count>,
        completion_tokens: Option<Count>,
        prompt_tokens_details: Option<Value>,
        completion_tokens_details: Option<Value>,
    }

    impl<'de> Fields<'de> for WireUsage {
        fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
            match key {
                "input_tokens" => self.input_tokens = Some(map.next_value()?),
                "prompt_tokens" => self.prompt_tokens = Some(map.next_value()?),
                "output_tokens" => self.output_tokens = Some(map.next_value()?),
                "completion_tokens" => self.completion_tokens = Some(map.next_value()?),
                "prompt_tokens_details" => self.prompt_tokens_details = Some(map.next_value()?),
                "completion_tokens_details" => {
                    self.completion_tokens_details = Some(map.next_value()?);
                }
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
            Ok(())
        }
    }

    impl WireUsage {
        /// The usage, as `parse_usage` reads it: the first naming when present (even `null`),
        /// else the second; `None` when a count is past [`MAX_REPORTED_TOKENS`].
        fn usage(self) -> Option<Usage> {
            let pick = |primary: Option<Count>, fallback: Option<Count>| {
                let n = primary.or(fallback).and_then(|Count(n)| n).unwrap_or(0);
                (n <= MAX_REPORTED_TOKENS).then_some(n)
            };
            let usage = Usage {
                input_tokens: pick(self.input_tokens, self.prompt_tokens)?,
                output_tokens: pick(self.output_tokens, self.completion_tokens)?,
                ..Usage::default()
            };
            // The subsets, read as `with_usage_details` reads them.
            let mut details = serde_json::Map::new();
            if let Some(d) = self.prompt_tokens_details {
                details.insert("prompt_tokens_details".to_owned(), d);
            }
            if let Some(d) = self.completion_tokens_details {
                details.insert("completion_tokens_details".to_owned(), d);
            }
            Some(super::with_usage_details(&details, usage))
        }
    }
}

/// `finish_reason`: a string is kept; absent or `null` is `None`; another value becomes its
/// JSON text.
pub(crate) fn finish_reason(v: Option<&Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

/// Extracts text from a `content` value: `null` → `""`, a string as is, a list of parts
/// concatenated (strings, `{"type": "text"|"output_text", "text": …}`, `{"value": …}`), any
/// other value as its JSON text.
///
/// ```
/// use executionkit::provider::parse::content_text;
/// let v = serde_json::json!(["alpha", {"type":"text","text":"beta"},
///     {"type":"output_text","text":{"value":"gamma"}}, {"value":"delta"}, 123]);
/// assert_eq!(content_text(Some(&v)), "alphabetagammadelta");
/// assert_eq!(content_text(Some(&serde_json::json!(42))), "42");
/// assert_eq!(content_text(None), "");
/// ```
#[must_use]
pub fn content_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut s = String::new();
            for p in parts {
                match p {
                    Value::String(t) => s.push_str(t),
                    Value::Object(o) => {
                        let is_text = matches!(
                            o.get("type").and_then(Value::as_str),
                            Some("text" | "output_text")
                        );
                        if is_text {
                            match o.get("text") {
                                Some(Value::String(t)) => s.push_str(t),
                                Some(Value::Object(t)) => {
                                    if let Some(Value::String(v)) = t.get("value") {
                                        s.push_str(v);
                                    }
                                }
                                _ => {}
                            }
                        } else if let Some(Value::String(v)) = o.get("value") {
                            s.push_str(v);
                        }
                    }
                    _ => {}
                }
            }
            s
        }
        Some(other) => other.to_string(),
    }
}

/// Parses `message.tool_calls` (see the reference §5.3 for every error message).
///
/// Malformed shapes (not a list, an item or `function` not an object, a missing name,
/// `arguments` neither a string nor an object nor `null`) are `provider` errors. An `arguments`
/// string that is not valid JSON, or does not decode to an object, does not fail the response:
/// the call is kept with empty `arguments` and [`ToolCall::arguments_error`] set, so that a tool
/// loop can answer the model with an observation.
///
/// ```
/// use executionkit::provider::parse::parse_tool_calls;
/// let v = serde_json::json!([{"id": "a", "function": {"name": "f", "arguments": "{\"x\":1}"}}]);
/// let calls = parse_tool_calls(Some(&v)).unwrap();
/// assert_eq!(calls[0].arguments["x"], 1);
/// assert_eq!(calls[0].arguments_error, None);
/// assert!(parse_tool_calls(Some(&serde_json::json!("bad"))).is_err());
/// let v = serde_json::json!([{"id": "b", "function": {"name": "f", "arguments": "[1]"}}]);
/// let calls = parse_tool_calls(Some(&v)).unwrap();
/// assert!(calls[0].arguments.is_empty());
/// assert_eq!(calls[0].arguments_error.as_deref(), Some("arguments did not decode to a JSON object"));
/// ```
pub fn parse_tool_calls(v: Option<&Value>) -> Result<Vec<ToolCall>> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(provider_err("Provider tool_calls payload was not a list"));
        }
    };
    let mut calls = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(item) = item else {
            return Err(provider_err("Provider tool call payload was not an object"));
        };
        let Some(Value::Object(function)) = item.get("function") else {
            return Err(provider_err(
                "Provider tool call function payload was not an object",
            ));
        };
        let name = match function.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => return Err(provider_err("Provider tool call name was missing")),
        };
        let (arguments, arguments_error) = match function.get("arguments") {
            Some(Value::String(s)) => decode_argument_string(s),
            other => (parse_arguments(other, &name)?, None),
        };
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        calls.push(ToolCall {
            id,
            name,
            arguments,
            arguments_error,
        });
    }
    Ok(calls)
}

/// Decodes an `arguments` string for [`parse_tool_calls`]: the object, or `{}` and a bounded
/// reason that never holds the argument text (serde_json's messages name only a position).
fn decode_argument_string(s: &str) -> (Map<String, Value>, Option<String>) {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => (m, None),
        Ok(_) => (
            Map::new(),
            Some("arguments did not decode to a JSON object".to_owned()),
        ),
        Err(e) => (
            Map::new(),
            Some(truncate_chars(
                &redact(&format!("arguments were not valid JSON ({e})")),
                200,
            )),
        ),
    }
}

/// Decodes tool-call arguments: `null` → `{}`, an object as is, a string holding a JSON object.
/// Used directly, every failure is a `provider` error (reference scenario 27); through
/// [`parse_tool_calls`], a bad string becomes [`ToolCall::arguments_error`] instead.
///
/// ```
/// use executionkit::provider::parse::parse_arguments;
/// assert!(parse_arguments(None, "f").unwrap().is_empty());
/// let e = parse_arguments(Some(&serde_json::json!("{bad json}")), "f").unwrap_err();
/// assert!(e.message().contains("were not valid JSON"));
/// ```
pub fn parse_arguments(v: Option<&Value>, name: &str) -> Result<Map<String, Value>> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(provider_err(format!(
                "Arguments of tool call '{name}' must decode to a JSON object"
            ))),
            Err(_) => Err(provider_err(format!(
                "Arguments of tool call '{name}' were not valid JSON: {}",
                redact(&truncate_chars(s, 200))
            ))),
        },
        Some(_) => Err(provider_err(format!(
            "Arguments of tool call '{name}' must be a dict or JSON string"
        ))),
    }
}

/// Reads usage: `input_tokens` when present (even 0) else `prompt_tokens`; `output_tokens` else
/// `completion_tokens`; each must be a non-negative integer (not a boolean) ≤ one billion.
///
/// ```
/// use executionkit::provider::parse::parse_usage;
/// let u = serde_json::json!({"input_tokens": 0, "prompt_tokens": 99, "completion_tokens": 10});
/// let u = parse_usage(u.as_object().unwrap()).unwrap();
/// assert_eq!((u.input_tokens, u.output_tokens), (0, 10));
/// let bad = serde_json::json!({"prompt_tokens": -1});
/// assert!(parse_usage(bad.as_object().unwrap()).unwrap_err().message().contains("cannot be negative"));
/// ```
pub fn parse_usage(u: &Map<String, Value>) -> Result<Usage> {
    Ok(with_usage_details(
        u,
        Usage {
            input_tokens: usage_field(u, "input_tokens", "prompt_tokens")?,
            output_tokens: usage_field(u, "output_tokens", "completion_tokens")?,
            ..Usage::default()
        },
    ))
}

/// `usage` with the subsets OpenAI reports in a usage object: `prompt_tokens_details.cached_tokens`
/// (cache reads, part of the input) and `completion_tokens_details.reasoning_tokens` (part of the
/// output). Each is a subset, so it is capped at its total; a detail that is absent, `null` or not
/// a whole number counts 0 (it only informs, and never fails a reply).
///
/// ```
/// use executionkit::provider::{Usage, parse::with_usage_details};
/// let u = serde_json::json!({"prompt_tokens_details": {"cached_tokens": 7},
///                            "completion_tokens_details": {"reasoning_tokens": 99}});
/// let base = Usage { input_tokens: 10, output_tokens: 20, ..Usage::default() };
/// let d = with_usage_details(u.as_object().unwrap(), base);
/// assert_eq!((d.cache_read_input_tokens, d.reasoning_tokens), (7, 20));
/// ```
#[must_use]
pub fn with_usage_details(u: &Map<String, Value>, mut usage: Usage) -> Usage {
    let detail = |outer: &str, inner: &str| {
        u.get(outer)
            .and_then(|d| d.get(inner))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    usage.cache_read_input_tokens =
        detail("prompt_tokens_details", "cached_tokens").min(usage.input_tokens);
    usage.reasoning_tokens =
        detail("completion_tokens_details", "reasoning_tokens").min(usage.output_tokens);
    usage
}

fn usage_field(u: &Map<String, Value>, primary: &str, fallback: &str) -> Result<u64> {
    let (name, v) = match u.get(primary) {
        Some(v) => (primary, v),
        None => match u.get(fallback) {
            Some(v) => (fallback, v),
            None => return Ok(0),
        },
    };
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_u64() {
                if x > MAX_REPORTED_TOKENS {
                    Err(provider_err(format!(
                        "Provider usage field '{name}' is unreasonably large: {x}"
                    )))
                } else {
                    Ok(x)
                }
            } else if n.as_i64().is_some_and(|x| x < 0) {
                Err(provider_err(format!(
                    "Provider usage field '{name}' cannot be negative: {n}"
                )))
            } else if n.as_f64().is_some_and(|x| x < 0.0) {
                Err(provider_err(format!(
                    "Provider usage field '{name}' cannot be negative and must be an integer: {n}"
                )))
            } else {
                Err(provider_err(format!(
                    "Provider usage field '{name}' must be an integer, got {n}"
                )))
            }
        }
        Value::Null => Ok(0),
        _ => Err(provider_err(format!(
            "Provider usage field '{name}' must be an integer, got {}",
            json_type(v)
        ))),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The detail of an error body: `error.message` when `error` is an object with a string
/// `message`, else `error` when it is a string. Not JSON, or not an object: `None`.
///
/// ```
/// use executionkit::provider::parse::error_detail;
/// assert_eq!(error_detail(br#"{"error":{"message":"server error"}}"#).as_deref(), Some("server error"));
/// assert_eq!(error_detail(br#"{"error":"boom"}"#).as_deref(), Some("boom"));
/// assert_eq!(error_detail(b"not-json"), None);
/// ```
#[must_use]
pub fn error_detail(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    match v.get("error")? {
        Value::Object(e) => e.get("message").and_then(Value::as_str).map(str::to_owned),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// `true` when an error body's `error.code` or `error.type` is `insufficient_quota`.
///
/// ```
/// use executionkit::provider::parse::is_insufficient_quota;
/// assert!(is_insufficient_quota(br#"{"error":{"type":"insufficient_quota","message":"x"}}"#));
/// assert!(!is_insufficient_quota(b"{}"));
/// ```
#[must_use]
pub fn is_insufficient_quota(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let Some(Value::Object(e)) = v.get("error") else {
        return false;
    };
    ["code", "type"]
        .iter()
        .any(|k| e.get(*k).and_then(Value::as_str) == Some("insufficient_quota"))
}

/// Parses a `Retry-After` value into seconds (reference §3.2): a finite decimal number
/// (negative → 0), else an HTTP date (seconds from now, at least 0), else `default`.
///
/// ```
/// use executionkit::provider::parse::parse_retry_after;
/// assert_eq!(parse_retry_after("30", 1.0), 30.0);
/// assert_eq!(parse_retry_after("2.5", 1.0), 2.5);
/// assert_eq!(parse_retry_after("-5", 1.0), 0.0);
/// assert_eq!(parse_retry_after("inf", 1.0), 1.0);
/// assert_eq!(parse_retry_after("??", 5.0), 5.0);
/// assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1.0), 0.0); // in the past
/// ```
#[must_use]
pub fn parse_retry_after(value: &str, default: f64) -> f64 {
    let value = value.trim();
    if let Ok(x) = value.parse::<f64>() {
        return if x.is_finite() { x.max(0.0) } else { default };
    }
    match httpdate::parse_http_date(value) {
        Ok(when) => match when.duration_since(std::time::SystemTime::now()) {
            Ok(ahead) => ahead.as_secs_f64(),
            Err(_) => 0.0,
        },
        Err(_) => default,
    }
}

/// The first `max` characters of `s`.
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

/// serde helper: `null` or absent content as `""`, lists of parts flattened.
pub(crate) fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    Ok(content_text(v.as_ref()))
}

/// serde helper: wire-shaped tool calls.
pub(crate) fn wire_tool_calls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ToolCall>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    parse_tool_calls(v.as_ref()).map_err(serde::de::Error::custom)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NGINX: &[u8] = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#;

    /// `parse_reply` answers as `parse_completion` does (the same response, or an error of the
    /// same kind and message), and whatever the typed pass accepts is that same response.
    /// Returns whether the typed pass took the body.
    fn agrees(body: &[u8]) -> bool {
        let slow = parse_completion(body);
        let fast = parse_reply(body);
        match (&slow, &fast) {
            (Ok(s), Ok(f)) => assert_eq!(s, f, "{}", String::from_utf8_lossy(body)),
            (Err(s), Err(f)) => assert_eq!(
                (s.kind(), s.message()),
                (f.kind(), f.message()),
                "{}",
                String::from_utf8_lossy(body)
            ),
            (s, f) => panic!("{}: {s:?} vs {f:?}", String::from_utf8_lossy(body)),
        }
        match typed_reply(body) {
            Some(typed) => {
                assert_eq!(
                    slow.as_ref().ok(),
                    Some(&typed),
                    "{}",
                    String::from_utf8_lossy(body)
                );
                true
            }
            None => false,
        }
    }

    fn calls(n: usize) -> String {
        let call = r#"{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}"#;
        let list = vec![call; n].join(",");
        format!(r#"{{"choices":[{{"message":{{"content":null,"tool_calls":[{list}]}}}}]}}"#)
    }

    #[test]
    fn common_replies_take_the_typed_pass_and_read_as_parse_completion_does() {
        let typed: [&[u8]; 15] = [
            NGINX,
            br#" { "choices" : [ { "message" : { "content" : null } , "finish_reason" : null } , {"message":null} ] } "#,
            br#"{"choices":[{"message":{"content":"x","tool_calls":null}}],"usage":{"input_tokens":null,"prompt_tokens":9,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":2,"a":[1,-2.5,true,false,null,"s\n"]}}}"#,
            b"{\"choices\":[{\"message\":{\"content\":\"caf\xc3\xa9\"}}],\"usage\":null,\"id\":null,\"timings\":{\"t\":12.345}}",
            br#"{"choices":[{}],"usage":{}}"#,
            br#"{"choices":[{"message":{"content":""}}],"usage":{"output_tokens":1000000000}}"#,
            br#"{"model":"m","choices":[{"message":{"content":"a"}},{"message":{"content":"b"}}]}"#,
            br#"{"choices":[{"message":{"content":"a\nb\u00e9"},"finish_reason":null},{"message":{"content":null}}],"usage":{"input_tokens":3,"prompt_tokens":9,"output_tokens":null}}"#,
            br#"{"choices":[{"message":{"content":"x","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":[1]}"}},{"function":{"name":"g","arguments":{"b":2}}},{"id":7,"function":{"name":"h","arguments":null}},{"function":{"name":"i"}}]}}]}"#,
            br#"{"choices":[{"message":{"tool_calls":[{"id":"c","function":{"name":"f","arguments":"{bad"}},{"id":"d","function":{"name":"f","arguments":"[1]"}}]}}]}"#,
            br#"{"choices":[{"message":{"content":[{"type":"text","text":"parts"},"s",{"type":"output_text","text":{"value":"v"}},{"value":"w"},3]},"finish_reason":7}]}"#,
            br#"{"id":5,"model":["x"],"choices":[{"message":"odd","finish_reason":{"a":1}}],"usage":"lots"}"#,
            br#"{"choices":[{"message":{"content":{"b":1,"a":[2]}}},{"message":{"content":1.5}},{"message":{"content":true}}]}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"choices":[{"message":{"content":"b"}}],"usage":{"prompt_tokens":5},"usage":{"prompt_tokens":2}}"#,
            br#"{"ch\u006fices":[{"m\u0065ssage":{"content":"k"}}]}"#,
        ];
        for b in typed {
            assert!(
                agrees(b),
                "not taken by the typed pass: {}",
                String::from_utf8_lossy(b)
            );
        }
        assert!(agrees(calls(MAX_TOOL_CALLS).as_bytes()));
        let general: [&[u8]; 25] = [
            br#"{"choices":[]}"#,
            br#"{"choices":[],"usage":{}}"#,
            br#"{"choices":{}}"#,
            br#"{"choices":[1]}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1000000001}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":2000000000}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1.0}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1.5}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":-1}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":"7"}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":01}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"x":1e400}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"x":"\ud800"}"#,
            br#"{"choices":[{"message":{"content":"x"}}]} x"#,
            b"{\"choices\":[{\"message\":{\"content\":\"x\"}}],\"x\":\"\xff\"}",
            b"{\"choices\":[{\"message\":{\"content\":\"a\tb\"}}]}",
            br#"[{"choices":[]}]"#,
            br#"[null,null,[{"message":{"content":"x"}}]]"#,
            br#"{"choices":[[{"content":"x"}]]}"#,
            br#"not json"#,
            br#"{"choices":[{"message":{"tool_calls":{}}}]}"#,
            br#"{"choices":[{"message":{"tool_calls":[{"function":{"name":""}}]}}]}"#,
            br#"{"choices":[{"message":{"tool_calls":[{"function":{"name":"f","arguments":3}}]}}]}"#,
            br#"{"choices":[{"message":{"tool_calls":[{"id":"c"}]}}]}"#,
            br#"{"choices":[{"message":{"tool_calls":["c"]}}]}"#,
        ];
        for b in general {
            assert!(
                !agrees(b),
                "taken by the typed pass: {}",
                String::from_utf8_lossy(b)
            );
        }
    }

    /// The bodies of the differential test that lived beside the fast path in openai.rs.
    #[test]
    fn plain_replies_parse_as_parse_completion_does() {
        let bodies: [&[u8]; 18] = [
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"input_tokens":null,"prompt_tokens":9,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":2}}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1.5}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":"lots"}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"output_tokens":1000000001}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":"7"}}"#,
            br#"{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#,
            br#"{"choices":[{"message":{"content":"a\nb\u00e9"},"finish_reason":null},{"message":{"content":null}}],"usage":{"input_tokens":3,"prompt_tokens":9,"output_tokens":null}}"#,
            br#"{"choices":[{"message":{"content":"x","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#,
            br#"{"choices":[{"message":{"content":[{"type":"text","text":"parts"}]},"finish_reason":7}]}"#,
            br#"{"id":5,"model":null,"choices":[{"message":"odd"}],"usage":null}"#,
            br#"{"choices":[],"usage":{}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":-1}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":2000000000}}"#,
            br#"{"choices":[{"message":{"content":"a"}}],"choices":[{"message":{"content":"b"}}]}"#,
            br#"[1,2]"#,
            br#"not json"#,
            br#"{"choices":[{"message":{"content":"x"}}]} trailing"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"completion_tokens":-0.5}}"#,
        ];
        let typed = bodies.iter().filter(|b| agrees(b)).count();
        assert_eq!(typed, 8);
    }

    #[test]
    fn a_reply_with_too_many_tool_calls_is_a_provider_error() {
        let body = calls(MAX_TOOL_CALLS + 1);
        assert!(!agrees(body.as_bytes()));
        let e = parse_reply(body.as_bytes()).unwrap_err();
        assert!(e.is_provider());
        assert_eq!(
            e.message(),
            "Provider response choice 0 has more than 128 tool calls (the limit MAX_TOOL_CALLS)"
        );
        assert_eq!(
            parse_reply(calls(MAX_TOOL_CALLS).as_bytes())
                .unwrap()
                .tool_calls()
                .len(),
            128
        );
    }

    #[test]
    fn nesting_past_serde_jsons_limit_fails_on_both_paths() {
        for depth in [120, 124, 125, 126, 127, 128, 200, 100_000] {
            let mut b = br#"{"choices":[{"message":{"content":"x"}}],"x":"#.to_vec();
            b.extend(std::iter::repeat_n(b'[', depth));
            b.extend(std::iter::repeat_n(b']', depth));
            b.push(b'}');
            agrees(&b);
            let mut b = br#"{"choices":[{"message":{"content":"x","y":"#.to_vec();
            b.extend(std::iter::repeat_n(b'[', depth));
            b.extend(std::iter::repeat_n(b']', depth));
            b.extend(b"}}]}");
            agrees(&b);
        }
    }

    #[test]
    fn every_single_byte_change_reads_as_parse_completion_reads_it() {
        let alphabet = b"{}[]\":,0123456789.-+eEtrufalsn \\\n\x00\xc3\xff";
        let rich: &[u8] = br#"{"choices":[{"message":{"content":"x","tool_calls":[{"id":"c","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":null}],"usage":{"input_tokens":null,"prompt_tokens":9,"completion_tokens":4,"d":{"c":2,"a":[1,-2.5,true,false,null,"s\n"]}}}"#;
        let mut typed = 0;
        for seed in [NGINX, rich] {
            for i in 0..seed.len() {
                for &c in alphabet {
                    let mut b = seed.to_vec();
                    b[i] = c;
                    if agrees(&b) {
                        typed += 1;
                    }
                    let mut del = seed.to_vec();
                    del.remove(i);
                    agrees(&del);
                    let mut ins = seed.to_vec();
                    ins.insert(i, c);
                    agrees(&ins);
                }
            }
        }
        assert!(typed > 100, "{typed}");
    }

    // ---- replies of random shapes ---------------------------------------------------------------

    /// A JSON text of chosen bytes: keys may repeat, numbers and strings may be out of range or
    /// invalid, so that the general parser's every rule is met.
    #[derive(Debug, Clone)]
    enum J {
        Lit(&'static str),
        Arr(Vec<J>),
        Obj(Vec<(&'static str, J)>),
        Deep(usize),
        Calls(usize),
    }

    impl J {
        fn render(&self, out: &mut Vec<u8>) {
            match self {
                J::Lit(s) => out.extend_from_slice(s.as_bytes()),
                J::Arr(items) => {
                    out.push(b'[');
                    for (i, v) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        v.render(out);
                    }
                    out.push(b']');
                }
                J::Obj(fields) => {
                    out.push(b'{');
                    for (i, (k, v)) in fields.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(k.as_bytes());
                        out.push(b':');
                        v.render(out);
                    }
                    out.push(b'}');
                }
                J::Deep(n) => {
                    out.extend(std::iter::repeat_n(b'[', *n));
                    out.extend(std::iter::repeat_n(b']', *n));
                }
                J::Calls(n) => {
                    let call = r#"{"id":"c","function":{"name":"f","arguments":"{}"}}"#;
                    out.push(b'[');
                    out.extend_from_slice(vec![call; *n].join(",").as_bytes());
                    out.push(b']');
                }
            }
        }
    }

    const SCALARS: &[&str] = &[
        "null",
        "true",
        "false",
        "0",
        "-0",
        "7",
        "1000000000",
        "1000000001",
        "-1",
        "1.0",
        "-2.5",
        "1e2",
        "1e400",
        "18446744073709551616",
        r#""""#,
        r#""plain""#,
        r#""esc\n\u00e9\"""#,
        r#""\ud800""#,
        r#""\ud83e\udd80""#,
        "\"caf\u{e9}\"",
        r#""{\"a\":1}""#,
        r#""{bad""#,
        r#""[1]""#,
        r#""text""#,
        r#""output_text""#,
    ];

    const KEYS: &[&str] = &[
        r#""id""#,
        r#""model""#,
        r#""choices""#,
        r#""usage""#,
        r#""message""#,
        r#""content""#,
        r#""tool_calls""#,
        r#""function""#,
        r#""name""#,
        r#""arguments""#,
        r#""finish_reason""#,
        r#""type""#,
        r#""text""#,
        r#""value""#,
        r#""index""#,
        r#""input_tokens""#,
        r#""prompt_tokens""#,
        r#""output_tokens""#,
        r#""completion_tokens""#,
        r#""c\u006fntent""#,
        r#""x""#,
    ];

    fn scalar() -> impl Strategy<Value = J> {
        prop::sample::select(SCALARS).prop_map(J::Lit)
    }

    fn any_json() -> impl Strategy<Value = J> {
        let leaf = prop_oneof![
            8 => scalar(),
            1 => (120usize..132).prop_map(J::Deep),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..4).prop_map(J::Obj),
            ]
        })
    }

    /// A field `key` whose value has the usual shape three times in four.
    fn field(
        key: &'static str,
        good: impl Strategy<Value = J>,
    ) -> impl Strategy<Value = (&'static str, J)> {
        prop_oneof![3 => good, 1 => any_json()].prop_map(move |v| (key, v))
    }

    fn obj(
        fields: impl Strategy<Value = (&'static str, J)>,
        max: usize,
    ) -> impl Strategy<Value = J> {
        prop::collection::vec(fields, 0..max).prop_map(J::Obj)
    }

    fn other_field() -> impl Strategy<Value = (&'static str, J)> {
        (prop::sample::select(KEYS), any_json())
    }

    fn function() -> impl Strategy<Value = J> {
        obj(
            prop_oneof![
                field(
                    r#""name""#,
                    prop::sample::select(&[r#""f""#, r#""""#, r#""g\u0068""#][..]).prop_map(J::Lit)
                ),
                field(r#""arguments""#, scalar()),
                other_field(),
            ],
            4,
        )
    }

    fn tool_calls() -> impl Strategy<Value = J> {
        let call = obj(
            prop_oneof![
                field(r#""id""#, scalar()),
                field(r#""function""#, function()),
                field(r#""type""#, Just(J::Lit(r#""function""#))),
            ],
            4,
        );
        prop_oneof![
            4 => prop::collection::vec(call, 0..4).prop_map(J::Arr),
            1 => Just(J::Lit("null")),
            1 => prop::sample::select(&[127usize, 128, 129, 130][..]).prop_map(J::Calls),
        ]
    }

    fn content() -> impl Strategy<Value = J> {
        let part = prop_oneof![
            scalar(),
            obj(
                prop_oneof![
                    field(
                        r#""type""#,
                        prop::sample::select(&[r#""text""#, r#""output_text""#, r#""image""#][..])
                            .prop_map(J::Lit)
                    ),
                    field(
                        r#""text""#,
                        prop_oneof![scalar(), obj(field(r#""value""#, scalar()), 3)]
                    ),
                    field(r#""value""#, scalar()),
                ],
                4,
            ),
        ];
        prop_oneof![
            4 => scalar(),
            1 => prop::collection::vec(part, 0..4).prop_map(J::Arr),
        ]
    }

    fn choice() -> impl Strategy<Value = J> {
        let message = obj(
            prop_oneof![
                field(r#""content""#, content()),
                field(r#""tool_calls""#, tool_calls()),
                field(r#""role""#, Just(J::Lit(r#""assistant""#))),
                other_field(),
            ],
            4,
        );
        obj(
            prop_oneof![
                field(r#""message""#, message),
                field(r#""finish_reason""#, scalar()),
                field(r#""index""#, scalar()),
            ],
            4,
        )
    }

    fn reply() -> impl Strategy<Value = J> {
        let counts = prop_oneof![
            field(r#""input_tokens""#, scalar()),
            field(r#""prompt_tokens""#, scalar()),
            field(r#""output_tokens""#, scalar()),
            field(r#""completion_tokens""#, scalar()),
            other_field(),
        ];
        obj(
            prop_oneof![
                2 => field(r#""choices""#, prop::collection::vec(choice(), 0..3).prop_map(J::Arr)),
                1 => field(r#""usage""#, obj(counts, 4)),
                1 => field(r#""id""#, scalar()),
                1 => field(r#""model""#, scalar()),
                1 => other_field(),
            ],
            6,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Replies of random shapes, whole or with one byte changed: both parsers agree.
        #[test]
        fn random_replies_read_as_parse_completion_reads_them(
            body in reply(),
            edit in prop::option::weighted(0.2, (any::<prop::sample::Index>(), any::<u8>())),
        ) {
            let mut b = Vec::new();
            body.render(&mut b);
            if let Some((at, byte)) = edit {
                let i = at.index(b.len());
                b[i] = byte;
            }
            agrees(&b);
        }
    }

    /// The generator reaches the typed pass often, and its refusals too.
    #[test]
    fn random_replies_reach_both_paths() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = reply();
        let (mut typed, mut general) = (0, 0);
        for _ in 0..2000 {
            let mut b = Vec::new();
            strategy
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .render(&mut b);
            if agrees(&b) {
                typed += 1;
            } else {
                general += 1;
            }
        }
        assert!(
            typed > 200 && general > 200,
            "{typed} typed, {general} general"
        );
    }
}
