//! What the loop sends of a long transcript: [`trim_history`] keeps the first message and the
//! newest whole blocks, and an optional summarizer stands in for what was dropped.

use std::collections::HashMap;

use futures::future::BoxFuture;

use super::{Counters, ReactLoop};
use crate::engine::CostTracker;
use crate::error::{Error, Result};
use crate::provider::{Message, Role};
use crate::usage::TokenUsage;

/// The prefix of the system message that carries a summary of trimmed history.
///
/// ```
/// use executionkit::{Message, MockProvider, RunContext};
/// use executionkit::{ReactLoop, internals::patterns::SUMMARY_PREFIX};
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["ok"]);
/// let history: Vec<Message> = (0..6)
///     .map(|i| if i % 2 == 0 { Message::user(format!("q{i}")) } else { Message::assistant("a") })
///     .chain([Message::user("last")])
///     .collect();
/// let l = ReactLoop::new()
///     .max_history_messages(3)
///     .summarizer(|dropped| async move { Ok::<_, executionkit::Error>(format!("{} dropped", dropped.len())) });
/// l.run_messages(&p, history, &RunContext::new()).await.unwrap();
/// let sent = p.last_call().unwrap().request.messages;
/// assert!(sent.iter().any(|m| m.content.starts_with(SUMMARY_PREFIX)));
/// # });
/// ```
pub const SUMMARY_PREFIX: &str = "Summary of earlier conversation: ";

/// What a summarizer returns: the summary text and, optionally, what producing it cost
/// (added to the loop's cost).
///
/// ```
/// use executionkit::{TokenUsage, Summary};
/// let s: Summary = "two messages about weather".into();
/// assert!(s.usage.is_none());
/// let s: Summary = ("short".to_owned(), TokenUsage::new(100, 40, 1)).into();
/// assert_eq!(s.usage.unwrap().llm_calls, 1);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The summary.
    pub text: String,
    /// Its cost, if it made calls.
    pub usage: Option<TokenUsage>,
}

impl From<String> for Summary {
    fn from(text: String) -> Self {
        Self { text, usage: None }
    }
}

impl From<&str> for Summary {
    fn from(text: &str) -> Self {
        Self::from(text.to_owned())
    }
}

impl From<(String, TokenUsage)> for Summary {
    fn from((text, usage): (String, TokenUsage)) -> Self {
        Self {
            text,
            usage: Some(usage),
        }
    }
}

impl From<(&str, TokenUsage)> for Summary {
    fn from((text, usage): (&str, TokenUsage)) -> Self {
        Self::from((text.to_owned(), usage))
    }
}

pub(super) type SummarizerFn =
    dyn Fn(Vec<Message>) -> BoxFuture<'static, Result<Summary>> + Send + Sync;

impl ReactLoop {
    /// The messages sent this round: trimmed, with a summary of what was dropped. A summary is
    /// asked for once per boundary (`summaries` remembers it), so rounds that drop the same
    /// messages do not pay again.
    pub(super) async fn window(
        &self,
        history: &[Message],
        tracker: &CostTracker,
        counters: &mut Counters,
        summaries: &mut HashMap<usize, String>,
    ) -> Result<Vec<Message>> {
        let Some(max) = self.max_history_messages else {
            return Ok(history.to_vec());
        };
        let mut window = trim_history(history, max)?;
        if window.len() >= history.len() {
            return Ok(window);
        }
        counters.messages_trimmed += 1;
        let Some(summarizer) = &self.summarizer else {
            return Ok(window);
        };
        let boundary = history.len() - (window.len() - 1);
        let text = if let Some(t) = summaries.get(&boundary) {
            t.clone()
        } else {
            let dropped = history[1..boundary].to_vec();
            let summary = summarizer(dropped).await.map_err(|e| {
                tracker
                    .over_grant()
                    .apply_to_error(e.add_cost(tracker.usage(), None))
            })?;
            if let Some(u) = summary.usage {
                tracker.add_usage(u, None);
            }
            summaries.insert(boundary, summary.text.clone());
            summary.text
        };
        counters.summarized += 1;
        window.insert(1, Message::system(format!("{SUMMARY_PREFIX}{text}")));
        Ok(window)
    }
}

