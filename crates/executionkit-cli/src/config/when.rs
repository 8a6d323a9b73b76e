//! The `when` of a router rule in the config file: comparisons joined by `and`, parsed into
//! [`Cond`]s and evaluated on a [`RouteRequest`].

use executionkit::RouteRequest;

/// One comparison of a rule's `when`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cond {
    PromptTokens(Cmp, u64),
    HasTools(bool),
    /// `tier == 'x'` (true) or `tier != 'x'` (false).
    Tier(bool, String),
    /// `model == 'x'` (true) or `model != 'x'` (false).
    Model(bool, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Cmp {
    fn holds(self, a: u64, b: u64) -> bool {
        match self {
            Self::Lt => a < b,
            Self::Le => a <= b,
            Self::Gt => a > b,
            Self::Ge => a >= b,
            Self::Eq => a == b,
            Self::Ne => a != b,
        }
    }
}

impl Cond {
    pub(super) fn holds(&self, r: &RouteRequest<'_>) -> bool {
        match self {
            Self::PromptTokens(cmp, n) => cmp.holds(r.prompt_tokens, *n),
            Self::HasTools(want) => r.has_tools == *want,
            Self::Tier(eq, t) => (r.tier == Some(t.as_str())) == *eq,
            Self::Model(eq, m) => (r.model == Some(m.as_str())) == *eq,
        }
    }
}

/// Parses a rule's `when`: comparisons joined by `and`.
///
/// `prompt_tokens OP N` (OP one of `<`, `<=`, `>`, `>=`, `==`, `!=`), `has_tools`,
/// `not has_tools`, `has_tools == true|false`, `tier == 'T'`, `tier != 'T'`, `model == 'M'`,
/// `model != 'M'` (single or double quotes).
pub(super) fn parse_when(text: &str) -> Result<Vec<Cond>, String> {
    let tokens = tokenize(text)?;
    let mut conds = Vec::new();
    let mut it = tokens.iter().peekable();
    loop {
        let negated = matches!(it.peek(), Some(Tok::Word(w)) if w == "not");
        if negated {
            it.next();
        }
        let field = match it.next() {
            Some(Tok::Word(w)) => w.as_str(),
            Some(t) => {
                return Err(format!(
                    "expected a field (prompt_tokens, has_tools, tier, model), got {t}"
                ));
            }
            None => {
                return Err(
                    "expected a field (prompt_tokens, has_tools, tier, model), got the end"
                        .to_owned(),
                );
            }
        };
        let cond = match field {
            "has_tools" => {
                let value = match it.peek() {
                    Some(Tok::Op(op @ ("==" | "!="))) => {
                        let eq = *op == "==";
                        it.next();
                        let b = match it.next() {
                            Some(Tok::Word(w)) if w == "true" => true,
                            Some(Tok::Word(w)) if w == "false" => false,
                            Some(t) => {
                                return Err(format!(
                                    "has_tools compares with true or false, got {t}"
                                ));
                            }
                            None => {
                                return Err(
                                    "has_tools compares with true or false, got the end".to_owned()
                                );
                            }
                        };
                        b == eq
                    }
                    _ => true,
                };
                Cond::HasTools(value != negated)
            }
            _ if negated => return Err(format!("`not` goes only before has_tools, not {field}")),
            "prompt_tokens" => {
                let cmp = match it.next() {
                    Some(Tok::Op(op)) => match *op {
                        "<" => Cmp::Lt,
                        "<=" => Cmp::Le,
                        ">" => Cmp::Gt,
                        ">=" => Cmp::Ge,
                        "==" => Cmp::Eq,
                        _ => Cmp::Ne,
                    },
                    Some(t) => {
                        return Err(format!(
                            "expected <, <=, >, >=, == or != after prompt_tokens, got {t}"
                        ));
                    }
                    None => {
                        return Err(
                            "expected <, <=, >, >=, == or != after prompt_tokens, got the end"
                                .to_owned(),
                        );
                    }
                };
                match it.next() {
                    Some(Tok::Int(n)) => Cond::PromptTokens(cmp, *n),
                    Some(t) => {
                        return Err(format!(
                            "prompt_tokens compares with a whole number, got {t}"
                        ));
                    }
                    None => {
                        return Err(
                            "prompt_tokens compares with a whole number, got the end".to_owned()
                        );
                    }
                }
            }
            "tier" | "model" => {
                let eq = match it.next() {
                    Some(Tok::Op("==")) => true,
                    Some(Tok::Op("!=")) => false,
                    Some(t) => return Err(format!("expected == or != after {field}, got {t}")),
                    None => return Err(format!("expected == or != after {field}, got the end")),
                };
                let value = match it.next() {
                    Some(Tok::Str(s)) => s.clone(),
                    Some(t) => {
                        return Err(format!(
                            "{field} compares with a quoted string ('…'), got {t}"
                        ));
                    }
                    None => {
                        return Err(format!(
                            "{field} compares with a quoted string ('…'), got the end"
                        ));
                    }
                };
                if field == "tier" {
                    Cond::Tier(eq, value)
                } else {
                    Cond::Model(eq, value)
                }
            }
            other => {
                return Err(format!(
                    "unknown field `{other}`; valid fields: prompt_tokens, has_tools, tier, model"
                ));
            }
        };
        conds.push(cond);
        match it.next() {
            None => return Ok(conds),
            Some(Tok::Word(w)) if w == "and" => {}
            Some(t) => return Err(format!("expected `and` or the end, got {t}")),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Int(u64),
    Str(String),
    Op(&'static str),
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Word(w) => write!(f, "`{w}`"),
            Self::Int(n) => write!(f, "`{n}`"),
            Self::Str(s) => write!(f, "'{s}'"),
            Self::Op(o) => write!(f, "`{o}`"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut w = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    w.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Tok::Word(w));
        } else if c.is_ascii_digit() {
            let mut w = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c.is_ascii_digit() || c == '_' {
                    if c != '_' {
                        w.push(c);
                    }
                    chars.next();
                } else {
                    break;
                }
            }
            let n = w
                .parse()
                .map_err(|_| format!("the number {w} is too large"))?;
            out.push(Tok::Int(n));
        } else if c == '\'' || c == '"' {
            chars.next();
            let mut s = String::new();
            let mut closed = false;
            for (_, d) in chars.by_ref() {
                if d == c {
                    closed = true;
                    break;
                }
                s.push(d);
            }
            if !closed {
                return Err(format!(
                    "the string starting at character {} has no closing {c}",
                    i + 1
                ));
            }
            out.push(Tok::Str(s));
        } else {
            let rest = &text[i..];
            let op = ["<=", ">=", "==", "!=", "<", ">"]
                .into_iter()
                .find(|op| rest.starts_with(op));
            match op {
                Some(op) => {
                    for _ in 0..op.len() {
                        chars.next();
                    }
                    out.push(Tok::Op(op));
                }
                None if c == '!' => {
                    chars.next();
                    out.push(Tok::Word("not".to_owned()));
                }
                None if rest.starts_with("&&") => {
                    chars.next();
                    chars.next();
                    out.push(Tok::Word("and".to_owned()));
                }
                None => return Err(format!("unexpected `{c}` at character {}", i + 1)),
            }
        }
    }
    if out.is_empty() {
        return Err("the condition is empty".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn when_expressions() {
        use executionkit::{ChatRequest, Message, ToolSpec};
        let small = ChatRequest::new(vec![Message::user("hi")]);
        let best = ChatRequest::new(vec![Message::user("hi")]).tier("best");
        let tools = ChatRequest::new(vec![Message::user("hi")]).tools(vec![ToolSpec::new(
            "t",
            "d",
            serde_json::json!({"type": "object"}),
        )]);
        let eval = |w: &str, r: &ChatRequest| {
            let conds = parse_when(w).unwrap();
            let seen = RouteRequest::of(r);
            conds.iter().all(|c| c.holds(&seen))
        };
        assert!(eval("prompt_tokens < 2000", &small));
        assert!(!eval("prompt_tokens >= 2_000", &small));
        assert!(eval("tier == 'best'", &best) && !eval("tier == \"best\"", &small));
        assert!(eval("tier != 'best'", &small));
        assert!(eval("has_tools", &tools) && !eval("has_tools", &small));
        assert!(eval("not has_tools", &small) && eval("!has_tools", &small));
        assert!(eval("has_tools == false", &small));
        assert!(eval("prompt_tokens < 100 and tier == 'best'", &best));
        assert!(!eval("prompt_tokens < 100 && tier == 'best'", &small));
        for (bad, needle) in [
            ("", "empty"),
            ("tokens < 3", "unknown field `tokens`"),
            ("tier == best", "quoted string"),
            ("tier < 'x'", "== or !="),
            ("prompt_tokens < 3 or tier == 'x'", "`and` or the end"),
            ("tier == 'x", "no closing"),
            ("not tier == 'x'", "only before has_tools"),
            ("prompt_tokens < 99999999999999999999999", "too large"),
            ("prompt_tokens # 3", "unexpected `#`"),
        ] {
            let e = parse_when(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
