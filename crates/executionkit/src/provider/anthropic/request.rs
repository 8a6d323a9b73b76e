//! The request: a [`ChatRequest`] as a Messages API body (system text, alternating roles,
//! `tool_use` and `tool_result` blocks, tools and tool choice).

use serde_json::{Map, Value, json};

use super::Inner;
use crate::error::{Error, Result};
use crate::provider::{ChatRequest, Message, Role, ToolCall, ToolChoice};

/// The content blocks of one wire message being built.
struct WireMessage {
    role: &'static str,
    blocks: Vec<Value>,
}

impl WireMessage {
    /// `{"role", "content"}`: one text block is sent as a plain string.
    fn into_json(self) -> Value {
        let content = match <[Value; 1]>::try_from(self.blocks) {
            Ok([block])
                if block["type"] == "text" && block.as_object().map(Map::len) == Some(2) =>
            {
                block["text"].clone()
            }
            Ok([block]) => Value::Array(vec![block]),
            Err(blocks) => Value::Array(blocks),
        };
        json!({"role": self.role, "content": content})
    }
}

/// The blocks `m` contributes, and the role it speaks in on the wire.
fn blocks_of(m: &Message) -> (&'static str, Vec<Value>) {
    let text = |t: &str| json!({"type": "text", "text": t});
    match m.role {
        Role::User | Role::System => {
            let blocks = if m.content.is_empty() {
                Vec::new()
            } else {
                vec![text(&m.content)]
            };
            ("user", blocks)
        }
        Role::Assistant => {
            let mut blocks = Vec::with_capacity(1 + m.tool_calls.len());
            if !m.content.is_empty() {
                blocks.push(text(&m.content));
            }
            blocks.extend(m.tool_calls.iter().map(tool_use_block));
            ("assistant", blocks)
        }
        Role::Tool => (
            "user",
            vec![json!({
                "type": "tool_result",
                "tool_use_id": m.tool_call_id.as_deref().unwrap_or(""),
                "content": m.content,
            })],
        ),
    }
}

fn tool_use_block(call: &ToolCall) -> Value {
    json!({
        "type": "tool_use",
        "id": call.id,
        "name": call.name,
        "input": Value::Object(call.arguments.clone()),
    })
}

/// `system` (joined system messages, if any) and the alternating `messages`.
fn wire_messages(messages: &[Message]) -> (Option<String>, Vec<Value>) {
    let mut system: Option<String> = None;
    let mut out: Vec<WireMessage> = Vec::with_capacity(messages.len());
    for m in messages {
        if m.role == Role::System {
            if !m.content.is_empty() {
                match &mut system {
                    Some(s) => {
                        s.push_str("\n\n");
                        s.push_str(&m.content);
                    }
                    None => system = Some(m.content.clone()),
                }
            }
            continue;
        }
        let (role, blocks) = blocks_of(m);
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.role == role => last.blocks.extend(blocks),
            _ => out.push(WireMessage { role, blocks }),
        }
    }
    (
        system,
        out.into_iter().map(WireMessage::into_json).collect(),
    )
}

fn tool_choice_json(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
    }
}

impl Inner {
    pub(super) fn body(&self, request: &ChatRequest, stream: bool) -> Result<Vec<u8>> {
        if let Some(n) = request.n.filter(|&n| n > 1) {
            return Err(Error::invalid_argument(
                "n",
                format!(
                    "the Anthropic Messages API returns one choice per request: n must be 1, got {n}"
                ),
            ));
        }
        let (system, messages) = wire_messages(&request.messages);
        let mut body = Map::new();
        body.insert(
            "model".into(),
            request.model.as_deref().unwrap_or(&self.model).into(),
        );
        body.insert(
            "max_tokens".into(),
            request.max_tokens.unwrap_or(self.default_max_tokens).into(),
        );
        if let Some(s) = system {
            body.insert("system".into(), s.into());
        }
        body.insert("messages".into(), Value::Array(messages));
        if !request.tools.is_empty() {
            let tools = request
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name,
                        "description": t.description,
                        "input_schema": t.parameters,
                    })
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
            if let Some(choice) = &request.tool_choice {
                body.insert("tool_choice".into(), tool_choice_json(choice));
            }
        }
        body.insert(
            "temperature".into(),
            request
                .temperature
                .unwrap_or(self.default_temperature)
                .into(),
        );
        if let Some(p) = request.top_p {
            body.insert("top_p".into(), p.into());
        }
        if !request.stop.is_empty() {
            body.insert("stop_sequences".into(), request.stop.clone().into());
        }
        if stream {
            body.insert("stream".into(), true.into());
        }
        for (k, v) in &request.extra {
            body.insert(k.clone(), v.clone());
        }
        serde_json::to_vec(&body).map_err(|e| {
            Error::invalid_argument(
                "request",
                format!("the request could not be encoded as JSON: {e}"),
            )
        })
    }
}
