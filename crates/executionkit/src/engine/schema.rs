//! JSON Schemas for model output and tool arguments: derived from a Rust type with `schemars`,
//! rewritten to OpenAI's strict dialect for `response_format`, and enforced with the
//! `jsonschema` crate (full JSON Schema, not a subset).
//!
//! Two schemas are kept per [`OutputSchema`]:
//!
//! * the **validation** schema: what the type (or the caller) accepts — an `Option` field may
//!   be absent, unknown keys are allowed unless the type denies them. Replies are checked
//!   against it.
//! * the **strict** schema sent to the model: every object gets `additionalProperties: false`
//!   and lists every property in `required` (optional ones stay nullable), `oneOf` becomes
//!   `anyOf`, and keywords the strict dialect rejects (`default`, `$schema`, non-standard
//!   `format`s such as `uint32`) are dropped. `$defs`/`$ref` are kept (the dialect allows them,
//!   and recursive types need them).

// Some items serve only the crate's tests and benchmarks (through `internals`).
#![cfg_attr(not(feature = "testing"), allow(dead_code, unused_imports))]

use std::fmt;

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::text::cut_with;

/// Formats OpenAI's strict dialect accepts; others (schemars' `uint32`, `double`, …) are
/// dropped from the strict schema (the validation schema keeps them).
const STRICT_FORMATS: &[&str] = &[
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "uuid",
];

/// At most this many validation errors are reported, each at most [`MAX_ERROR_CHARS`] chars.
const MAX_ERRORS: usize = 5;
const MAX_ERROR_CHARS: usize = 300;

/// A compiled output schema: the schema to validate against, its strict form for the model,
/// and a name for `response_format`.
///
/// ```
/// use executionkit::internals::schema::OutputSchema;
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Answer { value: i64, note: Option<String> }
///
/// let s = OutputSchema::of::<Answer>().unwrap();
/// assert_eq!(s.name(), "Answer");
/// assert_eq!(s.strict_schema()["additionalProperties"], false);
/// assert_eq!(s.strict_schema()["required"], serde_json::json!(["note", "value"]));
/// assert!(s.validate(&serde_json::json!({"value": 3})).is_ok());
/// assert!(s.validate(&serde_json::json!({"value": "x"})).is_err());
/// ```
#[derive(Clone)]
pub struct OutputSchema {
    name: String,
    schema: Value,
    strict: Value,
    strict_compatible: bool,
    validator: jsonschema::Validator,
}

impl fmt::Debug for OutputSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputSchema")
            .field("name", &self.name)
            .field("schema", &self.schema)
            .field("strict_compatible", &self.strict_compatible)
            .finish_non_exhaustive()
    }
}

impl OutputSchema {
    /// The schema of `T` (as deserialised), named after the type.
    ///
    /// # Errors
    /// `invalid_argument` if the generated schema does not compile (it always should).
    ///
    /// ```
    /// let s = executionkit::internals::schema::OutputSchema::of::<Vec<u8>>().unwrap();
    /// assert_eq!(s.schema()["type"], "array");
    /// assert!(!s.is_strict_compatible()); // the strict dialect wants an object at the root
    /// ```
    pub fn of<T: JsonSchema + ?Sized>() -> Result<Self> {
        Self::from_value(T::schema_name().as_ref(), schema_for::<T>())
    }

    /// A caller's schema, named `name` (sanitised to `[A-Za-z0-9_-]{1,64}`).
    ///
    /// # Errors
    /// `invalid_argument` (argument `schema`) when `schema` is not a valid JSON Schema.
    ///
    /// ```
    /// use executionkit::internals::schema::OutputSchema;
    /// let s = OutputSchema::from_value("city", serde_json::json!({
    ///     "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]
    /// })).unwrap();
    /// assert!(s.validate(&serde_json::json!({"name": "Oslo"})).is_ok());
    /// assert!(OutputSchema::from_value("bad", serde_json::json!({"type": 12})).is_err());
    /// ```
    pub fn from_value(name: &str, schema: Value) -> Result<Self> {
        let validator = jsonschema::validator_for(&schema).map_err(|e| {
            Error::invalid_argument(
                "schema",
                format!(
                    "the output schema is not a valid JSON Schema: {}",
                    bounded(&e.to_string())
                ),
            )
        })?;
        let (strict, strict_compatible) = strict_schema(&schema);
        Ok(Self {
            name: sanitize_name(name),
            schema,
            strict,
            strict_compatible,
            validator,
        })
    }

