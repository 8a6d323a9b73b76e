//! The typed reply pass against the general parser: the same answer for every body.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

const NGINX: &[u8] = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#;

/// `parse_reply` answers as `parse_completion` does (the same response, or an error of the
/// same kind and message), and whatever the typed pass accepts is that same response.
/// Returns whether the typed pass took the body.
fn agrees(body: &[u8]) -> bool {
    let slow = parse_completion(body);
    let fast = parse_reply(body);
    match (&slow, &fast) {
        (Ok(s), Ok(f)) => assert_eq!(s, f, "{}", String::from_utf8_lossy(body)),
        (Err(s), Err(f)) => assert_eq!(
            (s.kind(), s.message()),
            (f.kind(), f.message()),
            "{}",
            String::from_utf8_lossy(body)
        ),
        (s, f) => panic!("{}: {s:?} vs {f:?}", String::from_utf8_lossy(body)),
    }
    match typed_reply(body) {
        Some(typed) => {
            assert_eq!(
                slow.as_ref().ok(),
                Some(&typed),
                "{}",
                String::from_utf8_lossy(body)
            );
            true
        }
        None => false,
    }
}

fn calls(n: usize) -> String {
    let call = r#"{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}"#;
    let list = vec![call; n].join(",");
    format!(r#"{{"choices":[{{"message":{{"content":null,"tool_calls":[{list}]}}}}]}}"#)
}

#[test]
fn common_replies_take_the_typed_pass_and_read_as_parse_completion_does() {
    let typed: [&[u8]; 15] = [
        NGINX,
        br#" { "choices" : [ { "message" : { "content" : null } , "finish_reason" : null } , {"message":null} ] } "#,
        br#"{"choices":[{"message":{"content":"x","tool_calls":null}}],"usage":{"input_tokens":null,"prompt_tokens":9,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":2,"a":[1,-2.5,true,false,null,"s\n"]}}}"#,
        b"{\"choices\":[{\"message\":{\"content\":\"caf\xc3\xa9\"}}],\"usage\":null,\"id\":null,\"timings\":{\"t\":12.345}}",
        br#"{"choices":[{}],"usage":{}}"#,
        br#"{"choices":[{"message":{"content":""}}],"usage":{"output_tokens":1000000000}}"#,
        br#"{"model":"m","choices":[{"message":{"content":"a"}},{"message":{"content":"b"}}]}"#,
        br#"{"choices":[{"message":{"content":"a\nb\u00e9"},"finish_reason":null},{"message":{"content":null}}],"usage":{"input_tokens":3,"prompt_tokens":9,"output_tokens":null}}"#,
        br#"{"choices":[{"message":{"content":"x","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":[1]}"}},{"function":{"name":"g","arguments":{"b":2}}},{"id":7,"function":{"name":"h","arguments":null}},{"function":{"name":"i"}}]}}]}"#,
        br#"{"choices":[{"message":{"tool_calls":[{"id":"c","function":{"name":"f","arguments":"{bad"}},{"id":"d","function":{"name":"f","arguments":"[1]"}}]}}]}"#,
        br#"{"choices":[{"message":{"content":[{"type":"text","text":"parts"},"s",{"type":"output_text","text":{"value":"v"}},{"value":"w"},3]},"finish_reason":7}]}"#,
        br#"{"id":5,"model":["x"],"choices":[{"message":"odd","finish_reason":{"a":1}}],"usage":"lots"}"#,
        br#"{"choices":[{"message":{"content":{"b":1,"a":[2]}}},{"message":{"content":1.5}},{"message":{"content":true}}]}"#,
        br#"{"choices":[{"message":{"content":"a"}}],"choices":[{"message":{"content":"b"}}],"usage":{"prompt_tokens":5},"usage":{"prompt_tokens":2}}"#,
        br#"{"ch\u006fices":[{"m\u0065ssage":{"content":"k"}}]}"#,
    ];
    for b in typed {
        assert!(
            agrees(b),
            "not taken by the typed pass: {}",
            String::from_utf8_lossy(b)
        );
    }
    assert!(agrees(calls(MAX_TOOL_CALLS).as_bytes()));
    let general: [&[u8]; 25] = [
        br#"{"choices":[]}"#,
        br#"{"choices":[],"usage":{}}"#,
        br#"{"choices":{}}"#,
        br#"{"choices":[1]}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1000000001}}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":2000000000}}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1.0}}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1.5}}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":-1}}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":"7"}}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":01}}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"x":1e400}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"x":"\ud800"}"#,
        br#"{"choices":[{"message":{"content":"x"}}]} x"#,
        b"{\"choices\":[{\"message\":{\"content\":\"x\"}}],\"x\":\"\xff\"}",
        b"{\"choices\":[{\"message\":{\"content\":\"a\tb\"}}]}",
        br#"[{"choices":[]}]"#,
        br#"[null,null,[{"message":{"content":"x"}}]]"#,
        br#"{"choices":[[{"content":"x"}]]}"#,
        br#"not json"#,
        br#"{"choices":[{"message":{"tool_calls":{}}}]}"#,
        br#"{"choices":[{"message":{"tool_calls":[{"function":{"name":""}}]}}]}"#,
        br#"{"choices":[{"message":{"tool_calls":[{"function":{"name":"f","arguments":3}}]}}]}"#,
        br#"{"choices":[{"message":{"tool_calls":[{"id":"c"}]}}]}"#,
        br#"{"choices":[{"message":{"tool_calls":["c"]}}]}"#,
    ];
    for b in general {
        assert!(
            !agrees(b),
            "taken by the typed pass: {}",
            String::from_utf8_lossy(b)
        );
    }
}

/// The bodies of the differential test that lived beside the fast path in openai.rs.
#[test]
fn plain_replies_parse_as_parse_completion_does() {
    let bodies: [&[u8]; 18] = [
        br#"{"choices":[{"message":{"content":"x"}}],"usage":{"input_tokens":null,"prompt_tokens":9,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":2}}}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1.5}}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"usage":"lots"}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"usage":{"output_tokens":1000000001}}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":"7"}}"#,
        br#"{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#,
        br#"{"choices":[{"message":{"content":"a\nb\u00e9"},"finish_reason":null},{"message":{"content":null}}],"usage":{"input_tokens":3,"prompt_tokens":9,"output_tokens":null}}"#,
        br#"{"choices":[{"message":{"content":"x","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#,
        br#"{"choices":[{"message":{"content":[{"type":"text","text":"parts"}]},"finish_reason":7}]}"#,
        br#"{"id":5,"model":null,"choices":[{"message":"odd"}],"usage":null}"#,
        br#"{"choices":[],"usage":{}}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":-1}}"#,
        br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":2000000000}}"#,
        br#"{"choices":[{"message":{"content":"a"}}],"choices":[{"message":{"content":"b"}}]}"#,
        br#"[1,2]"#,
        br#"not json"#,
        br#"{"choices":[{"message":{"content":"x"}}]} trailing"#,
        br#"{"choices":[{"message":{"content":"x"}}],"usage":{"completion_tokens":-0.5}}"#,
    ];
    let typed = bodies.iter().filter(|b| agrees(b)).count();
    assert_eq!(typed, 8);
}

#[test]
fn a_reply_with_too_many_tool_calls_is_a_provider_error() {
    let body = calls(MAX_TOOL_CALLS + 1);
    assert!(!agrees(body.as_bytes()));
    let e = parse_reply(body.as_bytes()).unwrap_err();
    assert!(e.is_provider());
    assert_eq!(
        e.message(),
        "Provider response choice 0 has more than 128 tool calls (the limit MAX_TOOL_CALLS)"
    );
    assert_eq!(
        parse_reply(calls(MAX_TOOL_CALLS).as_bytes())
            .unwrap()
            .tool_calls()
            .len(),
        128
    );
}

#[test]
fn nesting_past_serde_jsons_limit_fails_on_both_paths() {
    for depth in [120, 124, 125, 126, 127, 128, 200, 100_000] {
        let mut b = br#"{"choices":[{"message":{"content":"x"}}],"x":"#.to_vec();
        b.extend(std::iter::repeat_n(b'[', depth));
        b.extend(std::iter::repeat_n(b']', depth));
        b.push(b'}');
        agrees(&b);
        let mut b = br#"{"choices":[{"message":{"content":"x","y":"#.to_vec();
        b.extend(std::iter::repeat_n(b'[', depth));
        b.extend(std::iter::repeat_n(b']', depth));
        b.extend(b"}}]}");
        agrees(&b);
    }
}

#[test]
fn every_single_byte_change_reads_as_parse_completion_reads_it() {
    let alphabet = b"{}[]\":,0123456789.-+eEtrufalsn \\\n\x00\xc3\xff";
    let rich: &[u8] = br#"{"choices":[{"message":{"content":"x","tool_calls":[{"id":"c","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":null}],"usage":{"input_tokens":null,"prompt_tokens":9,"completion_tokens":4,"d":{"c":2,"a":[1,-2.5,true,false,null,"s\n"]}}}"#;
    let mut typed = 0;
    for seed in [NGINX, rich] {
        for i in 0..seed.len() {
            for &c in alphabet {
                let mut b = seed.to_vec();
                b[i] = c;
                if agrees(&b) {
                    typed += 1;
                }
                let mut del = seed.to_vec();
                del.remove(i);
                agrees(&del);
                let mut ins = seed.to_vec();
                ins.insert(i, c);
                agrees(&ins);
            }
        }
    }
    assert!(typed > 100, "{typed}");
}

// ---- replies of random shapes ---------------------------------------------------------------

/// A JSON text of chosen bytes: keys may repeat, numbers and strings may be out of range or
/// invalid, so that the general parser's every rule is met.
#[derive(Debug, Clone)]
enum J {
    Lit(&'static str),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
    Deep(usize),
    Calls(usize),
}

impl J {
    fn render(&self, out: &mut Vec<u8>) {
        match self {
            J::Lit(s) => out.extend_from_slice(s.as_bytes()),
            J::Arr(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.render(out);
                }
                out.push(b']');
            }
            J::Obj(fields) => {
                out.push(b'{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(k.as_bytes());
                    out.push(b':');
                    v.render(out);
                }
                out.push(b'}');
            }
            J::Deep(n) => {
                out.extend(std::iter::repeat_n(b'[', *n));
                out.extend(std::iter::repeat_n(b']', *n));
            }
            J::Calls(n) => {
                let call = r#"{"id":"c","function":{"name":"f","arguments":"{}"}}"#;
                out.push(b'[');
                out.extend_from_slice(vec![call; *n].join(",").as_bytes());
                out.push(b']');
            }
        }
    }
}

const SCALARS: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-0",
    "7",
    "1000000000",
    "1000000001",
    "-1",
    "1.0",
    "-2.5",
    "1e2",
    "1e400",
    "18446744073709551616",
    r#""""#,
    r#""plain""#,
    r#""esc\n\u00e9\"""#,
    r#""\ud800""#,
    r#""\ud83e\udd80""#,
    "\"caf\u{e9}\"",
    r#""{\"a\":1}""#,
    r#""{bad""#,
    r#""[1]""#,
    r#""text""#,
    r#""output_text""#,
];

