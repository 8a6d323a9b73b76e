//! Streaming: the SSE line rules, the accumulator, the decoder under arbitrary splits
//! (proptest), and real streams from wiremock and from a small TCP server inside the test
//! (truncated, stalled, malformed, disconnected, tool-call deltas). 127.0.0.1 only. Each test
//! that talks to a server runs over plain http/1.1, https/1.1 and https/2 (`name::http1`,
//! `name::https1`, `name::https2`; see `common::wire`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use executionkit::internals::sse::{SseLine, StreamAccumulator, parse_sse_line};
use executionkit::{
    ChatRequest, Error, LlmProvider, LlmResponse, Message, OpenAiProvider, StreamEvent,
};
use futures::StreamExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

mod common;

use common::wire::{Front, Wire, WireMock, closed_port_url};

fn hi() -> ChatRequest {
    ChatRequest::new(vec![Message::user("hi")])
}

fn text_chunk(s: &str) -> Value {
    json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": s}, "finish_reason": null}]})
}

fn finish_chunk(reason: &str) -> Value {
    json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
}

fn usage_chunk(i: u64, o: u64) -> Value {
    json!({"choices": [], "usage": {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o}})
}

fn sse(frames: &[Value]) -> String {
    let mut s = String::new();
    for f in frames {
        s.push_str("data: ");
        s.push_str(&f.to_string());
        s.push_str("\n\n");
    }
    s
}

/// Drains a stream into its items, stopping after the first error.
async fn drain(provider: &OpenAiProvider, req: ChatRequest) -> (Vec<StreamEvent>, Option<Error>) {
    let mut s = provider.stream(req);
    let mut events = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(ev) => events.push(ev),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

fn texts(events: &[StreamEvent]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::TextDelta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn finished(events: &[StreamEvent]) -> Option<&LlmResponse> {
    match events.last() {
        Some(StreamEvent::Finished(r)) => Some(r),
        _ => None,
    }
}

#[test]
fn s032_sse_lines() {
    match parse_sse_line(r#"data: {"a": 1}"#).unwrap() {
        SseLine::Data(m) => assert_eq!(Value::Object(m), json!({"a": 1})),
        other => panic!("{other:?}"),
    }
    assert_eq!(parse_sse_line("data: [DONE]").unwrap(), SseLine::Done);
    for ignored in [
        "",
        ": keep-alive comment",
        "event: ping",
        "id: 7",
        "retry: 10",
    ] {
        assert_eq!(
            parse_sse_line(ignored).unwrap(),
            SseLine::Ignored,
            "{ignored}"
        );
    }
    let e = parse_sse_line("data: not-json{").unwrap_err();
    assert!(e.is_provider());
    assert!(e.message().contains("non-JSON SSE data frame"));
    let e = parse_sse_line("data: [1, 2]").unwrap_err();
    assert!(e.is_provider());
    assert!(e.message().contains("not a JSON object"));
}

fn push(acc: &mut StreamAccumulator, v: &Value) -> Vec<StreamEvent> {
    let mut out = Vec::new();
    acc.push_chunk(v.as_object().unwrap(), &mut out).unwrap();
    out
}

#[test]
fn s033_accumulator() {
    let mut acc = StreamAccumulator::new();
    assert_eq!(
        push(
            &mut acc,
            &json!({"choices": [{"delta": {"content": "hi"}}]})
        ),
        vec![StreamEvent::TextDelta("hi".into())]
    );
    assert!(push(&mut acc, &json!({"choices": []})).is_empty());
    assert!(push(&mut acc, &json!({"choices": [{"delta": {}}]})).is_empty());
    assert!(
        push(
            &mut acc,
            &json!({"choices": [{"delta": {"role": "assistant"}}]})
        )
        .is_empty()
    );
    // The empty string is not yielded (a documented difference from the reference).
    assert!(
        push(
            &mut acc,
            &json!({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
        )
        .is_empty()
    );
    assert_eq!(acc.usage(), None, "a chunk without usage gives no usage");

    let mut acc = StreamAccumulator::new();
    push(&mut acc, &text_chunk("hel"));
    push(&mut acc, &text_chunk("lo"));
    push(&mut acc, &usage_chunk(1, 2));
    assert_eq!(acc.text(), "hello");
    acc.push_data("[DONE]", &mut Vec::new()).unwrap();
    let r = acc.finish().unwrap();
    assert_eq!(r.content(), "hello");
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (1, 2));
}

over_wires!(s034_stream_text_usage_and_request_body);
async fn s034_stream_text_usage_and_request_body(wire: Wire) {
    let body = sse(&[
        text_chunk("He"),
        text_chunk("llo"),
        finish_chunk("stop"),
        usage_chunk(3, 2),
    ]) + "data: [DONE]\n\n";
    let server = WireMock::start(wire).await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "text/event-stream"))
        .mount(&server)
        .await;
    let p = server
        .builder(format!("{}/v1", server.uri()), "test-model")
        .api_key("sk-stream-key")
        .build()
        .unwrap();

    // Lazy: nothing is sent before the first poll.
    let mut s = p.stream(hi().max_tokens(9));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(server.received_requests().await.unwrap().is_empty());
    let mut events = Vec::new();
    while let Some(item) = s.next().await {
        events.push(item.unwrap());
    }

    assert_eq!(texts(&events), vec!["He", "llo"]);
    let r = finished(&events).unwrap();
    assert_eq!(r.content(), "Hello");
    assert_eq!(r.finish_reason(), Some("stop"));
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (3, 2));
    assert_eq!(r.id.as_deref(), Some("c1"));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Finished(_)))
            .count(),
        1
    );

    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].headers["authorization"], "Bearer sk-stream-key");
    assert_eq!(
        std::str::from_utf8(&reqs[0].body).unwrap(),
        r#"{"model":"test-model","messages":[{"role":"user","content":"hi"}],"temperature":0.7,"max_tokens":9,"stream":true,"stream_options":{"include_usage":true}}"#
    );
}