    /// The name sent in `response_format.json_schema.name`.
    ///
    /// ```
    /// let s = executionkit::internals::schema::OutputSchema::from_value("my city!", serde_json::json!({})).unwrap();
    /// assert_eq!(s.name(), "my_city_");
    /// ```
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schema replies are validated against.
    ///
    /// ```
    /// let s = executionkit::internals::schema::OutputSchema::of::<String>().unwrap();
    /// assert_eq!(s.schema()["type"], "string");
    /// ```
    #[must_use]
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// The schema in OpenAI's strict dialect.
    ///
    /// ```
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct P { x: Option<i32> }
    /// let s = executionkit::internals::schema::OutputSchema::of::<P>().unwrap();
    /// assert_eq!(s.strict_schema()["required"], serde_json::json!(["x"]));
    /// assert!(s.schema().get("required").is_none());
    /// ```
    #[must_use]
    pub fn strict_schema(&self) -> &Value {
        &self.strict
    }

    /// `true` when the strict schema satisfies the dialect (an object at the root, no open
    /// maps), so `"strict": true` may be sent.
    ///
    /// ```
    /// use executionkit::internals::schema::OutputSchema;
    /// assert!(!OutputSchema::of::<std::collections::HashMap<String, u8>>().unwrap().is_strict_compatible());
    /// ```
    #[must_use]
    pub fn is_strict_compatible(&self) -> bool {
        self.strict_compatible
    }

    /// The `response_format` body value:
    /// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`; `strict` is
    /// `true` when the schema is strict-compatible (then the strict schema is sent), else the
    /// validation schema is sent with `strict: false`.
    ///
    /// ```
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct City { name: String }
    /// let rf = executionkit::internals::schema::OutputSchema::of::<City>().unwrap().response_format();
    /// assert_eq!(rf["type"], "json_schema");
    /// assert_eq!(rf["json_schema"]["name"], "City");
    /// assert_eq!(rf["json_schema"]["strict"], true);
    /// ```
    #[must_use]
    pub fn response_format(&self) -> Value {
        let schema = if self.strict_compatible {
            &self.strict
        } else {
            &self.schema
        };
        json!({
            "type": "json_schema",
            "json_schema": {
                "name": self.name,
                "schema": schema,
                "strict": self.strict_compatible,
            }
        })
    }

    /// Checks `instance`; the error lists up to five failures as `at <path>: <message>`
    /// (each bounded in length), joined by `"; "`.
    ///
    /// # Errors
    /// The failures, as text to feed back to a model.
    ///
    /// ```
    /// let s = executionkit::internals::schema::OutputSchema::from_value(
    ///     "n", serde_json::json!({"type": "object", "properties": {"n": {"minimum": 5}}})).unwrap();
    /// let err = s.validate(&serde_json::json!({"n": 1})).unwrap_err();
    /// assert!(err.contains("/n"), "{err}");
    /// ```
    pub fn validate(&self, instance: &Value) -> std::result::Result<(), String> {
        validate_with(&self.validator, instance)
    }
}

