//! Voting over 1,000,000 short responses (divan): whitespace normalisation plus the majority
//! tally, as `Consensus` does it, and the tally alone over precomputed keys.
//!
//! `cargo bench -p executionkit --bench voting`. Figures go to `bench/RESULTS.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use executionkit::VotingStrategy;
use executionkit::internals::voting::{normalize, tally, tally_keys};

const N: usize = 1_000_000;

fn main() {
    divan::main();
}

/// One million short replies: a few answers with whitespace variants, and a long tail of
/// distinct ones (every 50th reply is unique), as a hot sampling temperature gives.
fn responses() -> Vec<String> {
    const COMMON: [&str; 8] = [
        "Paris",
        " Paris",
        "Paris\n",
        "Paris  is the capital",
        "Lyon",
        "Marseille",
        "paris",
        "The capital is Paris.",
    ];
    (0..N)
        .map(|i| {
            if i % 50 == 49 {
                format!("answer number {i}")
            } else {
                COMMON[i % COMMON.len()].to_owned()
            }
        })
        .collect()
}

/// Normalise every reply and tally them (what a consensus run does after its samples).
#[divan::bench(sample_count = 20)]
fn normalize_and_tally_1m(bencher: Bencher) {
    let texts = responses();
    bencher.counter(ItemsCount::new(N)).bench_local(|| {
        let t = tally(black_box(&texts), VotingStrategy::Majority).unwrap();
        black_box(t)
    });
}

/// The tally alone over keys already normalised.
#[divan::bench(sample_count = 20)]
fn tally_keys_1m(bencher: Bencher) {
    let keys: Vec<String> = responses().iter().map(|t| normalize(t)).collect();
    bencher.counter(ItemsCount::new(N)).bench_local(|| {
        let t = tally_keys(black_box(&keys), VotingStrategy::Majority).unwrap();
        black_box(t)
    });
}

/// A unanimous vote that fails (a distinct reply at the very end).
#[divan::bench(sample_count = 20)]
fn unanimous_split_1m(bencher: Bencher) {
    let mut keys = vec!["Paris".to_owned(); N];
    keys[N - 1] = "Lyon".to_owned();
    bencher.counter(ItemsCount::new(N)).bench_local(|| {
        let e = tally_keys(black_box(&keys), VotingStrategy::Unanimous).unwrap_err();
        black_box(e)
    });
}