over_wires!(stream_options_can_be_overridden_by_extras);
async fn stream_options_can_be_overridden_by_extras(wire: Wire) {
    let server = WireMock::start(wire).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            sse(&[text_chunk("x"), finish_chunk("stop")]),
            "text/event-stream",
        ))
        .mount(&server)
        .await;
    let p = server
        .builder(format!("{}/v1", server.uri()), "m")
        .build()
        .unwrap();
    let (events, err) = drain(
        &p,
        hi().extra("stream_options", json!({"include_usage": false})),
    )
    .await;
    assert!(err.is_none());
    // finish_reason without [DONE] is a complete stream.
    assert_eq!(finished(&events).unwrap().content(), "x");
    let sent: Value = server.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    assert_eq!(sent["stream_options"], json!({"include_usage": false}));
    assert_eq!(sent["stream"], true);
}

over_wires!(a_server_that_ignores_stream_true_still_works);
async fn a_server_that_ignores_stream_true_still_works(wire: Wire) {
    let server = WireMock::start(wire).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"content": "whole", "tool_calls": [
                {"id": "c1", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2}
        })))
        .mount(&server)
        .await;
    let p = server
        .builder(format!("{}/v1", server.uri()), "m")
        .build()
        .unwrap();
    let (events, err) = drain(&p, hi()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(texts(&events), vec!["whole"]);
    assert!(
        matches!(&events[1], StreamEvent::ToolCallDelta { index: 0, id: Some(id), name: Some(n), arguments }
        if id == "c1" && n == "f" && arguments == "{\"a\":1}")
    );
    let r = finished(&events).unwrap();
    assert_eq!(r.tool_calls()[0].arguments["a"], 1);
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (4, 2));
}

over_wires!(s036_stream_http_error_and_connection_refused);
async fn s036_stream_http_error_and_connection_refused(wire: Wire) {
    let server = WireMock::start(wire).await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(500).set_body_json(json!({"error": {"message": "boom"}})),
        )
        .mount(&server)
        .await;
    let p = server
        .builder(format!("{}/v1", server.uri()), "m")
        .build()
        .unwrap();
    let (events, err) = drain(&p, hi()).await;
    assert!(events.is_empty());
    let e = err.unwrap();
    assert!(e.is_provider(), "{e:?}");
    assert!(e.message().contains("boom"));
    assert_eq!(e.http_status(), Some(500));

    for (status, permanent) in [(401, true), (404, true), (302, false), (503, false)] {
        let server = WireMock::start(wire).await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status))
            .mount(&server)
            .await;
        let p = server
            .builder(format!("{}/v1", server.uri()), "m")
            .build()
            .unwrap();
        let (_, err) = drain(&p, hi()).await;
        let e = err.unwrap();
        assert_eq!(e.is_permanent(), permanent, "{status}: {e:?}");
        assert_eq!(e.is_provider(), !permanent, "{status}: {e:?}");
    }

    let p = OpenAiProvider::new(closed_port_url(wire), "m").unwrap();
    let (events, err) = drain(&p, hi()).await;
    assert!(events.is_empty());
    let e = err.unwrap();
    assert!(e.is_transport(), "{e:?}");
    assert!(e.message().contains("Transport failure"));
}

