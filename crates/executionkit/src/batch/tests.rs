//! Unit tests of the batch client's pure parts and its origin rule.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::client::{batch_share, path_segment, retry_delay};
use crate::engine::BudgetLedger;
use crate::error::{Error, ErrorKind};
use crate::provider::batch_http::BatchHttp;
use crate::usage::Budget;

#[test]
fn retry_after_is_honoured_up_to_the_longest_interval() {
    let max = Duration::from_secs(60);
    let interval = Duration::from_secs(5);
    let limited = Error::rate_limited("slow down").with_retry_after(Duration::from_secs(30));
    assert_eq!(
        retry_delay(&limited, interval, max),
        Duration::from_secs(30)
    );
    let huge = Error::rate_limited("x").with_retry_after(Duration::from_secs(86_400));
    assert_eq!(retry_delay(&huge, interval, max), max);
    let broken = Error::new(ErrorKind::Transport, "reset");
    assert_eq!(retry_delay(&broken, interval, max), interval);
}

#[test]
fn the_share_of_each_entry_fits_all_entries_at_once() {
    let l = BudgetLedger::new(Budget::new().max_output_tokens(100));
    assert_eq!(batch_share(3, "m", &l).unwrap(), 33);
    let e = batch_share(101, "m", &l).unwrap_err();
    assert!(e.is_budget_exhausted() && e.metadata()["exhausted"] == "output_tokens");
    assert_eq!(
        batch_share(5, "m", &BudgetLedger::unlimited()).unwrap(),
        u32::MAX
    );
    let calls = BudgetLedger::new(Budget::new().max_calls(4));
    assert!(batch_share(4, "m", &calls).is_ok());
    assert!(
        batch_share(5, "m", &calls)
            .unwrap_err()
            .is_budget_exhausted()
    );
    // $1 at $10 per million output tokens: 100_000 tokens, 25_000 for each of 4 entries.
    let priced = BudgetLedger::new(
        Budget::new()
            .max_usd(1.0)
            .default_price(crate::usage::CostRates::new(0.0, 10.0).unwrap()),
    );
    assert_eq!(batch_share(4, "m", &priced).unwrap(), 25_000);
    let e = batch_share(200_000, "m", &priced).unwrap_err();
    assert!(
        e.is_budget_exhausted() && e.metadata()["exhausted"] == "usd",
        "{e}"
    );
}

#[tokio::test]
async fn the_key_is_never_sent_to_another_origin() {
    // Nothing listens on these ports: a refusal must come before any connection.
    let http = BatchHttp::new(
        "http://127.0.0.1:9/v1",
        "sk-secret".into(),
        Duration::from_secs(1),
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("ek-batch-origin-{}", std::process::id()));
    let mut out = tokio::fs::File::create(&dir).await.unwrap();
    for other in [
        "http://attacker.example/v1/files/x/content",
        "https://127.0.0.1:9/v1/files/x/content",
        "http://127.0.0.1:10/v1/files/x/content",
    ] {
        let url = url::Url::parse(other).unwrap();
        let e = http.download(&url, &mut out).await.unwrap_err();
        assert!(
            e.is_permanent() && e.message().contains("refusing to send the API key"),
            "{e}"
        );
        assert!(!e.to_string().contains("sk-secret"));
    }
    drop(out);
    std::fs::remove_file(&dir).unwrap();
}

#[test]
fn ids_stay_one_path_segment() {
    let http = BatchHttp::new(
        "http://127.0.0.1:9/v1",
        String::new(),
        Duration::from_secs(1),
    )
    .unwrap();
    let id = path_segment("../../files/x?y");
    let url = http.url(&format!("/batches/{id}")).unwrap();
    assert_eq!(url.path(), "/v1/batches/..%2F..%2Ffiles%2Fx%3Fy");
    assert_eq!(url.query(), None);
}
