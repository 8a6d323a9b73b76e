//! The OpenAI-compatible provider's call future and request body.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::provider::Message;

/// glibc's malloc serves requests up to 1,032 bytes from its per-thread cache; a call's
/// future above that took its slow path on every call (callgrind: ~1,000 instructions).
#[test]
fn a_call_future_fits_the_allocators_fast_sizes() {
    let p = OpenAiProvider::builder("http://127.0.0.1:9/v1", "m")
        .build()
        .unwrap();
    let req = ChatRequest::new(vec![Message::user("x")]);
    let provider_future = LlmProvider::complete(&p, &req);
    assert!(
        size_of_val(&*provider_future) <= 1024,
        "{}",
        size_of_val(&*provider_future)
    );
    let ctx = crate::RunContext::new();
    let tracker = crate::engine::CostTracker::new();
    let checked = ctx.complete(&p, req.clone(), &tracker);
    assert!(size_of_val(&checked) <= 1024, "{}", size_of_val(&checked));
}

#[test]
fn extra_keys_replace_in_place_and_append() {
    let p = OpenAiProvider::builder("http://127.0.0.1:1/v1", "m")
        .build()
        .unwrap();
    let r = ChatRequest::new(vec![Message::user("x")])
        .extra("zeta", 1)
        .extra("temperature", 0.1)
        .extra("model", "other");
    let body = p.request_body(&r, true).unwrap();
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        r#"{"model":"other","messages":[{"role":"user","content":"x"}],"temperature":0.1,"max_tokens":4096,"stream":true,"stream_options":{"include_usage":true},"zeta":1}"#
    );
}

#[test]
fn logprobs_are_asked_for_only_when_set() {
    let p = OpenAiProvider::builder("http://127.0.0.1:1/v1", "m")
        .build()
        .unwrap();
    let plain = ChatRequest::new(vec![Message::user("x")]);
    let body = p.request_body(&plain, false).unwrap();
    assert!(!std::str::from_utf8(&body).unwrap().contains("logprobs"));
    let asked = plain.logprobs(true).seed(3);
    let body = p.request_body(&asked, false).unwrap();
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":0.7,"max_tokens":4096,"seed":3,"logprobs":true}"#
    );
    // An extra key of the same name replaces it in place.
    let body = p
        .request_body(&asked.extra("logprobs", false), false)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["logprobs"], false);
}
