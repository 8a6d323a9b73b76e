//! The `calculator` tool's evaluator: arithmetic only, by a small recursive-descent parser.
//!
//! Nothing is ever evaluated as code. The grammar is numbers (`12`, `3.5`, `.5`), `+ - * / **`,
//! parentheses and unary signs, with Python's precedence (`**` binds tighter than a unary sign on
//! its left and is right-associative: `-2 ** 2` is -4, `2 ** 3 ** 2` is 512). Arithmetic is in
//! `f64`, so a huge power is an overflow error, never a hang or a panic. The input length and the
//! nesting depth are bounded.

use std::fmt;

/// The longest expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 1_000;
/// The deepest nesting accepted (parentheses, unary signs and powers each count a level).
pub const MAX_DEPTH: usize = 64;

/// Why an expression has no value. Messages name a position (1-based, in characters), never
/// quote the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalcError {
    /// Nothing but whitespace.
    Empty,
    /// Longer than [`MAX_EXPRESSION_LEN`].
    TooLong,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A character outside the grammar.
    UnexpectedChar {
        /// The character.
        ch: char,
        /// Its 1-based position.
        at: usize,
    },
    /// A token where another was expected, or the end too early.
    Syntax {
        /// What was expected.
        expected: &'static str,
        /// The 1-based position (one past the end for a premature end).
        at: usize,
    },
    /// A number that does not parse.
    BadNumber {
        /// Its 1-based position.
        at: usize,
    },
    /// `x / 0`.
    DivisionByZero,
    /// A result too large for a 64-bit float.
    Overflow,
    /// A result that is not a real number (e.g. `(-8) ** 0.5`).
    NotReal,
}

impl fmt::Display for CalcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty expression"),
            Self::TooLong => write!(f, "expression longer than {MAX_EXPRESSION_LEN} characters"),
            Self::TooDeep => write!(f, "expression nested deeper than {MAX_DEPTH} levels"),
            Self::UnexpectedChar { ch, at } => {
                let shown = if ch.is_ascii_graphic() {
                    format!("'{ch}'")
                } else {
                    format!("U+{:04X}", u32::from(*ch))
                };
                write!(
                    f,
                    "unexpected character {shown} at position {at} (only numbers, + - * / ** and parentheses are allowed)"
                )
            }
            Self::Syntax { expected, at } => write!(f, "expected {expected} at position {at}"),
            Self::BadNumber { at } => write!(f, "malformed number at position {at}"),
            Self::DivisionByZero => f.write_str("division by zero"),
            Self::Overflow => f.write_str("result too large"),
            Self::NotReal => f.write_str("result is not a real number"),
        }
    }
}

impl std::error::Error for CalcError {}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Num(f64),
    Plus,
    Minus,
    Star,
    Slash,
    Pow,
    LParen,
    RParen,
}

/// Evaluates `expr`.
///
/// # Errors
/// A [`CalcError`] for anything outside the grammar, too long or too deep input, division by
/// zero and results that are infinite or not real.
pub fn evaluate(expr: &str) -> Result<f64, CalcError> {
    if expr.len() > MAX_EXPRESSION_LEN {
        return Err(CalcError::TooLong);
    }
    let tokens = tokenize(expr)?;
    if tokens.is_empty() {
        return Err(CalcError::Empty);
    }
    let mut p = Parser {
        tokens: &tokens,
        pos: 0,
        depth: 0,
    };
    let v = p.expr()?;
    if let Some((_, at)) = p.tokens.get(p.pos) {
        return Err(CalcError::Syntax {
            expected: "an operator or the end",
            at: *at,
        });
    }
    Ok(v)
}

/// Evaluates `expr` and formats the result: an integer without a fraction when it is one
/// (`1411`), else the shortest decimal that round-trips (`0.5`).
///
/// # Errors
/// As [`evaluate`].
pub fn evaluate_to_string(expr: &str) -> Result<String, CalcError> {
    evaluate(expr).map(format_number)
}