// ---- a tiny HTTP server for broken streams ------------------------------------------------

/// Reads one HTTP request (head and Content-Length body) from `sock`.
async fn read_request(sock: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = sock.read(&mut tmp).await.unwrap();
        if n == 0 {
            return buf;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < end + 4 + len {
                let n = sock.read(&mut tmp).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            return buf;
        }
    }
}

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

/// Serves one connection with `script` and returns `wire`'s front before it (its URL ends in
/// `/v1`). On https/1.1 the TLS relay passes the script's bytes unchanged; on https/2 the h2
/// relay turns its HTTP/1.1 framing into HTTP/2's: the body's frames as they come, its
/// terminating chunk into `END_STREAM`, a reset or a close mid-body into `RST_STREAM`, so each
/// script still means the same fault on every wire.
async fn serve<F, Fut>(wire: Wire, script: F) -> Front
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        read_request(&mut sock).await;
        script(sock).await;
    });
    Front::start(wire, &format!("http://127.0.0.1:{}/v1", addr.port())).await
}

/// Keeps the connection open until the client goes away.
async fn hold(mut sock: TcpStream) {
    let mut tmp = [0u8; 64];
    while let Ok(n) = sock.read(&mut tmp).await {
        if n == 0 {
            break;
        }
    }
}

fn quick_provider(front: &Front) -> OpenAiProvider {
    front
        .builder(front.uri(), "m")
        .stream_idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

over_wires!(truncated_stream_is_a_provider_error);
async fn truncated_stream_is_a_provider_error(wire: Wire) {
    let front = serve(wire, |mut sock| async move {
        sock.write_all(SSE_HEAD).await.unwrap();
        sock.write_all(&chunk(&sse(&[text_chunk("He")])))
            .await
            .unwrap();
        sock.write_all(b"0\r\n\r\n").await.unwrap();
        hold(sock).await;
    })
    .await;
    let (events, err) = drain(&quick_provider(&front), hi()).await;
    assert_eq!(texts(&events), vec!["He"]);
    let e = err.unwrap();
    assert!(e.is_provider(), "{e:?}");
    assert!(e.message().contains("stream ended early"), "{e:?}");
}

over_wires!(empty_stream_is_a_provider_error);
async fn empty_stream_is_a_provider_error(wire: Wire) {
    let front = serve(wire, |mut sock| async move {
        sock.write_all(SSE_HEAD).await.unwrap();
        sock.write_all(b"0\r\n\r\n").await.unwrap();
        hold(sock).await;
    })
    .await;
    let (events, err) = drain(&quick_provider(&front), hi()).await;
    assert!(events.is_empty());
    assert!(err.unwrap().message().contains("stream ended early"));
}

over_wires!(stalled_stream_is_a_timeout);
async fn stalled_stream_is_a_timeout(wire: Wire) {
    let front = serve(wire, |mut sock| async move {
        sock.write_all(SSE_HEAD).await.unwrap();
        sock.write_all(&chunk(&sse(&[text_chunk("He")])))
            .await
            .unwrap();
        hold(sock).await;
    })
    .await;
    let (events, err) = drain(&quick_provider(&front), hi()).await;
    assert_eq!(texts(&events), vec!["He"]);
    let e = err.unwrap();
    assert!(e.is_timeout(), "{e:?}");
    assert!(e.message().contains("Transport failure"), "{e:?}");
    assert!(e.message().contains("idle"), "{e:?}");
}

over_wires!(no_response_head_is_a_timeout);
async fn no_response_head_is_a_timeout(wire: Wire) {
    let front = serve(wire, |sock| async move { hold(sock).await }).await;
    let p = front
        .builder(front.uri(), "m")
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (_, err) = drain(&p, hi()).await;
    let e = err.unwrap();
    assert!(e.is_timeout(), "{e:?}");
    assert!(e.message().contains("Transport failure"));
}

over_wires!(keep_alive_comments_reset_the_idle_timer);
async fn keep_alive_comments_reset_the_idle_timer(wire: Wire) {
    let front = serve(wire, |mut sock| async move {
        sock.write_all(SSE_HEAD).await.unwrap();
        for _ in 0..12 {
            sock.write_all(&chunk(": ping\n\n")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tail = sse(&[text_chunk("ok"), finish_chunk("stop")]) + "data: [DONE]\n\n";
        sock.write_all(&chunk(&tail)).await.unwrap();
        sock.write_all(b"0\r\n\r\n").await.unwrap();
        hold(sock).await;
    })
    .await;
    let p = front
        .builder(front.uri(), "m")
        .stream_idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (events, err) = drain(&p, hi()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(finished(&events).unwrap().content(), "ok");
}

over_wires!(done_ends_the_stream_even_if_the_server_keeps_the_connection);
async fn done_ends_the_stream_even_if_the_server_keeps_the_connection(wire: Wire) {
    let front = serve(wire, |mut sock| async move {
        sock.write_all(SSE_HEAD).await.unwrap();
        let body = sse(&[text_chunk("a")]) + "data: [DONE]\n\n";
        sock.write_all(&chunk(&body)).await.unwrap();
        hold(sock).await;
    })
    .await;
    let (events, err) = drain(&quick_provider(&front), hi()).await;
    assert!(err.is_none(), "{err:?}");
    let r = finished(&events).unwrap();
    assert_eq!(r.content(), "a");
    assert_eq!(r.finish_reason(), None);
}

over_wires!(malformed_frame_is_a_provider_error);
async fn malformed_frame_is_a_provider_error(wire: Wire) {
    let front = serve(wire, |mut sock| async move {
        sock.write_all(SSE_HEAD).await.unwrap();
        let body = sse(&[text_chunk("He")]) + "data: {\"choices\":[{\"delta\":{\"cont\n\n";
        sock.write_all(&chunk(&body)).await.unwrap();
        sock.write_all(b"0\r\n\r\n").await.unwrap();
        hold(sock).await;
    })
    .await;
    let (events, err) = drain(&quick_provider(&front), hi()).await;
    assert_eq!(texts(&events), vec!["He"]);
    let e = err.unwrap();
    assert!(e.is_provider(), "{e:?}");
    assert!(e.message().contains("non-JSON SSE data frame"), "{e:?}");
}

over_wires!(s036_disconnect_mid_body_is_a_transport_failure_after_the_deltas);
async fn s036_disconnect_mid_body_is_a_transport_failure_after_the_deltas(wire: Wire) {
    let front = serve(wire, |mut sock| async move {
        sock.write_all(SSE_HEAD).await.unwrap();
        sock.write_all(&chunk(&sse(&[text_chunk("He")])))
            .await
            .unwrap();
        sock.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Reset the connection (RST, no terminating chunk). A zero linger does not block.
        #[allow(deprecated)]
        sock.set_linger(Some(Duration::ZERO)).unwrap();
        drop(sock);
    })
    .await;
    let (events, err) = drain(&quick_provider(&front), hi()).await;
    assert_eq!(texts(&events), vec!["He"]);
    let e = err.unwrap();
    assert!(e.is_transport(), "{e:?}");
    assert!(e.message().contains("Transport failure"), "{e:?}");
}

over_wires!(tool_call_deltas_with_repeated_id_and_name);
async fn tool_call_deltas_with_repeated_id_and_name(wire: Wire) {
    // The llama-cpp-python server shape: id, type and name repeated in every delta.
    let delta = |args: &str| {
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": args}}]}, "finish_reason": null}]})
    };
    let second = json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_2",
        "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}}]});
    let body = sse(&[
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": null}}]}),
        delta(""),
        delta("{\"city\""),
        delta(": \"Paris\"}"),
        second,
        finish_chunk("tool_calls"),
        usage_chunk(10, 4),
    ]) + "data: [DONE]\n\n";
    let front = serve(wire, move |mut sock| async move {
        sock.write_all(SSE_HEAD).await.unwrap();
        sock.write_all(&chunk(&body)).await.unwrap();
        sock.write_all(b"0\r\n\r\n").await.unwrap();
        hold(sock).await;
    })
    .await;
    let (events, err) = drain(&quick_provider(&front), hi()).await;
    assert!(err.is_none(), "{err:?}");
    let deltas: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            } => Some((*index, id.clone(), name.clone(), arguments.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        deltas,
        vec![
            (
                0,
                Some("call_1".into()),
                Some("get_weather".into()),
                String::new()
            ),
            (0, None, None, "{\"city\"".into()),
            (0, None, None, ": \"Paris\"}".into()),
            (
                1,
                Some("call_2".into()),
                Some("get_time".into()),
                "{}".into()
            ),
        ]
    );
    let r = finished(&events).unwrap();
    assert_eq!(r.finish_reason(), Some("tool_calls"));
    assert_eq!(r.tool_calls().len(), 2);
    assert_eq!(r.tool_calls()[0].id, "call_1");
    assert_eq!(r.tool_calls()[0].name, "get_weather");
    assert_eq!(r.tool_calls()[0].arguments["city"], "Paris");
    assert_eq!(r.tool_calls()[1].name, "get_time");
    assert_eq!(r.content(), "");
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (10, 4));
}

over_wires!(invalid_streamed_tool_arguments_are_kept_with_a_reason);
async fn invalid_streamed_tool_arguments_are_kept_with_a_reason(wire: Wire) {
    let body = sse(&[
        json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{oops"}}]}}]}),
        finish_chunk("tool_calls"),
    ]);
    let front = serve(wire, move |mut sock| async move {
        sock.write_all(SSE_HEAD).await.unwrap();
        sock.write_all(&chunk(&body)).await.unwrap();
        sock.write_all(b"0\r\n\r\n").await.unwrap();
        hold(sock).await;
    })
    .await;
    // Issue 5: the stream is not failed; the call arrives with empty arguments and a reason
    // that holds none of the argument text.
    let (events, err) = drain(&quick_provider(&front), hi()).await;
    assert!(err.is_none(), "{err:?}");
    let r = finished(&events).unwrap();
    let call = &r.tool_calls()[0];
    assert_eq!((call.id.as_str(), call.name.as_str()), ("c", "f"));
    assert!(call.arguments.is_empty());
    let reason = call.arguments_error.as_deref().unwrap();
    assert!(
        reason.starts_with("arguments were not valid JSON"),
        "{reason}"
    );
    assert!(!reason.contains("oops"), "{reason}");
}

// ---- the decoder under arbitrary splits -------------------------------------------------------

/// Decodes `chunks` with the same pieces the provider uses (eventsource-stream + accumulator).
fn decode(chunks: Vec<Vec<u8>>) -> (Vec<StreamEvent>, Result<LlmResponse, String>) {
    futures::executor::block_on(async {
        let bytes =
            futures::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>));
        let mut events = eventsource_stream::EventStream::new(bytes);
        let mut acc = StreamAccumulator::new();
        let mut out = Vec::new();
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|e| e.to_string());
            let pushed = ev.and_then(|ev| {
                acc.push_data(&ev.data, &mut out)
                    .map_err(|e| e.message().to_owned())
            });
            if let Err(e) = pushed {
                return (out, Err(e));
            }
        }
        let r = acc.finish().map_err(|e| e.message().to_owned());
        (out, r)
    })
}

