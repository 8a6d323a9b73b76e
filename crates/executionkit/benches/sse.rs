//! CPU per server-sent event of a streamed completion (divan; issue 9's bar: ≤ 1 µs per event).
//!
//! - `decode`: the provider's decoding steps alone, from bytes in memory, as its stream decoder
//!   runs them: the body (in 16 KiB reads) cut into one piece per event, `eventsource-stream`
//!   parses the events, and [`StreamAccumulator::push_data`] parses each event's JSON and
//!   accumulates the text.
//! - `provider_loopback`: the whole path of [`LlmProvider::stream`] against a server on
//!   127.0.0.1 (wiremock, its own thread) that answers with the same bytes: the hyper transport,
//!   the body stream with its deadline and idle timeout, the decoder, the events. The server's
//!   work runs on its own thread; on a 2-core machine that others share, it can still take
//!   the client's core.
//!
//! Each stream is 1,000 text deltas in the shape OpenAI sends them (`chat.completion.chunk`,
//! ~190 bytes per event), then a finish chunk, a usage chunk and `[DONE]`; bench/run.sh serves
//! the same shape from nginx for the end-to-end row. The counter is one text delta, so divan's
//! `item/s` is the inverse of the time per event.
//!
//! `cargo bench -p executionkit --bench sse`. Figures go to `bench/RESULTS.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use executionkit::internals::sse::StreamAccumulator;
use executionkit::{ChatRequest, LlmProvider, Message, OpenAiProvider, StreamEvent};
use futures::StreamExt;

const EVENTS: usize = 1_000;

fn main() {
    divan::main();
}

/// A current-thread runtime, as `ek` runs.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The stream's bytes: `events` text deltas, a finish chunk, a usage chunk and `[DONE]`.
fn sse_body(events: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..events {
        out.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"m\",\"system_fingerprint\":null,\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" w{}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n",
            i % 10
        ));
    }
    out.push_str("data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"m\",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n");
    out.push_str(&format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"m\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{events},\"total_tokens\":{}}}}}\n\n",
        events + 12
    ));
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// A read cut into whole lines before the SSE parser, as the provider does (it cuts at most 16
/// line ends per piece in `sse::ByteLimits`; this cuts per event or line, the finer of the two):
/// through the first line end and a blank line right after it, or through a lone line end.
fn pieces(mut read: bytes::Bytes, out: &mut Vec<Result<bytes::Bytes, std::io::Error>>) {
    while !read.is_empty() {
        let n = match read.iter().position(|&b| b == b'\n') {
            Some(i) if read.get(i + 1) == Some(&b'\n') => i + 2,
            Some(i) => i + 1,
            None => read.len(),
        };
        out.push(Ok(read.split_to(n)));
    }
}

/// Decoding alone: the bytes arrive in 16 KiB reads (as from a socket), are cut and split into
/// events, and each event's data is parsed and accumulated.
#[divan::bench(sample_count = 50)]
fn decode(bencher: Bencher) {
    let rt = runtime();
    let body = bytes::Bytes::from(sse_body(EVENTS));
    bencher.counter(ItemsCount::new(EVENTS)).bench_local(|| {
        rt.block_on(async {
            let mut chunks = Vec::new();
            for read in body.chunks(16 * 1024) {
                pieces(body.slice_ref(read), &mut chunks);
            }
            let mut events = eventsource_stream::EventStream::new(futures::stream::iter(chunks));
            let mut acc = StreamAccumulator::new();
            let mut out = Vec::new();
            let mut deltas = 0;
            while let Some(event) = events.next().await {
                acc.push_data(&event.unwrap().data, &mut out).unwrap();
                deltas += out.len();
                out.clear();
                if acc.saw_done() {
                    break;
                }
            }
            assert_eq!(deltas, EVENTS);
            black_box(acc.finish().unwrap())
        })
    });
}

/// The whole stream path over loopback HTTP/1.1, connection reused between iterations.
#[divan::bench(sample_count = 50)]
fn provider_loopback(bencher: Bencher) {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let rt = runtime();
    let server = rt.block_on(async {
        let server = MockServer::builder()
            .disable_request_recording()
            .start()
            .await;
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .respond_with(
                ResponseTemplate::new(200).set_body_raw(sse_body(EVENTS), "text/event-stream"),
            )
            .mount(&server)
            .await;
        server
    });
    let provider = OpenAiProvider::builder(format!("{}/v1", server.uri()), "m")
        .no_proxy()
        .build()
        .unwrap();
    let request = ChatRequest::new(vec![Message::user("Tell me a story.")]);
    bencher.counter(ItemsCount::new(EVENTS)).bench_local(|| {
        rt.block_on(async {
            let mut stream = provider.stream(request.clone());
            let mut deltas = 0;
            let mut finished = None;
            while let Some(event) = stream.next().await {
                match event.unwrap() {
                    StreamEvent::TextDelta(_) => deltas += 1,
                    StreamEvent::Finished(r) => finished = Some(r),
                    _ => {}
                }
            }
            assert_eq!(deltas, EVENTS);
            black_box(finished.unwrap())
        })
    });
    drop(server);
}