/// `1411.0` → `"1411"`; `0.5` → `"0.5"`; `-0.0` → `"0"`.
pub fn format_number(v: f64) -> String {
    // Integers up to 2^53 are exact in f64 and print without a fraction.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if v == 0.0 {
        return "0".to_owned();
    }
    if v.fract() == 0.0 && v.abs() <= EXACT {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// Tokens with their 1-based character positions.
fn tokenize(expr: &str) -> Result<Vec<(Tok, usize)>, CalcError> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let at = i + 1;
        match c {
            c if c.is_whitespace() => i += 1,
            '0'..='9' | '.' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_digit() || *c == '.')
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let v: f64 = text.parse().map_err(|_| CalcError::BadNumber { at })?;
                if !v.is_finite() {
                    return Err(CalcError::Overflow);
                }
                out.push((Tok::Num(v), at));
            }
            '+' => {
                out.push((Tok::Plus, at));
                i += 1;
            }
            '-' => {
                out.push((Tok::Minus, at));
                i += 1;
            }
            '*' if chars.get(i + 1) == Some(&'*') => {
                out.push((Tok::Pow, at));
                i += 2;
            }
            '*' => {
                out.push((Tok::Star, at));
                i += 1;
            }
            '/' => {
                out.push((Tok::Slash, at));
                i += 1;
            }
            '(' => {
                out.push((Tok::LParen, at));
                i += 1;
            }
            ')' => {
                out.push((Tok::RParen, at));
                i += 1;
            }
            ch => return Err(CalcError::UnexpectedChar { ch, at }),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: &'a [(Tok, usize)],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<Tok> {
        self.tokens.get(self.pos).map(|(t, _)| *t)
    }

    /// The position of the next token, or one past the last.
    fn here(&self) -> usize {
        self.tokens.get(self.pos).map_or_else(
            || self.tokens.last().map_or(1, |(_, at)| at + 1),
            |(_, at)| *at,
        )
    }

    fn enter(&mut self) -> Result<(), CalcError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(CalcError::TooDeep);
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// `expr := term (('+' | '-') term)*`
    fn expr(&mut self) -> Result<f64, CalcError> {
        let mut v = self.term()?;
        while let Some(op @ (Tok::Plus | Tok::Minus)) = self.peek() {
            self.pos += 1;
            let r = self.term()?;
            v = if op == Tok::Plus { v + r } else { v - r };
            finite(v)?;
        }
        Ok(v)
    }

    /// `term := unary (('*' | '/') unary)*`
    fn term(&mut self) -> Result<f64, CalcError> {
        let mut v = self.unary()?;
        while let Some(op @ (Tok::Star | Tok::Slash)) = self.peek() {
            self.pos += 1;
            let r = self.unary()?;
            if op == Tok::Star {
                v *= r;
            } else {
                if r == 0.0 {
                    return Err(CalcError::DivisionByZero);
                }
                v /= r;
            }
            finite(v)?;
        }
        Ok(v)
    }

    /// `unary := ('+' | '-') unary | power`
    fn unary(&mut self) -> Result<f64, CalcError> {
        match self.peek() {
            Some(op @ (Tok::Plus | Tok::Minus)) => {
                self.pos += 1;
                self.enter()?;
                let v = self.unary()?;
                self.leave();
                Ok(if op == Tok::Minus { -v } else { v })
            }
            _ => self.power(),
        }
    }

    /// `power := primary ('**' unary)?` (right-associative through `unary`).
    fn power(&mut self) -> Result<f64, CalcError> {
        let base = self.primary()?;
        if self.peek() != Some(Tok::Pow) {
            return Ok(base);
        }
        self.pos += 1;
        self.enter()?;
        let exp = self.unary()?;
        self.leave();
        if base == 0.0 && exp < 0.0 {
            return Err(CalcError::DivisionByZero);
        }
        let v = base.powf(exp);
        if v.is_nan() {
            return Err(CalcError::NotReal);
        }
        finite(v)
    }

    /// `primary := NUMBER | '(' expr ')'`
    fn primary(&mut self) -> Result<f64, CalcError> {
        match self.peek() {
            Some(Tok::Num(v)) => {
                self.pos += 1;
                Ok(v)
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                self.enter()?;
                let v = self.expr()?;
                self.leave();
                if self.peek() != Some(Tok::RParen) {
                    return Err(CalcError::Syntax {
                        expected: "')'",
                        at: self.here(),
                    });
                }
                self.pos += 1;
                Ok(v)
            }
            _ => Err(CalcError::Syntax {
                expected: "a number or '('",
                at: self.here(),
            }),
        }
    }
}

fn finite(v: f64) -> Result<f64, CalcError> {
    if v.is_nan() {
        Err(CalcError::NotReal)
    } else if v.is_infinite() {
        Err(CalcError::Overflow)
    } else {
        Ok(v)
    }
}

