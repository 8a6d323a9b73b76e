//! [`CheckedStream`]: the state of [`RunContext::stream`](super::RunContext::stream), one
//! attempt at a time through the budget, the retry policy and a failover chain or router (moved
//! from call.rs unchanged).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tracing::Instrument;

use super::{AfterFailure, InFlight, RunContext, llm_span};
use crate::engine::budget::CostTracker;
use crate::engine::retry::FullJitter;
use crate::error::{Error, ErrorKind, Result};
use crate::provider::wire::Probed;
use crate::provider::{ChatRequest, ChatStream, LlmProvider, Route, StreamEvent};
use crate::telemetry::ERROR_TYPE;
use crate::usage::TokenUsage;

/// One attempt of a checked stream in progress.
pub(super) struct Attempt<'t> {
    call: u64,
    in_flight: InFlight<'t>,
    inner: Probed<ChatStream>,
    span: tracing::Span,
}

/// Where a stream over a failover chain or a router stands: the entry it is on and how many
/// times that entry was tried. A stream moves to the next entry only before its first delta.
pub(super) struct StreamRoute {
    pub(super) route: Route,
    pub(super) entry: usize,
    pub(super) tries: u32,
}

impl StreamRoute {
    /// Moves past entries cooling down; `false` when none is left.
    pub(super) fn skip_cooling(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        while let Some(e) = self.route.entries.get(self.entry) {
            if e.cooling_until(now).is_none() {
                return true;
            }
            self.entry += 1;
            self.tries = 0;
        }
        false
    }

    fn current(&self) -> Option<&crate::provider::RouteEntry> {
        self.route.entries.get(self.entry)
    }
}

/// The state of [`RunContext::stream`].
pub(super) struct CheckedStream<'a> {
    pub(super) ctx: &'a RunContext,
    pub(super) provider: &'a dyn LlmProvider,
    pub(super) tracker: &'a CostTracker,
    pub(super) request: ChatRequest,
    pub(super) backoff: FullJitter,
    pub(super) attempt: u32,
    pub(super) current: Option<Attempt<'a>>,
    pub(super) delivered: bool,
    pub(super) done: bool,
    pub(super) route: Option<StreamRoute>,
}

impl CheckedStream<'_> {
    /// The provider of the current route entry (`None` without a route).
    pub(super) fn entry_provider(&self) -> Option<Arc<dyn LlmProvider>> {
        self.route
            .as_ref()
            .and_then(StreamRoute::current)
            .map(|e| Arc::clone(&e.provider))
    }

    /// Reserves and opens the next attempt (on the current route entry, if routed).
    pub(super) async fn open(&mut self) -> std::result::Result<(), (u64, Error)> {
        self.attempt += 1;
        let entry = self.route.as_ref().and_then(StreamRoute::current).cloned();
        let (provider, request): (&dyn LlmProvider, Cow<'_, ChatRequest>) = match &entry {
            Some(e) => (&*e.provider, e.request_for(&self.request)),
            None => (self.provider, Cow::Borrowed(&self.request)),
        };
        let (reservation, req) = self
            .ctx
            .reserve(provider, &request, self.tracker, self.attempt)
            .await
            .map_err(|e| (0, e))?;
        if let Some(e) = &entry {
            self.tracker
                .add_provider_cost(&e.name, TokenUsage::new(0, 0, 1));
        }
        let span = llm_span(provider, &req, self.attempt);
        let in_flight = InFlight::new(reservation, self.tracker, entry.as_ref().map(|e| &e.name));
        let inner = Probed::new(
            provider.stream(req.into_owned()),
            Arc::clone(&in_flight.probe),
        );
        self.current = Some(Attempt {
            call: in_flight.call(),
            in_flight,
            inner,
            span,
        });
        Ok(())
    }

    /// After a failure before the first delta on a routed stream: stay on the entry (its own
    /// retries, or the run's policy for a router's plain target), or move to the next one.
    /// `None`: give up with the error.
    fn next_on_route(&mut self, err: &Error) -> Option<Duration> {
        let route = self.route.as_mut()?;
        let entry = route.current()?;
        match self
            .ctx
            .after_failure(entry, err, route.tries, &mut self.backoff)
        {
            AfterFailure::Stop => return None,
            AfterFailure::Retry(d) => {
                route.tries += 1;
                return Some(d);
            }
            AfterFailure::MoveOn => {}
        }
        route.entry += 1;
        route.tries = 0;
        self.backoff = self.ctx.retry.backoff();
        route.skip_cooling().then_some(Duration::ZERO)
    }

    pub(super) async fn next_item(&mut self) -> Option<Result<StreamEvent>> {
        loop {
            if self.done {
                return None;
            }
            let cur = self.current.as_mut()?;
            let call = cur.call;
            let span = cur.span.clone();
            let err = match cur.inner.next().instrument(span).await {
                Some(Ok(StreamEvent::Finished(resp))) => {
                    self.done = true;
                    if let Some(a) = self.current.take() {
                        if let Some(reservation) = a.in_flight.done() {
                            self.ctx.finish(reservation, &resp, self.tracker, &a.span);
                        }
                    }
                    if let Some(e) = self.route.as_ref().and_then(StreamRoute::current) {
                        self.tracker
                            .add_provider_cost(&e.name, TokenUsage::from(resp.usage));
                    }
                    return Some(Ok(StreamEvent::Finished(resp)));
                }
                Some(Ok(delta)) => {
                    self.delivered = true;
                    return Some(Ok(delta));
                }
                Some(Err(e)) => e,
                None => Error::new(
                    ErrorKind::Provider,
                    "the stream ended without a final response",
                ),
            };
            if let Some(a) = self.current.take() {
                a.span.record(ERROR_TYPE, err.kind().as_str());
                a.span.record("otel.status_code", "ERROR");
                // Dropping the reservation returns its unused output tokens; the call counts.
                drop(a.in_flight.done());
            }
            let failed_on = self.entry_provider();
            let delay = if self.delivered {
                None
            } else if self.route.is_some() {
                self.next_on_route(&err)
            } else {
                self.ctx.next_delay(&err, &mut self.backoff)
            };
            let Some(delay) = delay else {
                self.done = true;
                let p = failed_on.as_deref().unwrap_or(self.provider);
                return Some(Err(self.ctx.fail(err, call, p, self.tracker)));
            };
            self.ctx.retried(call, self.attempt, delay, err.kind());
            tokio::time::sleep(delay).await;
            if let Err((call, e)) = self.open().await {
                self.done = true;
                let p = self.entry_provider();
                let p = p.as_deref().unwrap_or(self.provider);
                return Some(Err(self.ctx.fail(e, call, p, self.tracker)));
            }
        }
    }
}