const KEYS: &[&str] = &[
    r#""id""#,
    r#""model""#,
    r#""choices""#,
    r#""usage""#,
    r#""message""#,
    r#""content""#,
    r#""tool_calls""#,
    r#""function""#,
    r#""name""#,
    r#""arguments""#,
    r#""finish_reason""#,
    r#""type""#,
    r#""text""#,
    r#""value""#,
    r#""index""#,
    r#""input_tokens""#,
    r#""prompt_tokens""#,
    r#""output_tokens""#,
    r#""completion_tokens""#,
    r#""c\u006fntent""#,
    r#""x""#,
];

fn scalar() -> impl Strategy<Value = J> {
    prop::sample::select(SCALARS).prop_map(J::Lit)
}

fn any_json() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        8 => scalar(),
        1 => (120usize..132).prop_map(J::Deep),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..4).prop_map(J::Obj),
        ]
    })
}

/// A field `key` whose value has the usual shape three times in four.
fn field(
    key: &'static str,
    good: impl Strategy<Value = J>,
) -> impl Strategy<Value = (&'static str, J)> {
    prop_oneof![3 => good, 1 => any_json()].prop_map(move |v| (key, v))
}

fn obj(fields: impl Strategy<Value = (&'static str, J)>, max: usize) -> impl Strategy<Value = J> {
    prop::collection::vec(fields, 0..max).prop_map(J::Obj)
}

fn other_field() -> impl Strategy<Value = (&'static str, J)> {
    (prop::sample::select(KEYS), any_json())
}

fn function() -> impl Strategy<Value = J> {
    obj(
        prop_oneof![
            field(
                r#""name""#,
                prop::sample::select(&[r#""f""#, r#""""#, r#""g\u0068""#][..]).prop_map(J::Lit)
            ),
            field(r#""arguments""#, scalar()),
            other_field(),
        ],
        4,
    )
}

fn tool_calls() -> impl Strategy<Value = J> {
    let call = obj(
        prop_oneof![
            field(r#""id""#, scalar()),
            field(r#""function""#, function()),
            field(r#""type""#, Just(J::Lit(r#""function""#))),
        ],
        4,
    );
    prop_oneof![
        4 => prop::collection::vec(call, 0..4).prop_map(J::Arr),
        1 => Just(J::Lit("null")),
        1 => prop::sample::select(&[127usize, 128, 129, 130][..]).prop_map(J::Calls),
    ]
}

fn content() -> impl Strategy<Value = J> {
    let part = prop_oneof![
        scalar(),
        obj(
            prop_oneof![
                field(
                    r#""type""#,
                    prop::sample::select(&[r#""text""#, r#""output_text""#, r#""image""#][..])
                        .prop_map(J::Lit)
                ),
                field(
                    r#""text""#,
                    prop_oneof![scalar(), obj(field(r#""value""#, scalar()), 3)]
                ),
                field(r#""value""#, scalar()),
            ],
            4,
        ),
    ];
    prop_oneof![
        4 => scalar(),
        1 => prop::collection::vec(part, 0..4).prop_map(J::Arr),
    ]
}

/// `logprobs`: `{"content": [{"token", "logprob", "top_logprobs"}, …]}` most of the time.
fn logprobs() -> impl Strategy<Value = J> {
    let number = prop_oneof![
        6 => prop::sample::select(&["-0.5", "-0", "0", "-3", "0.25", "-1e308", "-7"][..])
            .prop_map(J::Lit),
        1 => scalar(),
    ];
    let top = prop::sample::select(&["[]", r#"[{"token":"x","logprob":-1.5}]"#, "null"][..]);
    let token = obj(
        prop_oneof![
            3 => field(r#""logprob""#, number),
            1 => field(r#""token""#, scalar()),
            1 => top.prop_map(|t| (r#""top_logprobs""#, J::Lit(t))),
        ],
        4,
    );
    obj(
        prop_oneof![
            6 => prop::collection::vec(token, 0..5).prop_map(|t| (r#""content""#, J::Arr(t))),
            1 => field(r#""content""#, scalar()),
            1 => other_field(),
        ],
        3,
    )
}

fn choice() -> impl Strategy<Value = J> {
    let message = obj(
        prop_oneof![
            field(r#""content""#, content()),
            field(r#""tool_calls""#, tool_calls()),
            field(r#""role""#, Just(J::Lit(r#""assistant""#))),
            other_field(),
        ],
        4,
    );
    obj(
        prop_oneof![
            3 => field(r#""message""#, message),
            3 => field(r#""finish_reason""#, scalar()),
            3 => field(r#""index""#, scalar()),
            2 => logprobs().prop_map(|v| (r#""logprobs""#, v)),
        ],
        4,
    )
}

fn reply() -> impl Strategy<Value = J> {
    let counts = prop_oneof![
        field(r#""input_tokens""#, scalar()),
        field(r#""prompt_tokens""#, scalar()),
        field(r#""output_tokens""#, scalar()),
        field(r#""completion_tokens""#, scalar()),
        other_field(),
    ];
    obj(
        prop_oneof![
            2 => field(r#""choices""#, prop::collection::vec(choice(), 0..3).prop_map(J::Arr)),
            1 => field(r#""usage""#, obj(counts, 4)),
            1 => field(r#""id""#, scalar()),
            1 => field(r#""model""#, scalar()),
            1 => other_field(),
        ],
        6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Replies of random shapes, whole or with one byte changed: both parsers agree.
    #[test]
    fn random_replies_read_as_parse_completion_reads_them(
        body in reply(),
        edit in prop::option::weighted(0.2, (any::<prop::sample::Index>(), any::<u8>())),
    ) {
        let mut b = Vec::new();
        body.render(&mut b);
        if let Some((at, byte)) = edit {
            let i = at.index(b.len());
            b[i] = byte;
        }
        agrees(&b);
    }
}

/// The generator reaches the typed pass often, and its refusals too, and the typed pass reads
/// log-probabilities in some of the replies it takes.
#[test]
fn random_replies_reach_both_paths() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = reply();
    let (mut typed, mut general, mut with_logprobs) = (0, 0, 0);
    for _ in 0..3000 {
        let mut b = Vec::new();
        strategy
            .new_tree(&mut runner)
            .unwrap()
            .current()
            .render(&mut b);
        if agrees(&b) {
            typed += 1;
            let r = typed_reply(&b).unwrap();
            if r.choices.iter().any(|c| c.logprobs.is_some()) {
                with_logprobs += 1;
            }
        } else {
            general += 1;
        }
    }
    assert!(
        typed > 200 && general > 200 && with_logprobs >= 5,
        "{typed} typed ({with_logprobs} with logprobs), {general} general"
    );
}

fn logprob_reply(tokens: &str) -> String {
    format!(
        r#"{{"choices":[{{"message":{{"content":"Paris"}},"logprobs":{{"content":[{tokens}],"refusal":null}},"finish_reason":"stop"}}]}}"#
    )
}

#[test]
fn logprobs_are_summed_on_both_paths() {
    let body = logprob_reply(
        r#"{"token":"Par","logprob":-0.5,"bytes":[80,97,114],"top_logprobs":[{"token":"Lyon","logprob":-2.0}]},{"token":"is","logprob":-1.5,"top_logprobs":[]},{"logprob":0}"#,
    );
    assert!(agrees(body.as_bytes()));
    let r = parse_reply(body.as_bytes()).unwrap();
    let s = r.choices[0].logprobs.unwrap();
    assert_eq!((s.sum, s.tokens), (-2.0, 3));
    assert!((s.weight().unwrap() - (-2.0f64 / 3.0).exp()).abs() < 1e-12);
    // The usual reply without them (`"logprobs": null`) has none.
    assert_eq!(parse_reply(NGINX).unwrap().choices[0].logprobs, None);
    // Several choices each keep their own.
    let two = br#"{"choices":[{"message":{"content":"a"},"logprobs":{"content":[{"logprob":-1}]}},{"message":{"content":"b"}}]}"#;
    assert!(agrees(two));
    let r = parse_reply(two).unwrap();
    assert_eq!(r.choices[0].logprobs.map(|s| s.tokens), Some(1));
    assert_eq!(r.choices[1].logprobs, None);
}

#[test]
fn malformed_logprobs_give_none_and_never_fail_the_reply() {
    for tokens in [
        r#"{"logprob":"-0.5"}"#,             // not a number
        r#"{"logprob":-0.5},{"token":"x"}"#, // one entry without it
        r#"{"logprob":0.5}"#,                // a probability above 1
        r#"{"logprob":null}"#,
        r#"{"logprob":-1e308},{"logprob":-1e308}"#, // the sum overflows
        r#"[-0.5]"#,                                // an entry that is not an object
        r#""x",{"logprob":-1}"#,
        r#"{"logprob":{"v":-1}}"#,
    ] {
        let body = logprob_reply(tokens);
        assert!(agrees(body.as_bytes()), "{tokens}");
        let r = parse_reply(body.as_bytes()).unwrap();
        assert_eq!(
            (r.content(), r.choices[0].logprobs),
            ("Paris", None),
            "{tokens}"
        );
    }
    for logprobs in [
        r#""x""#,
        "[]",
        "7",
        r#"{"content":null}"#,
        r#"{"content":{"logprob":-1}}"#,
    ] {
        let body =
            format!(r#"{{"choices":[{{"message":{{"content":"x"}},"logprobs":{logprobs}}}]}}"#);
        assert!(agrees(body.as_bytes()), "{logprobs}");
        assert_eq!(
            parse_reply(body.as_bytes()).unwrap().choices[0].logprobs,
            None
        );
    }
    // An empty list sums nothing: no mean, no weight.
    let body = logprob_reply("");
    let s = parse_reply(body.as_bytes()).unwrap().choices[0]
        .logprobs
        .unwrap();
    assert_eq!((s.tokens, s.mean(), s.weight()), (0, None, None));
    // Repeated keys: the last wins, as in a `Value`.
    let body = logprob_reply(r#"{"logprob":"x","logprob":-1}"#);
    assert!(agrees(body.as_bytes()));
    assert_eq!(
        parse_reply(body.as_bytes()).unwrap().choices[0]
            .logprobs
            .map(|s| s.sum),
        Some(-1.0)
    );
}

#[test]
fn a_huge_logprobs_list_is_summed_by_the_typed_pass() {
    let token = r#"{"token":"ab","logprob":-0.25,"bytes":[97,98],"top_logprobs":[{"token":"c","logprob":-3.0}]}"#;
    let n = 100_000;
    let body = logprob_reply(&vec![token; n].join(","));
    assert!(body.len() > 8_000_000);
    // The typed pass (which keeps nothing per token) takes it.
    let typed = typed_reply(body.as_bytes()).unwrap();
    let s = typed.choices[0].logprobs.unwrap();
    assert_eq!((s.tokens, s.sum), (n as u64, -0.25 * n as f64));
    assert_eq!(typed, parse_completion(body.as_bytes()).unwrap());
}
