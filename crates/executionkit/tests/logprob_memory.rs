//! What a huge `logprobs` list costs the reply parser: nothing per token. Alone in its test
//! binary, because the allocation count is process-wide.

#![allow(clippy::unwrap_used)]

use std::alloc::System;

use executionkit::internals::parse::{parse_completion, parse_reply};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn a_huge_logprobs_list_costs_the_reply_parser_no_memory() {
    // llama-server's shape, which lists alternatives whether asked or not.
    let token = r#"{"id":74,"token":"Z","bytes":[90],"logprob":-0.5,"top_logprobs":[{"id":57,"token":"I","bytes":[73],"logprob":-2.55},{"id":49,"token":"A","bytes":[65],"logprob":-2.61}]}"#;
    let n = 60_000;
    let body = format!(
        r#"{{"choices":[{{"message":{{"content":"Paris"}},"logprobs":{{"content":[{}]}},"finish_reason":"stop"}}]}}"#,
        vec![token; n].join(",")
    );
    assert!(body.len() > 9_000_000);

    let region = Region::new(GLOBAL);
    let r = parse_reply(body.as_bytes()).unwrap();
    let typed = region.change().bytes_allocated;
    let s = r.choices[0].logprobs.unwrap();
    assert_eq!((s.tokens, s.sum), (n as u64, -0.5 * n as f64));
    // Every byte allocated while parsing, not only those held at once: the reply itself.
    assert!(typed < 4096, "{typed} bytes");

    // What building the list costs (the general parser's `Value`), so the count above is
    // known to see allocations.
    let region = Region::new(GLOBAL);
    let general = parse_completion(body.as_bytes()).unwrap();
    let built = region.change().bytes_allocated;
    assert_eq!(general, r);
    assert!(built > body.len(), "{built} bytes");
}
