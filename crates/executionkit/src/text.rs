//! Text cut to a number of characters, always on a character boundary: the one helper behind
//! every bounded echo of the crate (error details, quoted names, excerpts, observations).
//! Lengths are counted in `char`s (Unicode scalar values), never bytes, so a cut never splits
//! a character.

use std::borrow::Cow;

/// The first `max` characters of `s`, or all of `s` when it has no more. Borrowed from `s`:
/// nothing is copied.
pub(crate) fn prefix(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => s.get(..end).unwrap_or(s),
        None => s,
    }
}

/// `s` as it is when it has at most `max` characters (borrowed), else its first `max`
/// characters followed by `marker` (so at most `max` characters of `s`, plus the marker).
pub(crate) fn cut_with<'a>(s: &'a str, max: usize, marker: &str) -> Cow<'a, str> {
    let kept = prefix(s, max);
    if kept.len() == s.len() {
        Cow::Borrowed(s)
    } else {
        let mut out = String::with_capacity(kept.len() + marker.len());
        out.push_str(kept);
        out.push_str(marker);
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_counts_characters_not_bytes() {
        assert_eq!(prefix("abcdef", 3), "abc");
        assert_eq!(prefix("abc", 3), "abc");
        assert_eq!(prefix("abc", 10), "abc");
        assert_eq!(prefix("abc", 0), "");
        assert_eq!(prefix("", 5), "");
        // Two-, three- and four-byte characters are kept whole.
        assert_eq!(prefix("héllo", 2), "hé");
        assert_eq!(prefix("日本語のテキスト", 3), "日本語");
        assert_eq!(prefix("a😀b😀c", 2), "a😀");
        assert_eq!(prefix("😀😀", 1), "😀");
        // A combining mark is a character of its own.
        assert_eq!(prefix("e\u{301}x", 1), "e");
    }

    #[test]
    fn prefix_borrows_from_its_input() {
        let s = "日本語のテキスト";
        let p = prefix(s, 2);
        assert_eq!(p.as_ptr(), s.as_ptr());
        assert_eq!(p.len(), "日本".len());
    }

    #[test]
    fn cut_with_marks_only_text_that_was_cut() {
        assert!(matches!(cut_with("abc", 3, "…"), Cow::Borrowed("abc")));
        assert!(matches!(cut_with("", 0, "…"), Cow::Borrowed("")));
        assert_eq!(cut_with("abcd", 3, "…"), "abc…");
        assert_eq!(cut_with("abcd", 0, "[cut]"), "[cut]");
        assert_eq!(
            cut_with("日本語のテキスト", 3, "\n[truncated]"),
            "日本語\n[truncated]"
        );
        assert_eq!(cut_with("😀😀😀", 2, "…"), "😀😀…");
    }
}
