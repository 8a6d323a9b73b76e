//! The stream accumulator, the raw-byte limits and the idle timeout.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use super::byte_limits::LINES_PER_PIECE;
use super::*;
use crate::provider::StreamEvent;

fn feed(acc: &mut StreamAccumulator, data: &str) -> Vec<StreamEvent> {
    let mut out = Vec::new();
    acc.push_data(data, &mut out).unwrap();
    out
}

#[test]
fn repeated_tool_call_ids_and_names_are_not_duplicated() {
    let mut acc = StreamAccumulator::new();
    let a = feed(
        &mut acc,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#,
    );
    assert_eq!(
        a,
        vec![StreamEvent::ToolCallDelta {
            index: 0,
            id: Some("c1".into()),
            name: Some("get_weather".into()),
            arguments: String::new()
        }]
    );
    let b = feed(
        &mut acc,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":"}}]}}]}"#,
    );
    assert_eq!(
        b,
        vec![StreamEvent::ToolCallDelta {
            index: 0,
            id: None,
            name: None,
            arguments: "{\"city\":".into()
        }]
    );
    feed(
        &mut acc,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":"tool_calls"}]}"#,
    );
    let r = acc.finish().unwrap();
    assert_eq!(r.tool_calls().len(), 1);
    assert_eq!(r.tool_calls()[0].id, "c1");
    assert_eq!(r.tool_calls()[0].name, "get_weather");
    assert_eq!(r.tool_calls()[0].arguments["city"], "Paris");
}

#[test]
fn name_fragments_are_appended() {
    let mut acc = StreamAccumulator::new();
    feed(
        &mut acc,
        r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"get_"}}]}}]}"#,
    );
    feed(
        &mut acc,
        r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"weather"}}]},"finish_reason":"tool_calls"}]}"#,
    );
    let r = acc.finish().unwrap();
    assert_eq!(r.tool_calls()[0].name, "get_weather");
    assert!(r.tool_calls()[0].arguments.is_empty());
}

#[test]
fn other_choices_are_not_mixed_into_choice_zero() {
    let mut acc = StreamAccumulator::new();
    let out = feed(
        &mut acc,
        r#"{"choices":[{"index":1,"delta":{"content":"B"}},{"index":0,"delta":{"content":"A"}}]}"#,
    );
    assert_eq!(out, vec![StreamEvent::TextDelta("A".into())]);
}

#[test]
fn usage_details_of_a_stream_are_recorded() {
    let mut acc = StreamAccumulator::new();
    feed(
        &mut acc,
        r#"{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}"#,
    );
    feed(
        &mut acc,
        r#"{"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":9,"prompt_tokens_details":{"cached_tokens":16},"completion_tokens_details":{"reasoning_tokens":5}}}"#,
    );
    let u = acc.finish().unwrap().usage;
    assert_eq!((u.input_tokens, u.output_tokens), (20, 9));
    assert_eq!((u.cache_read_input_tokens, u.reasoning_tokens), (16, 5));
    assert_eq!(u.cache_write_input_tokens, 0);
}

