//! The ledger's limits, nesting and waiting, and the tracker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::FutureExt;
use futures::executor::block_on;

use super::*;
use crate::usage::UsageOverGrant;

fn ledger(b: Budget) -> Arc<BudgetLedger> {
    Arc::new(BudgetLedger::new(b))
}

fn usage(input_tokens: u64, output_tokens: u64) -> Usage {
    Usage {
        input_tokens,
        output_tokens,
        ..Usage::default()
    }
}

/// A reservation that must resolve at once (no waiting for returns).
fn reserve_now(l: &Arc<BudgetLedger>, max_tokens: u64, retry: bool) -> Result<Reservation> {
    l.reserve("m", max_tokens, retry)
        .now_or_never()
        .expect("the reservation waited instead of answering at once")
}

fn exhausted_field(r: Result<Reservation>) -> String {
    let e = r.unwrap_err();
    assert!(e.is_budget_exhausted(), "{e:?}");
    e.metadata()["exhausted"].as_str().unwrap().to_owned()
}

#[test]
fn usage_over_the_grant_is_recorded_as_reported() {
    let l = ledger(Budget::new().max_output_tokens(10));
    let r = reserve_now(&l, 64, false).unwrap();
    assert_eq!(r.max_tokens(), 10);
    r.settle(usage(7, 25));
    assert_eq!(l.spent(), TokenUsage::new(7, 25, 1));
    assert_eq!(l.remaining().output_tokens, Some(0));
}

#[test]
fn usd_over_the_reservation_is_recorded_as_reported() {
    let b = Budget::new()
        .default_price(CostRates::new(0.0, 1.0).unwrap())
        .max_usd(1.0);
    let l = ledger(b);
    let r = reserve_now(&l, 100_000, false).unwrap();
    // 100k tokens reserved ($0.10); the server reports 3M ($3).
    let usd = r.settle(usage(0, 3_000_000));
    assert!((usd - 3.0).abs() < 1e-9);
    assert_eq!(l.spent_usd().map(|u| (u * 1e6).round()), Some(3e6));
    assert_eq!(l.remaining().usd, Some(0.0));
}

#[test]
fn cached_input_is_priced_at_the_cache_rates_and_recorded() {
    let rates = CostRates::new(10.0, 0.0)
        .unwrap()
        .with_cache_read(1.0)
        .unwrap()
        .with_cache_write(20.0)
        .unwrap();
    let l = ledger(Budget::new().default_price(rates).max_usd(100.0));
    let cached = Usage {
        input_tokens: 1_000_000,
        output_tokens: 10,
        cache_read_input_tokens: 500_000,
        cache_write_input_tokens: 250_000,
        reasoning_tokens: 4,
    };
    let usd = reserve_now(&l, 10, false).unwrap().settle(cached);
    // 250k uncached at $10, 500k read at $1, 250k written at $20.
    assert!((usd - (2.5 + 0.5 + 5.0)).abs() < 1e-9, "{usd}");
    assert_eq!(
        l.spent(),
        TokenUsage::new(1_000_000, 10, 1)
            .with_cache(500_000, 250_000)
            .with_reasoning(4)
    );
    // Without cache rates the same usage costs the input rate throughout.
    let l = ledger(Budget::new().default_price(CostRates::new(10.0, 0.0).unwrap()));
    let usd = reserve_now(&l, 10, false).unwrap().settle(cached);
    assert!((usd - 10.0).abs() < 1e-9, "{usd}");
}

#[test]
fn a_passed_output_limit_refuses_at_once_even_with_calls_in_flight() {
    let l = ledger(Budget::new().max_output_tokens(100));
    let a = reserve_now(&l, 10, false).unwrap();
    let in_flight = reserve_now(&l, 10, false).unwrap();
    a.settle(usage(0, 150)); // granted 10, reported 150: 150 > 100
    // Before: 100 - 150 - 10 saturates to 0 free with a call in flight, so this waited for
    // a return that could never free anything.
    assert_eq!(exhausted_field(reserve_now(&l, 10, false)), "output_tokens");
    assert_eq!(exhausted_field(reserve_now(&l, 10, true)), "output_tokens");
    drop(in_flight);
    assert_eq!(exhausted_field(reserve_now(&l, 1, false)), "output_tokens");
    assert_eq!(l.spent().output_tokens, 150);
    assert_eq!(l.spent().llm_calls, 2);
}