fn frame_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-zA-Z0-9 ]{0,12}".prop_map(|s| text_chunk(&s)),
        Just(text_chunk("héllo ✓ 日本語 🦀")),
        (0u32..3, "[a-z{}\":, ]{0,10}").prop_map(|(i, a)| json!({"choices": [{"index": 0,
            "delta": {"tool_calls": [{"index": i, "id": format!("c{i}"), "function": {"name": format!("f{i}"), "arguments": a}}]}}]})),
        (0u64..100, 0u64..100).prop_map(|(i, o)| usage_chunk(i, o)),
        Just(json!({"choices": [{"index": 1, "delta": {"content": "other choice"}}]})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn split_points_do_not_change_the_events(
        frames in proptest::collection::vec(frame_strategy(), 0..12),
        finish in any::<bool>(),
        done in any::<bool>(),
        comments in any::<bool>(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let mut text = String::new();
        for f in &frames {
            if comments {
                text.push_str(": keep-alive\n\n");
            }
            text.push_str(&format!("data: {f}\n\n"));
        }
        if finish {
            text.push_str(&format!("data: {}\n\n", finish_chunk("stop")));
        }
        if done {
            text.push_str("data: [DONE]\n\n");
        }
        let bytes = text.into_bytes();
        let whole = decode(vec![bytes.clone()]);

        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut pieces = Vec::new();
        let mut start = 0;
        for p in points {
            pieces.push(bytes[start..p].to_vec());
            start = p;
        }
        pieces.push(bytes[start..].to_vec());
        let split = decode(pieces);

        prop_assert_eq!(&whole.0, &split.0);
        prop_assert_eq!(&whole.1, &split.1);
        if !(finish || done) {
            prop_assert!(whole.1.as_ref().is_err_and(|e| e.contains("stream ended early")));
        }
    }
}