#[test]
fn error_chunk_is_a_provider_error() {
    let mut acc = StreamAccumulator::new();
    let e = acc
        .push_data(
            r#"{"error":{"message":"overloaded sk-abcdefgh"}}"#,
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(e.is_provider());
    assert!(e.message().contains("overloaded"));
    assert!(!e.message().contains("sk-abcdefgh"));
}

// ---- limits of the accumulator ----------------------------------------------------------

fn limits() -> StreamLimits {
    StreamLimits::default()
}

fn text(s: &str) -> String {
    serde_json::json!({"choices": [{"delta": {"content": s}}]}).to_string()
}

fn call(index: u32, name: &str, arguments: &str) -> String {
    serde_json::json!({"choices": [{"delta": {"tool_calls": [
        {"index": index, "function": {"name": name, "arguments": arguments}}
    ]}}]})
    .to_string()
}

#[test]
fn the_text_limit_allows_its_size_and_not_a_byte_more() {
    let mut l = limits();
    l.max_text_bytes = 5;
    let mut acc = StreamAccumulator::with_limits(l);
    feed(&mut acc, &text("hel"));
    feed(&mut acc, &text("lo"));
    let e = acc.push_data(&text("!"), &mut Vec::new()).unwrap_err();
    assert!(e.is_provider());
    assert_eq!(
        e.message(),
        "Provider stream exceeded a limit: the stream's text is over 5 bytes (StreamLimits::max_text_bytes)"
    );
    assert_eq!(acc.text(), "hello");
}

#[test]
fn one_tool_calls_name_and_arguments_are_bounded() {
    let mut l = limits();
    l.max_tool_call_bytes = 10;
    let mut acc = StreamAccumulator::with_limits(l);
    feed(&mut acc, &call(0, "f", "{\"a\":"));
    feed(&mut acc, &call(0, "", "1}"));
    feed(&mut acc, &call(1, "g", "{}")); // another call has its own budget
    feed(&mut acc, &call(0, "", "  "));
    let e = acc
        .push_data(&call(0, "", " "), &mut Vec::new())
        .unwrap_err();
    assert!(e.message().contains("tool call 0 (its name and arguments) is over 10 bytes (StreamLimits::max_tool_call_bytes)"), "{}", e.message());
    // Name fragments count too.
    let mut acc = StreamAccumulator::with_limits(l);
    for i in 0..10 {
        feed(&mut acc, &call(3, ["a", "b"][i % 2], ""));
    }
    assert!(acc.push_data(&call(3, "a", ""), &mut Vec::new()).is_err());
}

#[test]
fn the_number_of_tool_calls_is_bounded_and_known_calls_still_grow() {
    let mut acc = StreamAccumulator::new();
    // Sparse and out-of-order indices are found again by their index.
    let indices: Vec<u32> = (0..128u32)
        .map(|i| (i * 7919) % 128 + u32::from(i % 2 == 0) * 4_000_000_000)
        .collect();
    for &i in &indices {
        feed(&mut acc, &call(i, &format!("f{i}"), "{"));
    }
    for &i in indices.iter().rev() {
        let out = feed(&mut acc, &call(i, "", "}"));
        assert_eq!(
            out,
            vec![StreamEvent::ToolCallDelta {
                index: i,
                id: None,
                name: None,
                arguments: "}".into()
            }]
        );
    }
    let e = acc
        .push_data(&call(5000, "g", ""), &mut Vec::new())
        .unwrap_err();
    assert_eq!(
        e.message(),
        "Provider stream exceeded a limit: the number of tool calls is over 128 calls (StreamLimits::max_tool_calls)"
    );
    acc.push_data("[DONE]", &mut Vec::new()).unwrap();
    let r = acc.finish().unwrap();
    assert_eq!(r.tool_calls().len(), 128);
    let mut sorted = indices;
    sorted.sort_unstable();
    for (c, i) in r.tool_calls().iter().zip(sorted) {
        assert_eq!(c.name, format!("f{i}"));
        assert!(c.arguments.is_empty() && c.arguments_error.is_none());
    }
}

#[test]
fn one_events_data_is_bounded() {
    let mut l = limits();
    let data = text("abc");
    l.max_event_bytes = data.len();
    let mut acc = StreamAccumulator::with_limits(l);
    feed(&mut acc, &data);
    let e = acc
        .push_data(&format!("{data} "), &mut Vec::new())
        .unwrap_err();
    assert!(e.message().contains(&format!(
        "an event's data is over {} bytes (StreamLimits::max_event_bytes)",
        data.len()
    )));
}

// ---- the raw byte limits ------------------------------------------------------------------

type Verdict = (Vec<u8>, Option<ByteLimitError<&'static str>>);

/// Runs `chunks` through [`ByteLimits`]: the bytes passed on, and the error if any (after
/// which the stream must end).
fn run(chunks: Vec<Vec<u8>>, l: &StreamLimits) -> Verdict {
    let (pieces, e) = pieces(chunks, l);
    (pieces.concat(), e)
}

/// Runs `chunks` through [`ByteLimits`]: the pieces passed on, and the error if any. Every
/// piece but a last one is whole lines, at most [`LINES_PER_PIECE`] line endings.
fn pieces(
    chunks: Vec<Vec<u8>>,
    l: &StreamLimits,
) -> (Vec<Vec<u8>>, Option<ByteLimitError<&'static str>>) {
    futures::executor::block_on(async {
        let inner = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, &'static str>(Bytes::from(c))),
        );
        let mut s = std::pin::pin!(ByteLimits::new(inner, l));
        let mut passed: Vec<Vec<u8>> = Vec::new();
        let mut error = None;
        while let Some(item) = futures::StreamExt::next(&mut s).await {
            match item {
                Ok(c) => {
                    assert!(!c.is_empty());
                    passed.push(c.to_vec());
                }
                Err(e) => {
                    assert!(futures::StreamExt::next(&mut s).await.is_none());
                    error = Some(e);
                    break;
                }
            }
        }
        let ends = |c: &[u8]| c.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
        for (i, p) in passed.iter().enumerate() {
            assert!(ends(p) <= LINES_PER_PIECE, "{p:?}");
            if i + 1 < passed.len() || error.is_some() {
                assert!(matches!(p.last(), Some(b'\n' | b'\r')), "{p:?}");
            }
        }
        (passed, error)
    })
}

fn small(line: usize, event: usize, stream: u64) -> StreamLimits {
    StreamLimits {
        max_line_bytes: line,
        max_event_bytes: event,
        max_stream_bytes: stream,
        ..limits()
    }
}

#[test]
fn a_line_may_have_its_size_and_not_a_byte_more_whatever_its_ending() {
    let l = small(4, 100, 1000);
    for ending in ["\n", "\r", "\r\n"] {
        let ok = format!("abcd{ending}efgh{ending}{ending}ijkl");
        assert_eq!(
            run(vec![ok.clone().into_bytes()], &l),
            (ok.into_bytes(), None)
        );
        let long = format!("abcd{ending}efghi{ending}");
        assert_eq!(
            run(vec![long.into_bytes()], &l).1,
            Some(ByteLimitError::Line(4))
        );
    }
    // An unended line fails as soon as it passes the limit, before any ending arrives
    // (and was never passed on: it waited for its end).
    let (passed, e) = run(vec![b"abc".to_vec(), b"de".to_vec(), b"\n".to_vec()], &l);
    assert_eq!((passed, e), (Vec::new(), Some(ByteLimitError::Line(4))));
}

#[test]
fn an_event_ends_at_a_blank_line_and_is_bounded() {
    for blank in ["\n\n", "\r\r", "\r\n\r\n"] {
        // The event "ab\ncd" and the ending of its last line; the blank line's own ending
        // closes it, and the next event counts from 0.
        let size = "ab\ncd".len() + blank.len() / 2;
        let ok = format!("ab\ncd{blank}ab\ncd{blank}");
        let verdict = run(vec![ok.clone().into_bytes()], &small(100, size, 1000));
        assert_eq!(verdict, (ok.clone().into_bytes(), None), "{blank:?}");
        let verdict = run(vec![ok.into_bytes()], &small(100, size - 1, 1000));
        assert_eq!(
            verdict.1,
            Some(ByteLimitError::Event(size - 1)),
            "{blank:?}"
        );
    }
    // An unfinished event fails as soon as it passes the limit.
    let e = run(vec![b"ab\ncd\nx".to_vec()], &small(100, 6, 1000)).1;
    assert_eq!(e, Some(ByteLimitError::Event(6)));
    // Comments and keep-alive lines count towards the event they are in.
    let e = run(vec![b": ping\n".to_vec()], &small(100, 6, 1000)).1;
    assert_eq!(e, Some(ByteLimitError::Event(6)));
}

#[test]
fn the_stream_may_have_its_size_and_not_a_byte_more() {
    let l = small(100, 100, 10);
    let (passed, e) = run(vec![b"12345\n\n".to_vec(), b"890".to_vec()], &l);
    assert_eq!((passed.len(), e), (10, None));
    let (passed, e) = run(
        vec![b"12345\n\n".to_vec(), b"890".to_vec(), b"x".to_vec()],
        &l,
    );
    // The unended "890" waited for its end.
    assert_eq!((passed.len(), e), (7, Some(ByteLimitError::Stream(10))));
    // A line passed before the stream's end is reported as the line.
    let e = run(vec![b"12345678901234".to_vec()], &small(4, 100, 10)).1;
    assert_eq!(e, Some(ByteLimitError::Line(4)));
}

#[test]
fn inner_errors_pass_through_and_end_the_stream() {
    let verdict = futures::executor::block_on(async {
        let inner = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"a\n")),
            Err("boom"),
            Ok(Bytes::from_static(b"b")),
        ]);
        let s = ByteLimits::new(inner, &limits());
        futures::StreamExt::collect::<Vec<_>>(s).await
    });
    assert_eq!(
        verdict,
        vec![
            Ok(Bytes::from_static(b"a\n")),
            Err(ByteLimitError::Inner("boom"))
        ]
    );
    let e = ByteLimitError::Inner("boom").into_error(provider_err);
    assert_eq!(e.message(), "boom");
    assert_eq!(
        ByteLimitError::<()>::Line(7)
            .into_error(|()| unreachable!())
            .message(),
        "Provider stream exceeded a limit: an SSE line is over 7 bytes (StreamLimits::max_line_bytes)"
    );
    assert!(
        ByteLimitError::<()>::Event(7)
            .into_error(|()| unreachable!())
            .message()
            .contains("StreamLimits::max_event_bytes")
    );
    assert!(
        ByteLimitError::<()>::Stream(7)
            .into_error(|()| unreachable!())
            .message()
            .contains("StreamLimits::max_stream_bytes")
    );
    assert_eq!(
        ByteLimitError::<&str>::Line(7).to_string(),
        "an SSE line is over 7 bytes"
    );
}