#[test]
fn output_spent_to_the_limit_exactly_refuses_at_once() {
    let l = ledger(Budget::new().max_output_tokens(10));
    let a = reserve_now(&l, 5, false).unwrap();
    let _in_flight = reserve_now(&l, 5, false).unwrap();
    a.settle(usage(0, 10));
    assert_eq!(exhausted_field(reserve_now(&l, 1, false)), "output_tokens");
}

#[test]
fn a_passed_input_limit_refuses_retries_too() {
    let l = ledger(Budget::new().max_input_tokens(100));
    reserve_now(&l, 1, false).unwrap().settle(usage(100, 1));
    // At the limit exactly: a first attempt is refused, a retry still goes (as before).
    assert_eq!(exhausted_field(reserve_now(&l, 1, false)), "input_tokens");
    reserve_now(&l, 1, true).unwrap().settle(usage(20, 1));
    // Past it (the soft limit overshot): nothing more, retry or not.
    assert_eq!(l.spent().input_tokens, 120);
    assert_eq!(exhausted_field(reserve_now(&l, 1, false)), "input_tokens");
    let e = reserve_now(&l, 1, true).unwrap_err();
    assert_eq!(e.metadata()["exhausted"], "input_tokens");
    assert!(e.message().contains("before retry dispatch"), "{e}");
}

#[test]
fn a_passed_usd_limit_refuses_at_once_even_with_calls_in_flight() {
    let b = Budget::new()
        .default_price(CostRates::new(0.0, 1.0).unwrap())
        .max_usd(1.0);
    let l = ledger(b);
    let a = reserve_now(&l, 100_000, false).unwrap();
    let _in_flight = reserve_now(&l, 100_000, false).unwrap();
    a.settle(usage(0, 2_000_000)); // $2 spent against $1
    assert_eq!(exhausted_field(reserve_now(&l, 10, false)), "usd");
    assert_eq!(exhausted_field(reserve_now(&l, 10, true)), "usd");
}

#[test]
fn a_waiting_reservation_fails_when_a_return_passes_the_limit() {
    let l = ledger(Budget::new().max_output_tokens(10));
    let a = reserve_now(&l, 10, false).unwrap();
    let mut waiting = Box::pin(l.reserve("m", 5, false));
    assert!(
        (&mut waiting).now_or_never().is_none(),
        "nothing free: it waits"
    );
    a.settle(usage(0, 12));
    let e = block_on(waiting).unwrap_err();
    assert_eq!(e.metadata()["exhausted"], "output_tokens");
}

#[test]
fn within_the_limit_nothing_changes() {
    let l = ledger(Budget::new().max_output_tokens(10).max_input_tokens(50));
    reserve_now(&l, 4, false).unwrap().settle(usage(10, 4));
    let r = reserve_now(&l, 64, false).unwrap();
    assert_eq!(r.max_tokens(), 6);
}

fn child(parent: &Arc<BudgetLedger>, b: Budget) -> Arc<BudgetLedger> {
    Arc::new(BudgetLedger::child(Arc::clone(parent), b))
}

fn in_flight(l: &BudgetLedger) -> u64 {
    l.lock().in_flight
}

#[test]
fn a_nested_grant_is_the_smallest_any_level_allows() {
    let root = ledger(Budget::new().max_output_tokens(100));
    let mid = child(&root, Budget::new().max_output_tokens(7));
    let leaf = child(&mid, Budget::new().max_calls(5));
    let r = reserve_now(&leaf, 64, false).unwrap();
    assert_eq!(r.max_tokens(), 7);
    assert_eq!(
        (
            root.remaining().output_tokens,
            mid.remaining().output_tokens
        ),
        (Some(93), Some(0))
    );
    assert_eq!(leaf.remaining().output_tokens, Some(0));
    r.settle(usage(3, 2));
    for l in [&root, &mid, &leaf] {
        assert_eq!(l.spent(), TokenUsage::new(3, 2, 1));
        assert_eq!(in_flight(l), 0);
    }
    assert_eq!(root.remaining().output_tokens, Some(98));
}

