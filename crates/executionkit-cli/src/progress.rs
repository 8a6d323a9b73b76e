//! The live progress bar on stderr: calls made, calls in flight, tokens, budget left. Fed by the
//! run's events; only ever created when stderr is a terminal.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use executionkit::events::{Event, Remaining};
use executionkit::{Budget, TokenUsage};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::secrets::Secrets;

/// What the bar shows besides its position.
#[derive(Default)]
struct State {
    in_flight: u64,
    spent: TokenUsage,
    remaining: Remaining,
    /// Cleared for good: the answer is being printed on the terminal.
    hidden: bool,
}

/// A progress bar bound to one run. Its position is the number of calls made (every attempt is
/// a call, as in the budget).
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    state: Arc<Mutex<State>>,
    secrets: Secrets,
}

impl Progress {
    /// A bar sized by the call limit when there is one, else a spinner with a counter.
    pub fn new(budget: &Budget, secrets: Secrets) -> Self {
        let limit = budget.calls_limit();
        let bar = ProgressBar::with_draw_target(limit, ProgressDrawTarget::stderr());
        let template = if limit.is_some() {
            "{spinner} [{bar:20}] {pos}/{len} calls {msg}"
        } else {
            "{spinner} {pos} calls {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Self {
            bar,
            state: Arc::new(Mutex::new(State::default())),
            secrets,
        }
    }

    /// Updates the bar from one event.
    pub fn on_event(&self, event: &Event) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.hidden {
            return;
        }
        match event {
            Event::CallStarted { .. } => {
                s.in_flight += 1;
                self.bar.inc(1);
            }
            Event::CallFinished {
                spent, remaining, ..
            } => {
                s.in_flight = s.in_flight.saturating_sub(1);
                s.spent = *spent;
                s.remaining = *remaining;
            }
            Event::CallFailed { .. } | Event::CallRetried { .. } => {
                s.in_flight = s.in_flight.saturating_sub(1);
            }
            _ => return,
        }
        // Numbers only today; redacted like every other line `ek` prints all the same.
        let line = describe(&s);
        self.bar.set_message(self.secrets.text(&line).into_owned());
    }

    /// Removes the bar for good: the answer is printed on the terminal as it is generated, and
    /// later events no longer draw the bar.
    pub fn hide(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .hidden = true;
        self.bar.finish_and_clear();
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `(2 in flight) tokens 120/80, left: 8 calls, 9000 out`.
fn describe(s: &State) -> String {
    let mut out = format!(
        "({} in flight) tokens {}/{}",
        s.in_flight, s.spent.input_tokens, s.spent.output_tokens
    );
    let r = &s.remaining;
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
        out.push_str(", left: ");
        out.push_str(&left.join(", "));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn describes_spend_and_what_is_left() {
        let s = State {
            in_flight: 2,
            spent: TokenUsage::new(120, 80, 3),
            remaining: Remaining {
                llm_calls: Some(17),
                output_tokens: Some(9920),
                ..Remaining::default()
            },
            hidden: false,
        };
        assert_eq!(
            describe(&s),
            "(2 in flight) tokens 120/80, left: 17 calls, 9920 out"
        );
    }

    #[test]
    fn counts_calls_and_in_flight() {
        let p = Progress {
            bar: ProgressBar::hidden(),
            state: Arc::new(Mutex::new(State::default())),
            secrets: Secrets::default(),
        };
        let started = Event::CallStarted {
            call: 1,
            attempt: 1,
            model: "m".into(),
        };
        p.on_event(&started);
        p.on_event(&started);
        p.on_event(&Event::CallFinished {
            call: 1,
            usage: TokenUsage::new(5, 2, 1),
            finish_reason: None,
            spent: TokenUsage::new(5, 2, 2),
            remaining: Remaining::default(),
            usage_over_grant: None,
        });
        assert_eq!(p.bar.position(), 2);
        assert_eq!(p.state.lock().unwrap().in_flight, 1);
        assert_eq!(p.state.lock().unwrap().spent.input_tokens, 5);
        // Hidden: events no longer move it.
        p.hide();
        p.on_event(&started);
        assert_eq!(p.bar.position(), 2);
    }
}
