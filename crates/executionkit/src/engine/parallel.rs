//! Bounded fan-out (reference §10): run futures with at most `max_concurrency` in flight and get
//! the results back in input order.
//!
//! Cancellation is Rust's: dropping the returned future drops every future still running. Where
//! the reference raises an aggregate of several concurrent failures, [`gather_strict`] returns
//! one error (OVERRIDES.md: a fan-out fails with a single error; the caller attaches the whole
//! fan-out's spend to it).
//!
//! ```
//! use executionkit::gather_strict;
//! # futures::executor::block_on(async {
//! let squares = gather_strict((1..=4).map(|i| async move { Ok(i * i) }), 2).await.unwrap();
//! assert_eq!(squares, [1, 4, 9, 16]);
//! # });
//! ```

use std::future::Future;

use futures::StreamExt;

use crate::error::{Error, Result};

fn check(max_concurrency: usize) -> Result<()> {
    if max_concurrency < 1 {
        return Err(Error::invalid_argument(
            "max_concurrency",
            format!("max_concurrency must be >= 1, got {max_concurrency}"),
        ));
    }
    Ok(())
}

/// Runs every future, at most `max_concurrency` at a time, and returns their values in input
/// order. All or nothing: the first failure is returned and the futures still running are
/// dropped (cancelled). `max_concurrency` 0 is an `invalid_argument`, even with no futures.
///
/// ```
/// use executionkit::{Error, ErrorKind, gather_strict};
/// # futures::executor::block_on(async {
/// let tasks: Vec<futures::future::BoxFuture<'static, executionkit::Result<i32>>> = vec![
///     Box::pin(async { Ok(1) }),
///     Box::pin(async { Err(Error::new(ErrorKind::Provider, "boom")) }),
/// ];
/// assert!(gather_strict(tasks, 4).await.unwrap_err().is_provider());
/// let none: Vec<futures::future::Ready<executionkit::Result<()>>> = Vec::new();
/// assert!(gather_strict(none, 0).await.unwrap_err().is_invalid_argument());
/// # });
/// ```
pub async fn gather_strict<I, F, T>(futures: I, max_concurrency: usize) -> Result<Vec<T>>
where
    I: IntoIterator<Item = F>,
    F: Future<Output = Result<T>>,
{
    check(max_concurrency)?;
    let futures: Vec<F> = futures.into_iter().collect();
    let mut slots: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    let mut running = futures::stream::iter(futures.into_iter().enumerate())
        .map(|(i, f)| async move { (i, f.await) })
        .buffer_unordered(max_concurrency);
    while let Some((i, result)) = running.next().await {
        slots[i] = Some(result?);
    }
    Ok(slots.into_iter().flatten().collect())
}

/// Runs every future, at most `max_concurrency` at a time, and returns each one's result in
/// input order; one failure does not stop the others. `max_concurrency` 0 is an
/// `invalid_argument`. Dropping the returned future cancels them all.
///
/// ```
/// use executionkit::{Error, ErrorKind, gather_resilient};
/// # futures::executor::block_on(async {
/// let tasks: Vec<futures::future::BoxFuture<'static, executionkit::Result<i32>>> = vec![
///     Box::pin(async { Err(Error::new(ErrorKind::Timeout, "slow")) }),
///     Box::pin(async { Ok(2) }),
/// ];
/// let out = gather_resilient(tasks, 1).await.unwrap();
/// assert!(out[0].as_ref().unwrap_err().is_timeout());
/// assert_eq!(*out[1].as_ref().unwrap(), 2);
/// # });
/// ```
pub async fn gather_resilient<I, F, T>(futures: I, max_concurrency: usize) -> Result<Vec<Result<T>>>
where
    I: IntoIterator<Item = F>,
    F: Future<Output = Result<T>>,
{
    check(max_concurrency)?;
    let futures: Vec<F> = futures.into_iter().collect();
    let mut slots: Vec<Option<Result<T>>> = futures.iter().map(|_| None).collect();
    let mut running = futures::stream::iter(futures.into_iter().enumerate())
        .map(|(i, f)| async move { (i, f.await) })
        .buffer_unordered(max_concurrency);
    while let Some((i, result)) = running.next().await {
        slots[i] = Some(result);
    }
    Ok(slots.into_iter().flatten().collect())
}
