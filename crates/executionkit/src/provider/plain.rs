//! A single-pass reader for the common chat-completion reply (the hot path of
//! [`Provider`](super::Provider)): plain strings (no escapes), whole-number usage, no tool
//! calls. It answers `None` for anything else, and the caller falls back to the general parser,
//! so the result is always what [`parse_completion`](super::parse::parse_completion) gives.
//!
//! Every byte is checked as JSON (strings are valid UTF-8 without control characters, numbers
//! follow the grammar, nesting is bounded); nothing here indexes past the input or panics.

use super::parse::MAX_REPORTED_TOKENS;
use super::{Choice, LlmResponse, Usage};

/// Deepest nesting skipped (serde_json's own limit is 128).
const MAX_DEPTH: u32 = 100;

/// The index of the first `"`, `\\` or control character (< 0x20) in `s`, eight bytes at a
/// time (the last few bytes too, in a zero-padded word: a padding byte counts as a control
/// character, so a hit there means "none in `s`").
fn find_special(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte that is zero in `x`; exact for the lowest such byte, which is
    // the only one used.
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let hit = |x: u64| {
        // A byte < 0x20 has its top three bits clear: (x & 0xe0..) has a zero byte there.
        has_zero(x ^ (ONES * u64::from(b'"')))
            | has_zero(x ^ (ONES * u64::from(b'\\')))
            | has_zero(x & (ONES * 0xe0))
    };
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for chunk in chunks.by_ref() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let h = hit(u64::from_le_bytes(word));
        if h != 0 {
            return Some(base + (h.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    let rest = chunks.remainder();
    let mut word = [0u8; 8];
    word.get_mut(..rest.len())?.copy_from_slice(rest);
    let h = hit(u64::from_le_bytes(word));
    let i = (h.trailing_zeros() / 8) as usize; // 8 when no byte hit (h == 0 cannot happen here)
    (i < rest.len()).then_some(base + i)
}

struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn lit(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A string without escapes (the cursor is on its opening quote).
    fn plain_str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let rest = self.b.get(self.i..)?;
        let n = find_special(rest)?;
        if rest.get(n) != Some(&b'"') {
            return None;
        }
        let s = std::str::from_utf8(rest.get(..n)?).ok()?;
        self.i += n + 1;
        Some(s)
    }

    /// A key without escapes, as bytes (checked as UTF-8 only when it is not ASCII).
    fn key(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let rest = self.b.get(self.i..)?;
        let n = find_special(rest)?;
        if rest.get(n) != Some(&b'"') {
            return None;
        }
        let key = rest.get(..n)?;
        if !key.is_ascii() {
            std::str::from_utf8(key).ok()?;
        }
        self.i += n + 1;
        Some(key)
    }

    /// Skips a string whose escapes are the simple ones (`\uXXXX` is left to the general parser).
    fn skip_str(&mut self) -> Option<()> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            let rest = self.b.get(self.i..)?;
            let n = find_special(rest)?;
            self.i += n;
            match rest.get(n..n + 2)? {
                [b'"', _] => break,
                [
                    b'\\',
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't',
                ] => {
                    self.i += 2;
                }
                _ => return None,
            }
        }
        std::str::from_utf8(self.b.get(start..self.i)?).ok()?;
        self.i += 1;
        Some(())
    }

    /// Skips a number: `-?(0|[1-9][0-9]*)(.[0-9]+)?`, at most 24 bytes (no exponent).
    fn skip_number(&mut self) -> Option<()> {
        let start = self.i;
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let int_start = self.i;
        self.digits();
        let int = self.b.get(int_start..self.i)?;
        if int.is_empty() || (int.len() > 1 && int[0] == b'0') {
            return None;
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            let frac_start = self.i;
            self.digits();
            if self.i == frac_start {
                return None;
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) || self.i - start > 24 {
            return None;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
    }

    /// A whole number of tokens (`0` or `[1-9][0-9]*`, at most [`MAX_REPORTED_TOKENS`]) or
    /// `null` (`Some(None)`).
    fn count(&mut self) -> Option<Option<u64>> {
        match self.peek()? {
            b'n' => self.lit(b"null").map(|()| None),
            b'0'..=b'9' => {
                let start = self.i;
                self.digits();
                let d = self.b.get(start..self.i)?;
                if d.len() > 10 || (d.len() > 1 && d[0] == b'0') {
                    return None;
                }
                if matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
                    return None;
                }
                let n = d.iter().fold(0u64, |n, &c| n * 10 + u64::from(c - b'0'));
                (n <= MAX_REPORTED_TOKENS).then_some(Some(n))
            }
            _ => None,
        }
    }

    fn skip_value(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.skip_str(),
            b'{' => self.object(|cur, _| cur.skip_value(depth + 1)),
            b'[' => {
                self.i += 1;
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b't' => self.lit(b"true"),
            b'f' => self.lit(b"false"),
            b'n' => self.lit(b"null"),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => None,
        }
    }

    /// An object: `each(cursor, key)` reads every value. Keys with escapes are refused.
    fn object(&mut self, mut each: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let key = self.key()?;
            self.eat(b':')?;
            each(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A plain string or `null`.
    fn opt_str(&mut self) -> Option<Option<&'a str>> {
        match self.peek()? {
            b'"' => self.plain_str().map(Some),
            b'n' => self.lit(b"null").map(|()| None),
            _ => None,
        }
    }
}

/// Sets `slot` once; a repeated key refuses the reply (the general parser keeps the last).
fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(())
}

fn choice<'a>(cur: &mut Cur<'a>) -> Option<Choice> {
    let mut message: Option<Option<&'a str>> = None; // content (None: absent or null)
    let mut finish: Option<Option<&'a str>> = None;
    cur.object(|cur, key| match key {
        b"message" => {
            let content = if cur.peek()? == b'n' {
                cur.lit(b"null")?;
                None
            } else {
                let mut content: Option<Option<&'a str>> = None;
                let mut tool_calls = false;
                cur.object(|cur, key| match key {
                    b"content" => once(&mut content, cur.opt_str()?),
                    b"tool_calls" => {
                        if tool_calls {
                            return None;
                        }
                        tool_calls = true;
                        cur.lit(b"null") // any tool call goes to the general parser
                    }
                    _ => cur.skip_value(2),
                })?;
                content.flatten()
            };
            once(&mut message, content)
        }
        b"finish_reason" => once(&mut finish, cur.opt_str()?),
        _ => cur.skip_value(1),
    })?;
    Some(Choice {
        content: message.flatten().unwrap_or_default().to_owned(),
        tool_calls: Vec::new(),
        finish_reason: finish.flatten().map(str::to_owned),
    })
}

