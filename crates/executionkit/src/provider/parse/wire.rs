//! The wire shapes of a reply for [`parse_reply`](super::parse_reply). Each mirrors what
//! [`parse_completion`](super::parse_completion) does
//! with the same value; where it would fail, or where its answer is not cheap to repeat, the
//! deserializer fails and the general parser takes over. Repeated keys keep the last value, as
//! a `serde_json::Value` does.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::fields::{decode_argument_string, token_logprob};
use super::{
    Choice, LlmResponse, MAX_REPORTED_TOKENS, MAX_TOOL_CALLS, ToolCall, Usage, content_text,
    finish_reason,
};
use crate::provider::LogprobSummary;

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
    logprobs: Option<OrDefault<WireLogprobs>>,
}

impl<'de> Fields<'de> for WireChoice<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "message" => self.message = Some(map.next_value()?),
            "finish_reason" => self.finish_reason = Some(map.next_value()?),
            "logprobs" => self.logprobs = Some(map.next_value()?),
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
            logprobs: self
                .logprobs
                .and_then(|OrDefault(l)| l.content)
                .and_then(|TokenLogprobs(s)| s),
        })
    }
}

/// A choice's `logprobs`: only `content` is read (as `logprob_summary` reads it).
#[derive(Default)]
pub(super) struct WireLogprobs {
    content: Option<TokenLogprobs>,
}

impl<'de> Fields<'de> for WireLogprobs {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "content" => self.content = Some(map.next_value()?),
            _ => {
                map.next_value::<Skip>()?;
            }
        }
        Ok(())
    }
}

/// `logprobs.content`: the list of tokens summed as it is read, one entry at a time, so that
/// its length costs no memory; `None` for any other value or a list with an entry that is not
/// a token with a log-probability.
pub(super) struct TokenLogprobs(Option<LogprobSummary>);

impl<'de> Deserialize<'de> for TokenLogprobs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TokenLogprobsVisitor)
    }
}

struct TokenLogprobsVisitor;

impl<'de> Visitor<'de> for TokenLogprobsVisitor {
    type Value = TokenLogprobs;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TokenLogprobs, A::Error> {
        let mut sum = Some(LogprobSummary::default());
        while let Some(OrDefault(WireToken { logprob })) = seq.next_element()? {
            match (
                sum.as_mut(),
                logprob.and_then(|Number(x)| x).and_then(token_logprob),
            ) {
                (Some(s), Some(x)) => s.add(x),
                _ => sum = None,
            }
        }
        Ok(TokenLogprobs(sum.and_then(LogprobSummary::checked)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TokenLogprobs, A::Error> {
        SkipVisitor.visit_map(map).map(|_| TokenLogprobs(None))
    }
    fn visit_bool<E>(self, _: bool) -> Result<TokenLogprobs, E> {
        Ok(TokenLogprobs(None))
    }
    fn visit_i64<E>(self, _: i64) -> Result<TokenLogprobs, E> {
        Ok(TokenLogprobs(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<TokenLogprobs, E> {
        Ok(TokenLogprobs(None))
    }
    fn visit_f64<E>(self, _: f64) -> Result<TokenLogprobs, E> {
        Ok(TokenLogprobs(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<TokenLogprobs, E> {
        Ok(TokenLogprobs(None))
    }
    fn visit_unit<E>(self) -> Result<TokenLogprobs, E> {
        Ok(TokenLogprobs(None))
    }
}

/// One entry of `logprobs.content`: its `logprob` (`None` when absent; an entry that is not
/// an object reads as one without it).
#[derive(Default)]
pub(super) struct WireToken {
    logprob: Option<Number>,
}

impl<'de> Fields<'de> for WireToken {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "logprob" => self.logprob = Some(map.next_value()?),
            _ => {
                map.next_value::<Skip>()?;
            }
        }
        Ok(())
    }
}

/// A number as `f64` (as `Value::as_f64` reads it), or `None` for any other value.
struct Number(Option<f64>);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberVisitor)
    }
}

struct NumberVisitor;

impl<'de> Visitor<'de> for NumberVisitor {
    type Value = Number;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    #[allow(clippy::cast_precision_loss)]
    fn visit_i64<E>(self, v: i64) -> Result<Number, E> {
        Ok(Number(Some(v as f64)))
    }
    #[allow(clippy::cast_precision_loss)]
    fn visit_u64<E>(self, v: u64) -> Result<Number, E> {
        Ok(Number(Some(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Number, E> {
        Ok(Number(Some(v)))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Number, E> {
        Ok(Number(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<Number, E> {
        Ok(Number(None))
    }
    fn visit_unit<E>(self) -> Result<Number, E> {
        Ok(Number(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Number, A::Error> {
        SkipVisitor.visit_seq(seq).map(|_| Number(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Number, A::Error> {
        SkipVisitor.visit_map(map).map(|_| Number(None))
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
