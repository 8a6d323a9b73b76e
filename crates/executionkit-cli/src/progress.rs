//! The live progress bar on stderr: calls done, tokens, budget left. Fed by the run's events;
//! only ever created when stderr is a terminal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use executionkit::events::{Event, Remaining};
use executionkit::{Budget, TokenUsage};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar bound to one run.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    in_flight: Arc<AtomicU64>,
}

impl Progress {
    /// A bar sized by the call limit when there is one, else a spinner.
    pub fn new(budget: &Budget) -> Self {
        let bar = match budget.calls_limit() {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        };
        let template = if budget.calls_limit().is_some() {
            "{spinner} [{bar:24}] {pos}/{len} calls  {msg}"
        } else {
            "{spinner} {pos} calls  {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Self {
            bar,
            in_flight: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Updates the bar from one event.
    pub fn on_event(&self, event: &Event) {
        match event {
            Event::CallStarted { .. } => {
                self.in_flight.fetch_add(1, Ordering::Relaxed);
                self.bar.set_message(self.describe(None, None));
            }
            Event::CallFinished {
                spent, remaining, ..
            } => {
                self.done_one();
                self.bar.set_position(spent.llm_calls);
                self.bar
                    .set_message(self.describe(Some(spent), Some(remaining)));
            }
            Event::CallFailed { .. } | Event::CallRetried { .. } => {
                self.done_one();
                self.bar.inc(1);
            }
            _ => {}
        }
    }

    fn done_one(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    fn describe(&self, spent: Option<&TokenUsage>, remaining: Option<&Remaining>) -> String {
        let mut s = format!("{} in flight", self.in_flight.load(Ordering::Relaxed));
        if let Some(spent) = spent {
            s.push_str(&format!(
                "  tokens {} in / {} out",
                spent.input_tokens, spent.output_tokens
            ));
        }
        if let Some(r) = remaining {
            let mut left = Vec::new();
            if let Some(n) = r.llm_calls {
                left.push(format!("{n} calls"));
            }
            if let Some(n) = r.input_tokens {
                left.push(format!("{n} in"));
            }
            if let Some(n) = r.output_tokens {
                left.push(format!("{n} out"));
            }
            if let Some(usd) = r.usd {
                left.push(format!("${usd:.4}"));
            }
            if !left.is_empty() {
                s.push_str(&format!("  left: {}", left.join(", ")));
            }
        }
        s
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