fn usage(cur: &mut Cur<'_>) -> Option<Usage> {
    if cur.peek()? == b'n' {
        cur.lit(b"null")?;
        return Some(Usage::default());
    }
    let (mut input, mut prompt, mut output, mut completion) = (None, None, None, None);
    let (mut cached, mut reasoning) = (None, None);
    cur.object(|cur, key| match key {
        b"input_tokens" => once(&mut input, cur.count()?),
        b"prompt_tokens" => once(&mut prompt, cur.count()?),
        b"output_tokens" => once(&mut output, cur.count()?),
        b"completion_tokens" => once(&mut completion, cur.count()?),
        b"prompt_tokens_details" => once(&mut cached, detail(cur, b"cached_tokens")?),
        b"completion_tokens_details" => once(&mut reasoning, detail(cur, b"reasoning_tokens")?),
        _ => cur.skip_value(1),
    })?;
    let pick = |a: Option<Option<u64>>, b: Option<Option<u64>>| a.or(b).flatten().unwrap_or(0);
    let (input_tokens, output_tokens) = (pick(input, prompt), pick(output, completion));
    Some(Usage {
        input_tokens,
        output_tokens,
        cache_read_input_tokens: cached.flatten().unwrap_or(0).min(input_tokens),
        reasoning_tokens: reasoning.flatten().unwrap_or(0).min(output_tokens),
        ..Usage::default()
    })
}

