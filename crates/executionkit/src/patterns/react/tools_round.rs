//! One round of tool calls: the per-round cap, concurrency, events, the approval gate, and the
//! observation each call gives the model. Nothing here fails the loop except cancellation.

use std::collections::HashMap;

use futures::{FutureExt, StreamExt};
use serde_json::{Map, Value};

use super::ReactLoop;
use crate::approval::ApprovalRequest;
use crate::engine::RunContext;
use crate::error::{Error, ErrorKind, Result};
use crate::events::Event;
use crate::provider::ToolCall;
use crate::tools::{Observation, ObservationKind, Tool};

/// The `tool` message one call gives the model.
pub(super) struct ToolReply {
    pub(super) tool_call_id: String,
    pub(super) text: String,
    /// False for a call over the per-round cap (it counts as rejected, not made).
    pub(super) counted: bool,
}

impl ReactLoop {
    /// Executes one round; returns one reply per call, in request order. Fails only when
    /// cancelled.
    pub(super) async fn run_round(
        &self,
        calls: &[ToolCall],
        tools: &HashMap<&str, &Tool>,
        ctx: &RunContext,
    ) -> Result<Vec<ToolReply>> {
        let cap = self.max_tool_calls_per_round.min(calls.len());
        let (executed, rejected) = calls.split_at(cap);
        let mut pending = Vec::with_capacity(executed.len());
        for c in executed {
            let tool = tools.get(c.name.as_str()).copied();
            pending.push(self.execute_call(c, tool, ctx));
        }
        let outcomes: Vec<Result<Observation>> = futures::stream::iter(pending)
            .buffered(self.tool_concurrency)
            .collect()
            .await;
        let mut out = Vec::with_capacity(calls.len());
        for (call, obs) in executed.iter().zip(outcomes) {
            out.push(ToolReply {
                tool_call_id: call.id.clone(),
                text: obs?.text,
                counted: true,
            });
        }
        for call in rejected {
            out.push(ToolReply {
                tool_call_id: call.id.clone(),
                text: format!(
                    "Tool call rejected: this round requested {} tool calls, over the limit \
                     of {} per round. Call at most {} tools per round and retry the rest.",
                    calls.len(),
                    self.max_tool_calls_per_round,
                    self.max_tool_calls_per_round
                ),
                counted: false,
            });
        }
        Ok(out)
    }

    /// One call: event, approval, execution, event. Fails only when cancelled.
    async fn execute_call(
        &self,
        call: &ToolCall,
        tool: Option<&Tool>,
        ctx: &RunContext,
    ) -> Result<Observation> {
        let name = quoted(&call.name);
        if let Some(sink) = ctx.events() {
            let arguments: Map<String, Value> = if self.redact_tool_args {
                call.arguments
                    .keys()
                    .map(|k| (k.clone(), Value::from("[redacted]")))
                    .collect()
            } else {
                call.arguments.clone()
            };
            sink.emit(&Event::ToolCallStarted {
                tool_name: call.name.clone(),
                tool_call_id: call.id.clone(),
                arguments,
            });
        }
        let mut blocked = false;
        // Arguments the server sent unusable (not JSON, not an object): the tool never runs and
        // the gate is not asked; the model is told why, never shown the argument text.
        let mut obs = match (&call.arguments_error, tool) {
            (Some(reason), Some(_)) => Some(Observation::new(
                ObservationKind::ArgumentError,
                format!(
                    "Error: invalid arguments for tool '{name}': {}",
                    crate::redact::redact(crate::text::prefix(reason, 200))
                ),
            )),
            _ => None,
        };
        if obs.is_none() {
            if let Some(o) = self.ask_gate(call, &name, ctx).await? {
                blocked = o.kind == ObservationKind::Blocked;
                obs = Some(o);
            }
        }
        let obs = match (obs, tool) {
            (Some(o), _) => o,
            (None, None) => Observation::new(
                ObservationKind::UnknownTool,
                format!("Error: Unknown tool '{name}'"),
            ),
            (None, Some(t)) => {
                t.observe(
                    &call.arguments,
                    self.tool_timeout,
                    self.max_observation_chars,
                )
                .await
            }
        };
        if let Some(sink) = ctx.events() {
            sink.emit(&Event::ToolCallFinished {
                tool_name: call.name.clone(),
                tool_call_id: call.id.clone(),
                blocked,
            });
        }
        Ok(obs)
    }

    /// Asks the approval gate, if any: `None` when the call may run, else what the model is
    /// told instead. Fails only when cancelled.
    async fn ask_gate(
        &self,
        call: &ToolCall,
        name: &str,
        ctx: &RunContext,
    ) -> Result<Option<Observation>> {
        let Some(gate) = &self.approval_gate else {
            return Ok(None);
        };
        crate::approval::observe_request(ctx, "tool_call", &call.name);
        let req = ApprovalRequest::new("tool_call", call.name.clone())
            .with_metadata("tool_call_id", call.id.clone())
            .with_metadata("arguments", Value::Object(call.arguments.clone()));
        // A panicking gate is one more failure of this call, not of the loop.
        let asked = std::panic::AssertUnwindSafe(gate.request(req))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::ApprovalDenied,
                    "the approval callback panicked",
                ))
            });
        crate::approval::observe_outcome(ctx, "tool_call", &call.name, &asked);
        match asked {
            Ok(d) if d.approved => Ok(None),
            Ok(d) => {
                let mut text = format!("Tool '{name}' blocked by approval");
                if !d.reason.is_empty() {
                    text.push_str(": ");
                    text.push_str(&d.reason);
                }
                Ok(Some(Observation::new(ObservationKind::Blocked, text)))
            }
            Err(e) if e.is_cancelled() => Err(e),
            Err(e) => {
                tracing::debug!(target: "executionkit", tool = %name, kind = %e.kind(), "approval gate failed");
                Ok(Some(Observation::new(
                    ObservationKind::Failed,
                    format!("Tool '{name}' failed: approval {}", e.kind()),
                )))
            }
        }
    }
}

/// A model-supplied name, cut to 100 characters before it is quoted back.
fn quoted(name: &str) -> String {
    crate::text::cut_with(name, 100, "…").into_owned()
}