/// The fuzz target `calc` (fuzz/), also replayed on its corpus by the tests: never panics, and a
/// result is a finite number that formats.
#[cfg(any(test, fuzzing))]
pub fn fuzz_one(data: &[u8]) {
    let expr = String::from_utf8_lossy(data);
    if let Ok(v) = evaluate(&expr) {
        assert!(v.is_finite(), "{expr:?} gave {v}");
        assert!(!format_number(v).is_empty());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ok(e: &str) -> String {
        evaluate_to_string(e).unwrap()
    }

    #[test]
    fn arithmetic() {
        assert_eq!(ok("17 * 83"), "1411");
        assert_eq!(ok("17*83"), "1411");
        assert_eq!(ok("2 ** 10"), "1024");
        assert_eq!(ok("-3 + 5"), "2");
        assert_eq!(ok("1 + 2 * 3"), "7");
        assert_eq!(ok("(1 + 2) * 3"), "9");
        assert_eq!(ok("7 / 2"), "3.5");
        assert_eq!(ok("1 / 4"), "0.25");
        assert_eq!(ok(".5 + 0.25"), "0.75");
        assert_eq!(ok("10 - 4 - 3"), "3");
        assert_eq!(ok("2 ** 3 ** 2"), "512");
        assert_eq!(ok("-2 ** 2"), "-4");
        assert_eq!(ok("2 ** -1"), "0.5");
        assert_eq!(ok("--3"), "3");
        assert_eq!(ok("+4"), "4");
        assert_eq!(ok("0 * -1"), "0");
        assert_eq!(ok("  ( ( 42 ) )  "), "42");
    }

    #[test]
    fn code_is_rejected_not_run() {
        for e in [
            "__import__('os')",
            "print(1)",
            "os.system('ls')",
            "1; 2",
            "a + 1",
            "1e3",
            "2 ^ 3",
            "1 % 2",
        ] {
            assert!(evaluate(e).is_err(), "{e} should be rejected");
        }
        assert_eq!(
            evaluate("__import__('os')"),
            Err(CalcError::UnexpectedChar { ch: '_', at: 1 })
        );
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(
            evaluate("1 +"),
            Err(CalcError::Syntax {
                expected: "a number or '('",
                at: 4
            })
        );
        assert!(matches!(evaluate("(1 + 2"), Err(CalcError::Syntax { .. })));
        assert!(matches!(evaluate("1 2"), Err(CalcError::Syntax { .. })));
        assert!(matches!(evaluate(")"), Err(CalcError::Syntax { .. })));
        assert!(matches!(evaluate("* 3"), Err(CalcError::Syntax { .. })));
        assert_eq!(evaluate("1..2"), Err(CalcError::BadNumber { at: 1 }));
        assert_eq!(evaluate("   "), Err(CalcError::Empty));
        assert_eq!(evaluate(""), Err(CalcError::Empty));
    }

    #[test]
    fn division_by_zero_and_non_real() {
        assert_eq!(evaluate("1 / 0"), Err(CalcError::DivisionByZero));
        assert_eq!(evaluate("1 / (2 - 2)"), Err(CalcError::DivisionByZero));
        assert_eq!(evaluate("0 ** -1"), Err(CalcError::DivisionByZero));
        assert_eq!(evaluate("(-8) ** 0.5"), Err(CalcError::NotReal));
        assert_eq!(CalcError::DivisionByZero.to_string(), "division by zero");
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let deep = format!("{}1{}", "(".repeat(400), ")".repeat(400));
        assert_eq!(evaluate(&deep), Err(CalcError::TooDeep));
        let minus = format!("{}1", "-".repeat(500));
        assert_eq!(evaluate(&minus), Err(CalcError::TooDeep));
        let pow = vec!["2"; 200].join("**");
        assert_eq!(evaluate(&pow), Err(CalcError::TooDeep));
        let ok_depth = format!("{}1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(evaluate(&ok_depth), Ok(1.0));
    }

    #[test]
    fn huge_numbers_are_bounded() {
        assert_eq!(evaluate("9 ** 9 ** 9"), Err(CalcError::Overflow));
        assert_eq!(evaluate("10 ** 100000000000"), Err(CalcError::Overflow));
        assert_eq!(evaluate("2 ** 1024"), Err(CalcError::Overflow));
        assert_eq!(ok("2 ** 0.5 ** 2"), format_number(2f64.powf(0.25)));
        let long = "1+".repeat(MAX_EXPRESSION_LEN) + "1";
        assert_eq!(evaluate(&long), Err(CalcError::TooLong));
        let many_digits = "9".repeat(400);
        assert_eq!(evaluate(&many_digits), Err(CalcError::Overflow));
    }

    #[test]
    fn formats_integers_without_a_fraction() {
        assert_eq!(format_number(1411.0), "1411");
        assert_eq!(format_number(-0.0), "0");
        assert_eq!(format_number(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(format_number(1e20), "100000000000000000000");
    }
}