/// A `*_tokens_details` object (or `null`) and its count under `name` (as `with_usage_details`
/// reads it: a repeated or odd count goes to the general parser).
fn detail(cur: &mut Cur<'_>, name: &[u8]) -> Option<Option<u64>> {
    if cur.peek()? == b'n' {
        cur.lit(b"null")?;
        return Some(None);
    }
    let mut count: Option<Option<u64>> = None;
    cur.object(|cur, key| {
        if key == name {
            once(&mut count, cur.count()?)
        } else {
            cur.skip_value(2)
        }
    })?;
    Some(count.flatten())
}

/// The reply, when `body` has the common shape; `None` sends it to the general parser.
pub(crate) fn scan(body: &[u8]) -> Option<LlmResponse> {
    let mut cur = Cur { b: body, i: 0 };
    let (mut id, mut model, mut choices, mut use_) = (None, None, None, None);
    cur.object(|cur, key| match key {
        b"id" => once(&mut id, cur.opt_str()?),
        b"model" => once(&mut model, cur.opt_str()?),
        b"choices" => {
            cur.eat(b'[')?;
            let mut list = Vec::with_capacity(1);
            loop {
                list.push(choice(cur)?);
                match cur.peek()? {
                    b',' => cur.i += 1,
                    b']' => {
                        cur.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
            once(&mut choices, list)
        }
        b"usage" => once(&mut use_, usage(cur)?),
        _ => cur.skip_value(1),
    })?;
    cur.ws();
    if cur.i != body.len() {
        return None;
    }
    Some(LlmResponse {
        choices: choices?,
        usage: use_.unwrap_or_default(),
        id: id.flatten().map(str::to_owned),
        model: model.flatten().map(str::to_owned),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::provider::parse::parse_completion;

    const NGINX: &[u8] = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#;

    /// Whatever `scan` accepts, `parse_completion` reads the same way.
    fn agrees(body: &[u8]) -> bool {
        match scan(body) {
            Some(fast) => {
                let slow = parse_completion(body);
                assert_eq!(
                    slow.as_ref().ok(),
                    Some(&fast),
                    "{}",
                    String::from_utf8_lossy(body)
                );
                true
            }
            None => false,
        }
    }

    #[test]
    fn common_replies_are_read_as_the_general_parser_reads_them() {
        let accepted: [&[u8]; 7] = [
            NGINX,
            br#" { "choices" : [ { "message" : { "content" : null } , "finish_reason" : null } , {"message":null} ] } "#,
            br#"{"choices":[{"message":{"content":"x","tool_calls":null}}],"usage":{"input_tokens":null,"prompt_tokens":9,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":2,"a":[1,-2.5,true,false,null,"s\n"]}}}"#,
            b"{\"choices\":[{\"message\":{\"content\":\"caf\xc3\xa9\"}}],\"usage\":null,\"id\":null,\"timings\":{\"t\":12.345}}",
            br#"{"choices":[{}],"usage":{}}"#,
            br#"{"choices":[{"message":{"content":""}}],"usage":{"output_tokens":1000000000}}"#,
            br#"{"model":"m","choices":[{"message":{"content":"a"}},{"message":{"content":"b"}}]}"#,
        ];
        for b in accepted {
            assert!(agrees(b), "not accepted: {}", String::from_utf8_lossy(b));
        }
        let refused: [&[u8]; 16] = [
            br#"{"choices":[]}"#,
            br#"{"choices":[{"message":{"content":"a\nb"}}]}"#,
            br#"{"choices":[{"message":{"content":"x","tool_calls":[]}}]}"#,
            br#"{"choices":[{"message":{"content":[{"type":"text","text":"p"}]}}]}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1000000001}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1.0}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":-1}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":01}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"x":1e5}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"x":"\u0041"}"#,
            br#"{"choices":[{"message":{"content":"x"}}]} x"#,
            br#"{"choices":[{"message":{"content":"x"}}],"choices":[]}"#,
            br#"{"id":5,"choices":[{"message":{"content":"x"}}]}"#,
            b"{\"choices\":[{\"message\":{\"content\":\"\xff\"}}]}",
            b"{\"choices\":[{\"message\":{\"content\":\"a\tb\"}}]}",
            br#"[{"choices":[]}]"#,
        ];
        for b in refused {
            assert!(
                scan(b).is_none(),
                "accepted: {}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn usage_details_are_read_as_the_general_parser_reads_them() {
        let accepted: [&[u8]; 4] = [
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":9,"completion_tokens":40,"prompt_tokens_details":{"cached_tokens":6,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":32,"accepted_prediction_tokens":0}}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":9,"completion_tokens":4,"prompt_tokens_details":null,"completion_tokens_details":{}}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":9,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":50},"completion_tokens_details":{"reasoning_tokens":null}}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"completion_tokens_details":{"reasoning_tokens":3},"completion_tokens":4}}"#,
        ];
        for b in accepted {
            assert!(agrees(b), "not accepted: {}", String::from_utf8_lossy(b));
        }
        let r = scan(accepted[0]).unwrap();
        assert_eq!(
            (r.usage.cache_read_input_tokens, r.usage.reasoning_tokens),
            (6, 32)
        );
        // A cache count above the prompt is capped at it, as the general parser caps it.
        assert_eq!(scan(accepted[2]).unwrap().usage.cache_read_input_tokens, 9);
        let refused: [&[u8]; 4] = [
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":2}}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":1.0}}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":9,"prompt_tokens_details":5}}"#,
            br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":9,"prompt_tokens_details":{},"prompt_tokens_details":{}}}"#,
        ];
        for b in refused {
            assert!(
                scan(b).is_none(),
                "accepted: {}",
                String::from_utf8_lossy(b)
            );
            parse_completion(b).unwrap(); // the general parser reads it (details count 0 or last)
        }
    }

    #[test]
    fn special_bytes_are_found_at_every_offset() {
        for len in 0..40 {
            for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                let mut v = vec![b'a'; len];
                assert_eq!(find_special(&v), None);
                for at in 0..len {
                    v.fill(0xe9);
                    v[at] = special;
                    assert_eq!(find_special(&v), Some(at), "{len} {at} {special}");
                }
            }
        }
        assert_eq!(find_special(b" !#[]\x7f\xff\x80 ~"), None);
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let mut b = br#"{"choices":[{"message":{"content":"x"}}],"x":"#.to_vec();
        b.extend(std::iter::repeat_n(b'[', 100_000));
        assert!(scan(&b).is_none());
    }

    #[test]
    fn every_single_byte_change_is_refused_or_read_as_the_general_parser_reads_it() {
        let alphabet = b"{}[]\":,0123456789.-+eEtrufalsn \\\n\x00\xc3\xff";
        let rich: &[u8] = br#"{"choices":[{"message":{"content":"x","tool_calls":null},"finish_reason":null}],"usage":{"input_tokens":null,"prompt_tokens":9,"completion_tokens":4,"d":{"c":2,"a":[1,-2.5,true,false,null,"s\n"]}}}"#;
        let mut accepted = 0;
        for seed in [NGINX, rich] {
            for i in 0..seed.len() {
                for &c in alphabet {
                    let mut b = seed.to_vec();
                    b[i] = c;
                    if agrees(&b) {
                        accepted += 1;
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
        assert!(accepted > 100, "{accepted}");
    }
}