#[test]
fn bytes_are_passed_on_in_pieces_of_whole_lines() {
    // An unfinished line waits for its end, however it is cut.
    let chunks = vec![
        b"da".to_vec(),
        b"ta: x".to_vec(),
        b"y\n\nda".to_vec(),
        b"ta".to_vec(),
    ];
    let (p, e) = pieces(chunks, &limits());
    assert_eq!(
        (p, e),
        (vec![b"data: xy\n\n".to_vec(), b"data".to_vec()], None)
    );
    // Many lines in one chunk are passed on a few at a time.
    let blank = vec![b'\n'; 1000];
    let (p, e) = pieces(vec![blank.clone()], &limits());
    assert_eq!(
        (p.len(), p.concat(), e),
        (1000usize.div_ceil(LINES_PER_PIECE), blank, None)
    );
    // A `\r\n` cut in two arrives whole.
    let chunks = vec![b"a\r".to_vec(), b"\nb\r".to_vec(), b"\n".to_vec()];
    let (p, e) = pieces(chunks, &limits());
    assert_eq!((p.concat(), e), (b"a\r\nb\r\n".to_vec(), None));
}

/// The chain the provider builds: body → idle timeout → raw-byte limits → SSE parser.
#[tokio::test]
async fn the_limits_compose_with_the_idle_timeout_and_the_sse_parser() {
    use futures::StreamExt;
    let l = small(16, 1000, 10_000);
    let body = futures::stream::iter(vec![
        Ok::<_, std::io::Error>(Bytes::from_static(b"data: {\"a\":1}\n\n")),
        Ok(Bytes::from_static(b"data: 0123456789")),
        Ok(Bytes::from_static(b"0123456789\n\n")),
    ]);
    let chained = ByteLimits::new(IdleTimeout::new(body, Duration::from_secs(60)), &l);
    let mut events = std::pin::pin!(eventsource_stream::EventStream::new(chained));
    assert_eq!(events.next().await.unwrap().unwrap().data, "{\"a\":1}");
    match events.next().await {
        Some(Err(eventsource_stream::EventStreamError::Transport(e))) => {
            assert!(matches!(e, ByteLimitError::Line(16)), "{e:?}");
            let e = e.into_error(|e| provider_err(e.to_string()));
            assert!(e.message().contains("max_line_bytes"));
        }
        other => panic!("{other:?}"),
    }
    assert!(events.next().await.is_none());
}