/// Trims a transcript to about `max` messages, keeping `history[0]` and the newest whole
/// blocks: an assistant turn with tool calls and the tool messages after it form one block,
/// which is never split; every other message is a block of its own.
///
/// Walking from the newest block back, blocks are kept while they fit in `max − 1`; the newest
/// block is **always** kept, even when it alone is larger (so the model never loses the results
/// it just asked for). A history of at most `max` messages is returned unchanged.
///
/// ```
/// use executionkit::{Message, ToolCall, internals::patterns::trim_history};
/// let call = |id: &str| ToolCall::new(id, "f", serde_json::json!({}));
/// let h = vec![
///     Message::user("q"),
///     Message::assistant_tool_calls("", vec![call("a"), call("b"), call("c")]),
///     Message::tool_result("a", "1"),
///     Message::tool_result("b", "2"),
///     Message::tool_result("c", "3"),
/// ];
/// assert_eq!(trim_history(&h, 3).unwrap().len(), 5); // the newest block is never dropped
/// let plain: Vec<Message> = (0..6).map(|i| Message::user(i.to_string())).collect();
/// let t = trim_history(&plain, 3).unwrap();
/// assert_eq!(t.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["0", "4", "5"]);
/// ```
///
/// # Errors
/// `invalid_argument` when `max` is 0.
pub fn trim_history(history: &[Message], max: usize) -> Result<Vec<Message>> {
    if max < 1 {
        return Err(Error::invalid_argument(
            "max_messages",
            "max_messages must be >= 1, got 0",
        ));
    }
    if history.len() <= max {
        return Ok(history.to_vec());
    }
    // Block boundaries over history[1..], as (start, end) index pairs.
    let mut blocks: Vec<(usize, usize)> = Vec::new();
    let mut i = 1;
    while i < history.len() {
        let start = i;
        i += 1;
        if history[start].role == Role::Assistant && !history[start].tool_calls.is_empty() {
            while i < history.len() && history[i].role == Role::Tool {
                i += 1;
            }
        }
        blocks.push((start, i));
    }
    let budget = max - 1;
    let mut kept = 0;
    let mut first_kept = history.len();
    for (n, &(start, end)) in blocks.iter().rev().enumerate() {
        let size = end - start;
        if n > 0 && kept + size > budget {
            break;
        }
        kept += size;
        first_kept = start;
    }
    let mut out = Vec::with_capacity(1 + kept);
    out.push(history[0].clone());
    out.extend_from_slice(&history[first_kept..]);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn summaries_are_memoised_per_boundary() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let r =
            ReactLoop::new()
                .max_history_messages(3)
                .summarizer(move |dropped: Vec<Message>| {
                    c.fetch_add(1, Ordering::SeqCst);
                    async move {
                        Ok::<_, Error>((
                            format!("{} msgs", dropped.len()),
                            TokenUsage::new(70, 30, 1),
                        ))
                    }
                });
        let history: Vec<Message> = (0..6).map(|i| Message::user(i.to_string())).collect();
        let tracker = CostTracker::new();
        let mut counters = Counters::default();
        let mut memo = HashMap::new();
        let a = r
            .window(&history, &tracker, &mut counters, &mut memo)
            .await
            .unwrap_or_default();
        let b = r
            .window(&history, &tracker, &mut counters, &mut memo)
            .await
            .unwrap_or_default();
        assert_eq!(a, b);
        assert_eq!(a[1].content, "Summary of earlier conversation: 3 msgs");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(tracker.usage(), TokenUsage::new(70, 30, 1));
        assert_eq!((counters.summarized, counters.messages_trimmed), (2, 2));
    }
}