/// Checks `instance` against a compiled validator, describing up to five failures.
///
/// # Errors
/// The failures as `at <path>: <message>` joined by `"; "`.
///
/// ```
/// let v = jsonschema::validator_for(&serde_json::json!({"type": "string"})).unwrap();
/// assert!(executionkit::internals::schema::validate_with(&v, &serde_json::json!("x")).is_ok());
/// assert!(executionkit::internals::schema::validate_with(&v, &serde_json::json!(1)).is_err());
/// ```
pub fn validate_with(
    validator: &jsonschema::Validator,
    instance: &Value,
) -> std::result::Result<(), String> {
    let mut errors = validator.iter_errors(instance);
    let Some(first) = errors.next() else {
        return Ok(());
    };
    let describe = |e: &jsonschema::ValidationError<'_>| {
        let path = e.instance_path().to_string();
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path
        };
        format!("at {path}: {}", bounded(&e.to_string()))
    };
    let mut parts = vec![describe(&first)];
    let mut more = 0usize;
    for e in errors {
        if parts.len() < MAX_ERRORS {
            parts.push(describe(&e));
        } else {
            more += 1;
        }
    }
    let mut msg = parts.join("; ");
    if more > 0 {
        msg.push_str(&format!(" (and {more} more)"));
    }
    Err(msg)
}

/// The JSON Schema (draft 2020-12) of `T` as deserialised, `$defs` kept.
///
/// ```
/// #[derive(schemars::JsonSchema)]
/// #[allow(dead_code)]
/// struct P { x: f64 }
/// let s = executionkit::internals::schema::schema_for::<P>();
/// assert_eq!(s["properties"]["x"]["type"], "number");
/// ```
#[must_use]
pub fn schema_for<T: JsonSchema + ?Sized>() -> Value {
    SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// Rewrites `schema` into OpenAI's strict dialect; the flag says whether the result satisfies
/// it (an object at the root and no object that allows unknown keys).
///
/// ```
/// use serde_json::json;
/// let (s, ok) = executionkit::internals::schema::strict_schema(&json!({
///     "type": "object",
///     "properties": {"a": {"type": "integer", "format": "uint32", "default": 0}},
/// }));
/// assert!(ok);
/// assert_eq!(s, json!({"type": "object", "properties": {"a": {"type": "integer"}},
///                      "required": ["a"], "additionalProperties": false}));
/// ```
#[must_use]
pub fn strict_schema(schema: &Value) -> (Value, bool) {
    let mut out = schema.clone();
    let mut ok = true;
    if let Value::Object(root) = &mut out {
        root.remove("$schema");
        let root_is_object = root.get("type").and_then(Value::as_str) == Some("object")
            || (root.contains_key("properties") && !root.contains_key("type"));
        if !root_is_object {
            ok = false;
        }
    } else {
        ok = false;
    }
    strictify(&mut out, &mut ok);
    (out, ok)
}

fn strictify(schema: &mut Value, ok: &mut bool) {
    let Value::Object(m) = schema else {
        return;
    };
    m.remove("default");
    if let Some(Value::String(f)) = m.get("format") {
        if !STRICT_FORMATS.contains(&f.as_str()) {
            m.remove("format");
        }
    }
    if let Some(one_of) = m.remove("oneOf") {
        m.insert("anyOf".to_owned(), one_of);
    }
    let is_object = type_includes(m, "object") || m.contains_key("properties");
    if is_object {
        let has_properties = m.get("properties").is_some_and(Value::is_object);
        let closed = matches!(
            m.get("additionalProperties"),
            None | Some(Value::Bool(false))
        );
        // An open map (`additionalProperties` a schema or `true`, or an object with no
        // properties at all) has no strict form: leave it and report it.
        if !has_properties && !matches!(m.get("additionalProperties"), Some(Value::Bool(false)))
            || !closed
            || m.contains_key("patternProperties")
        {
            *ok = false;
        } else {
            let keys: Vec<Value> = m
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().map(Value::String).collect())
                .unwrap_or_default();
            m.insert("additionalProperties".to_owned(), Value::Bool(false));
            m.insert("required".to_owned(), Value::Array(keys));
        }
    }
    for key in ["properties", "$defs", "definitions", "patternProperties"] {
        if let Some(Value::Object(children)) = m.get_mut(key) {
            children.values_mut().for_each(|c| strictify(c, ok));
        }
    }
    for key in ["anyOf", "allOf", "prefixItems"] {
        if let Some(Value::Array(children)) = m.get_mut(key) {
            children.iter_mut().for_each(|c| strictify(c, ok));
        }
    }
    for key in [
        "items",
        "additionalProperties",
        "not",
        "if",
        "then",
        "else",
        "contains",
    ] {
        if let Some(child) = m.get_mut(key) {
            strictify(child, ok);
        }
    }
}