/// A body that sends `chunks`, each after `gap`.
fn slow_body(
    chunks: &'static [&'static [u8]],
    gap: Duration,
) -> impl Stream<Item = std::result::Result<Bytes, std::io::Error>> {
    futures::StreamExt::then(futures::stream::iter(chunks), move |c| async move {
        tokio::time::sleep(gap).await;
        Ok(Bytes::from_static(c))
    })
}

/// Bytes of a line still arriving count as activity for the idle timeout in front of the
/// limits (behind them, the timer would see only whole lines).
#[tokio::test(start_paused = true)]
async fn a_line_arriving_slowly_is_not_idle() {
    use futures::StreamExt;
    const CHUNKS: &[&[u8]] = &[b"data: ", b"1", b"2", b"\n\n"];
    let (gap, idle) = (Duration::from_secs(40), Duration::from_secs(60));
    let chained = ByteLimits::new(IdleTimeout::new(slow_body(CHUNKS, gap), idle), &limits());
    let mut events = std::pin::pin!(eventsource_stream::EventStream::new(chained));
    assert_eq!(events.next().await.unwrap().unwrap().data, "12");
    let reversed = IdleTimeout::new(ByteLimits::new(slow_body(CHUNKS, gap), &limits()), idle);
    let mut events = std::pin::pin!(eventsource_stream::EventStream::new(reversed));
    assert!(matches!(
        events.next().await,
        Some(Err(eventsource_stream::EventStreamError::Transport(
            IdleError::Idle(_)
        )))
    ));
}

