//! Tool-call delta assembly for [`StreamAccumulator`](super::StreamAccumulator): each delta
//! finds its call by `index` in O(1); a repeated id or name is not duplicated, a name fragment
//! is appended; every call and the number of calls are bounded by [`StreamLimits`]. The calls
//! are decoded at the end as a whole reply's are.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{StreamLimits, limit_err};
use crate::error::Result;
use crate::provider::parse::parse_tool_calls;
use crate::provider::{StreamEvent, ToolCall};

/// A tool call being assembled from deltas.
#[derive(Debug, Clone, Default, PartialEq)]
struct PartialToolCall {
    index: u32,
    id: String,
    name: String,
    arguments: String,
}

/// The tool calls of one stream (choice 0), as their deltas arrive.
#[derive(Debug, Clone, Default)]
pub(super) struct ToolCalls {
    calls: Vec<PartialToolCall>,
    /// Where each tool call's `index` is in `calls`.
    slots: HashMap<u32, usize>,
}

impl ToolCalls {
    /// Adds one tool-call delta (the `position`-th of its chunk) to the call with its `index`
    /// (found in O(1)), pushing what it adds onto `out`.
    pub(super) fn push(
        &mut self,
        call: &Map<String, Value>,
        position: usize,
        limits: &StreamLimits,
        out: &mut Vec<StreamEvent>,
    ) -> Result<()> {
        let index = call
            .get("index")
            .and_then(Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX));
        let slot = match self.slots.get(&index) {
            Some(&i) => i,
            None => {
                if self.calls.len() >= limits.max_tool_calls {
                    return Err(limit_err(
                        "the number of tool calls",
                        limits.max_tool_calls,
                        "calls",
                        "max_tool_calls",
                    ));
                }
                self.calls.push(PartialToolCall {
                    index,
                    ..PartialToolCall::default()
                });
                self.slots.insert(index, self.calls.len() - 1);
                self.calls.len() - 1
            }
        };
        let max_call = limits.max_tool_call_bytes;
        let Some(acc) = self.calls.get_mut(slot) else {
            return Ok(());
        };
        let mut new_id = None;
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            if !id.is_empty() && id != acc.id {
                id.clone_into(&mut acc.id);
                new_id = Some(acc.id.clone());
            }
        }
        let function = match call.get("function") {
            Some(Value::Object(f)) => Some(f),
            _ => None,
        };
        let mut new_name = None;
        if let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) {
            // A repeated (or extended) full name replaces; a fragment is appended.
            if !name.is_empty() && name != acc.name {
                if name.starts_with(acc.name.as_str()) {
                    name.clone_into(&mut acc.name);
                } else {
                    acc.name.push_str(name);
                }
                new_name = Some(acc.name.clone());
            }
        }
        let arguments = match function.and_then(|f| f.get("arguments")) {
            Some(Value::String(a)) => a.clone(),
            Some(Value::Object(o)) => Value::Object(o.clone()).to_string(),
            _ => String::new(),
        };
        if acc.name.len() + acc.arguments.len() + arguments.len() > max_call {
            return Err(limit_err(
                &format!("tool call {index} (its name and arguments)"),
                max_call,
                "bytes",
                "max_tool_call_bytes",
            ));
        }
        acc.arguments.push_str(&arguments);
        if new_id.is_some() || new_name.is_some() || !arguments.is_empty() {
            out.push(StreamEvent::ToolCallDelta {
                index,
                id: new_id,
                name: new_name,
                arguments,
            });
        }
        Ok(())
    }

    /// The calls in `index` order, decoded as a whole reply's are (a missing name is a
    /// `provider` error; arguments that are not a JSON object leave `arguments` empty with
    /// [`ToolCall::arguments_error`] set).
    pub(super) fn finish(self) -> Result<Vec<ToolCall>> {
        if self.calls.is_empty() {
            return Ok(Vec::new());
        }
        let mut partial = self.calls;
        partial.sort_by_key(|c| c.index);
        let wire: Vec<Value> = partial
            .into_iter()
            .map(|c| {
                let arguments = if c.arguments.trim().is_empty() {
                    Value::Null
                } else {
                    Value::String(c.arguments)
                };
                serde_json::json!({
                    "id": c.id,
                    "function": {"name": c.name, "arguments": arguments},
                })
            })
            .collect();
        parse_tool_calls(Some(&Value::Array(wire)))
    }
}
