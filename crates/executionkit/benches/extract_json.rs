//! `extract_json` on hostile and ordinary mebibyte replies (divan).
//!
//! `cargo bench -p executionkit --bench extract_json`. Figures go to `bench/RESULTS.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use divan::{Bencher, black_box};
use executionkit::internals::json::extract_json;
use serde_json::{Value, json};

const MIB: usize = 1 << 20;

fn main() {
    divan::main();
}

/// About one mebibyte of valid JSON: an array of small records.
fn json_mib() -> String {
    let mut items = Vec::new();
    let mut len = 2;
    let mut i = 0u64;
    while len < MIB {
        let item = json!({"id": i, "name": format!("item {i}"), "tags": ["a", "b"], "ok": true});
        len += item.to_string().len() + 1;
        items.push(item);
        i += 1;
    }
    Value::Array(items).to_string()
}

/// One mebibyte of prose with 66,000 decoy braces (no valid JSON at all), then the same with
/// a real object at the very end.
fn prose_with_decoys() -> String {
    let unit = "The model said {use the format {key: value} here] and then ";
    let mut s = String::with_capacity(MIB + unit.len());
    let mut braces = 0;
    while s.len() < MIB && braces < 66_000 {
        s.push_str(unit);
        braces += 4;
    }
    while s.len() < MIB {
        s.push_str("plain prose without any braces at all. ");
    }
    s
}

#[divan::bench(sample_count = 20)]
fn json_1mib(bencher: Bencher) {
    let text = json_mib();
    assert!(text.len() >= MIB);
    bencher
        .counter(divan::counter::BytesCount::of_str(&text))
        .bench(|| extract_json(black_box(&text)).unwrap());
}

#[divan::bench(sample_count = 20)]
fn json_1mib_in_prose(bencher: Bencher) {
    let text = format!("Here you go:\n{}\nHope that helps!", json_mib());
    bencher
        .counter(divan::counter::BytesCount::of_str(&text))
        .bench(|| extract_json(black_box(&text)).unwrap());
}

#[divan::bench(sample_count = 20)]
fn prose_1mib_66k_decoy_braces_no_json(bencher: Bencher) {
    let text = prose_with_decoys();
    assert!(text.matches(['{', '}', '[', ']']).count() >= 66_000);
    bencher
        .counter(divan::counter::BytesCount::of_str(&text))
        .bench(|| extract_json(black_box(&text)).unwrap_err());
}

#[divan::bench(sample_count = 20)]
fn prose_1mib_66k_decoy_braces_then_object(bencher: Bencher) {
    let text = format!("{}{{\"answer\": 42}}", prose_with_decoys());
    bencher
        .counter(divan::counter::BytesCount::of_str(&text))
        .bench(|| extract_json(black_box(&text)).unwrap());
}

#[divan::bench(sample_count = 20)]
fn braces_1mib_all_openers(bencher: Bencher) {
    let text = "{".repeat(MIB);
    bencher
        .counter(divan::counter::BytesCount::of_str(&text))
        .bench(|| extract_json(black_box(&text)).unwrap_err());
}