/// A straightforward model of the rules, one byte at a time.
fn model(bytes: &[u8], l: &StreamLimits) -> Option<ByteLimitError<&'static str>> {
    // `prev`: the last byte, and whether it ended an event.
    let (mut line, mut event, mut prev) = (0usize, 0usize, (0u8, false));
    for (i, &b) in bytes.iter().enumerate() {
        if i as u64 >= l.max_stream_bytes {
            return Some(ByteLimitError::Stream(l.max_stream_bytes));
        }
        match b {
            b'\n' if prev.0 == b'\r' => {
                if !prev.1 {
                    event += 1;
                }
                prev = (b, false);
            }
            b'\n' | b'\r' => {
                let blank = line == 0;
                if blank {
                    event = 0;
                } else {
                    line = 0;
                    event += 1;
                }
                prev = (b, blank);
            }
            _ => {
                line += 1;
                event += 1;
                prev = (b, false);
                if line > l.max_line_bytes {
                    return Some(ByteLimitError::Line(l.max_line_bytes));
                }
            }
        }
        if event > l.max_event_bytes {
            return Some(ByteLimitError::Event(l.max_event_bytes));
        }
    }
    None
}

fn split(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// However a stream is split into chunks (including empty ones), the verdict is the
    /// same, the bytes passed are a prefix of the stream (all of it when no limit is
    /// passed), and the verdict is the byte-at-a-time model's.
    #[test]
    fn chunking_never_changes_the_verdict(
        bytes in prop::collection::vec(prop::sample::select(&b"ab :\n\r"[..]), 0..120),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        line in 0usize..12,
        event in 0usize..40,
        stream in 0u64..130,
    ) {
        let l = small(line, event, stream);
        let whole = run(vec![bytes.clone()], &l);
        let chunked = run(split(&bytes, &cuts), &l);
        let bytewise = run(bytes.iter().map(|&b| vec![b]).collect(), &l);
        prop_assert_eq!(&whole.1, &chunked.1);
        prop_assert_eq!(&whole.1, &bytewise.1);
        prop_assert_eq!(&whole.1, &model(&bytes, &l));
        for passed in [&whole.0, &chunked.0, &bytewise.0] {
            prop_assert!(bytes.starts_with(passed));
        }
        if whole.1.is_none() {
            prop_assert_eq!(&chunked.0, &bytes);
        }
        // Without event and stream limits, a line error is exactly a line that is too long.
        let lines_only = small(line, usize::MAX, u64::MAX);
        let too_long = bytes.split(|&b| b == b'\n' || b == b'\r').any(|s| s.len() > line);
        prop_assert_eq!(run(split(&bytes, &cuts), &lines_only).1.is_some(), too_long);
    }
}

#[test]
fn stream_logprobs_are_summed_across_chunks() {
    let mut acc = StreamAccumulator::new();
    feed(
        &mut acc,
        r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null}]}"#,
    );
    feed(
        &mut acc,
        r#"{"choices":[{"index":0,"delta":{"content":"Par"},"logprobs":{"content":[{"token":"Par","logprob":-0.5,"top_logprobs":[]}]}}]}"#,
    );
    feed(
        &mut acc,
        r#"{"choices":[{"index":0,"delta":{"content":"is"},"logprobs":{"content":[{"token":"is","logprob":-1.5}]}}]}"#,
    );
    feed(
        &mut acc,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    );
    let r = acc.finish().unwrap();
    assert_eq!(r.content(), "Paris");
    let s = r.choices[0].logprobs.unwrap();
    assert_eq!((s.sum, s.tokens), (-2.0, 2));
}

#[test]
fn stream_logprobs_are_absent_without_them_and_dropped_when_one_chunk_is_malformed() {
    let mut acc = StreamAccumulator::new();
    feed(
        &mut acc,
        r#"{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}"#,
    );
    assert_eq!(acc.finish().unwrap().choices[0].logprobs, None);

    let mut acc = StreamAccumulator::new();
    feed(
        &mut acc,
        r#"{"choices":[{"index":0,"delta":{"content":"a"},"logprobs":{"content":[{"logprob":-0.5}]}}]}"#,
    );
    feed(
        &mut acc,
        r#"{"choices":[{"index":0,"delta":{"content":"b"},"logprobs":{"content":[{"logprob":"high"}]}}]}"#,
    );
    feed(
        &mut acc,
        r#"{"choices":[{"index":0,"delta":{"content":"c"},"logprobs":{"content":[{"logprob":-0.5}]}}]}"#,
    );
    feed(&mut acc, "[DONE]");
    let r = acc.finish().unwrap();
    assert_eq!((r.content(), r.choices[0].logprobs), ("abc", None));
}