fn type_includes(m: &Map<String, Value>, ty: &str) -> bool {
    match m.get("type") {
        Some(Value::String(t)) => t == ty,
        Some(Value::Array(ts)) => ts.iter().any(|t| t.as_str() == Some(ty)),
        _ => false,
    }
}

/// `[A-Za-z0-9_-]`, at most 64 chars, never empty.
fn sanitize_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() { "output".to_owned() } else { s }
}

/// `text` cut to [`MAX_ERROR_CHARS`] characters (with `…`).
fn bounded(text: &str) -> String {
    cut_with(text, MAX_ERROR_CHARS, "…").into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Inner {
        tag: String,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    enum Shape {
        Circle { r: f64 },
        Square(f64),
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Outer {
        count: u32,
        inner: Inner,
        list: Vec<Inner>,
        maybe: Option<Inner>,
        shape: Shape,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Tree {
        children: Vec<Tree>,
    }

    fn all_objects_strict(v: &Value) {
        if let Value::Object(m) = v {
            if m.contains_key("properties") {
                assert_eq!(m["additionalProperties"], false, "{v}");
                let props: Vec<&String> = m["properties"].as_object().unwrap().keys().collect();
                let req: Vec<&str> = m["required"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap())
                    .collect();
                assert_eq!(props.len(), req.len());
            }
            assert!(!m.contains_key("oneOf"));
            m.values().for_each(all_objects_strict);
        } else if let Value::Array(a) = v {
            a.iter().for_each(all_objects_strict);
        }
    }

    #[test]
    fn nested_types_become_strict_everywhere() {
        let s = OutputSchema::of::<Outer>().unwrap();
        assert!(s.is_strict_compatible(), "{}", s.strict_schema());
        all_objects_strict(s.strict_schema());
        assert!(s.strict_schema().get("$schema").is_none());
        // The validation schema still lets an Option be absent.
        let ok = json!({"count": 1, "inner": {"tag": "a"}, "list": [], "shape": {"Square": 2.0}});
        assert!(s.validate(&ok).is_ok());
        let bad = json!({"count": -1, "inner": {}, "list": [], "shape": "Triangle"});
        let err = s.validate(&bad).unwrap_err();
        assert!(err.contains("/count"), "{err}");
    }

    #[test]
    fn recursive_types_keep_defs() {
        let s = OutputSchema::of::<Tree>().unwrap();
        assert!(s.is_strict_compatible());
        all_objects_strict(s.strict_schema());
        assert!(s.validate(&json!({"children": [{"children": []}]})).is_ok());
        assert!(s.validate(&json!({"children": [{"kids": []}]})).is_err());
    }

    #[test]
    fn maps_are_not_strict_compatible() {
        let s = OutputSchema::of::<std::collections::HashMap<String, i32>>().unwrap();
        assert!(!s.is_strict_compatible());
        assert_eq!(s.response_format()["json_schema"]["strict"], false);
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(sanitize_name("Vec<Foo>"), "Vec_Foo_");
        assert_eq!(sanitize_name(""), "output");
        assert_eq!(sanitize_name(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn error_messages_are_bounded() {
        let s = OutputSchema::from_value("s", json!({"type": "integer"})).unwrap();
        let err = s.validate(&json!("y".repeat(10_000))).unwrap_err();
        assert!(err.chars().count() < 400, "{}", err.len());
    }
}