#[test]
fn a_refusal_at_any_level_takes_nothing_anywhere() {
    let root = ledger(Budget::new().max_calls(1));
    let leaf = child(&root, Budget::new().max_calls(5));
    reserve_now(&leaf, 4, false).unwrap().settle(usage(1, 1));
    let e = reserve_now(&leaf, 4, false).unwrap_err();
    assert_eq!(e.metadata()["exhausted"], "llm_calls");
    assert_eq!(e.metadata()["budget_level"], 1);
    assert_eq!(e.metadata()["budget"]["llm_calls"], 1);
    assert!(e.message().contains("enclosing"), "{e}");
    assert_eq!(
        leaf.spent().llm_calls,
        1,
        "the refused call is not counted below"
    );
    assert_eq!((in_flight(&root), in_flight(&leaf)), (0, 0));

    // Refused by the inner level: the outer one is untouched.
    let root = ledger(Budget::new().max_calls(10));
    let leaf = child(&root, Budget::new().max_calls(1));
    reserve_now(&leaf, 4, false).unwrap().settle(usage(1, 1));
    let e = reserve_now(&leaf, 4, false).unwrap_err();
    assert_eq!(e.metadata()["budget_level"], 0);
    assert!(!e.message().contains("enclosing"), "{e}");
    assert_eq!(root.spent().llm_calls, 1);
    // A ledger without a parent keeps its errors as they were.
    let e = reserve_now(&ledger(Budget::new().max_calls(0)), 1, false).unwrap_err();
    assert!(e.metadata().get("budget_level").is_none());
}

#[test]
fn a_dropped_nested_reservation_returns_at_every_level() {
    let root = ledger(Budget::new().max_output_tokens(10));
    let leaf = child(&root, Budget::new().max_output_tokens(50));
    let r = reserve_now(&leaf, 8, false).unwrap();
    assert_eq!(root.remaining().output_tokens, Some(2));
    drop(r);
    assert_eq!(root.remaining().output_tokens, Some(10));
    assert_eq!(leaf.remaining().output_tokens, Some(10)); // the root's is tighter
    assert_eq!(leaf.spent(), TokenUsage::new(0, 0, 1));
    assert_eq!((in_flight(&root), in_flight(&leaf)), (0, 0));
}

#[test]
fn a_waiter_blocked_by_an_ancestor_wakes_when_a_sibling_returns() {
    let root = ledger(Budget::new().max_output_tokens(10));
    let a = child(&root, Budget::new().max_calls(5));
    let b = child(&root, Budget::new().max_calls(5));
    let held = reserve_now(&a, 10, false).unwrap();
    let mut waiting = Box::pin(b.reserve("m", 4, false));
    assert!(
        (&mut waiting).now_or_never().is_none(),
        "the root is full: it waits"
    );
    held.settle(usage(0, 3));
    let r = block_on(waiting).unwrap();
    assert_eq!(r.max_tokens(), 4);
    assert_eq!(root.spent().llm_calls, 2);
    assert_eq!(b.spent().llm_calls, 1);
}

#[test]
fn call_numbers_are_unique_across_the_tree() {
    let root = ledger(Budget::new());
    let a = child(&root, Budget::new());
    let b = child(&a, Budget::new());
    let calls: Vec<u64> = [&root, &a, &b, &a]
        .iter()
        .map(|l| reserve_now(l, 1, false).unwrap().call())
        .collect();
    assert_eq!(calls, [1, 2, 3, 4]);
}

#[test]
fn a_child_without_prices_prices_like_its_parent() {
    let rates = CostRates::new(1.0, 2.0).unwrap();
    let root = ledger(Budget::new().default_price(rates).max_usd(10.0));
    let leaf = child(&root, Budget::new().max_calls(3));
    assert!(leaf.budget().has_prices());
    assert!(leaf.budget().usd_limit().is_none(), "prices, not limits");
    let usd = reserve_now(&leaf, 8, false)
        .unwrap()
        .settle(usage(1_000_000, 0));
    assert!((usd - 1.0).abs() < 1e-9);
    assert_eq!(root.spent_usd(), leaf.spent_usd());
    // A child with its own prices keeps them; each level counts at its own prices.
    let own = child(
        &root,
        Budget::new().default_price(CostRates::new(3.0, 0.0).unwrap()),
    );
    let usd = reserve_now(&own, 8, false)
        .unwrap()
        .settle(usage(1_000_000, 0));
    assert!((usd - 3.0).abs() < 1e-9);
    assert!((root.spent_usd().unwrap() - 2.0).abs() < 1e-9);
}

#[test]
fn the_tracker_counts_calls_over_their_grant() {
    let t = CostTracker::new();
    t.add_over_grant(0);
    t.add_over_grant(5);
    let shared = t.clone(); // clones share the counters
    shared.add_over_grant(7);
    assert_eq!(
        t.over_grant(),
        UsageOverGrant {
            calls: 2,
            output_tokens: 12
        }
    );
}
