//! The answer as it is generated: `ek react`, `ek map-reduce` and `ek structured` print the
//! text of the call whose text is the value while the server streams it (the library's
//! `RunContext::on_text`), on a terminal by default or with `--stream`; never with `--json`.
//!
//! What is printed is what the run's value line would be: the text, then a newline at the end.
//! Text that turned out not to be the answer (a react turn that went on to call a tool, a
//! structured reply a repair follows) stays printed, ended by a newline; the next call's text
//! follows it. Every byte is redacted like the rest of `ek`'s output: text that could be the
//! start of an echoed secret is held back until it cannot be (the end of its line, or enough
//! text after it), so a key split across deltas is caught too.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};

use executionkit::{RunContext, TextEvent};

use crate::cli::StreamFlags;
use crate::progress::Progress;
use crate::secrets::Secrets;

/// A partial line holding an echo of a secret is held until its line ends, or until it is this
/// long (then it is printed redacted).
const MAX_HELD: usize = 64 * 1024;

/// `true` when the run prints its answer as it is generated: a command that can (`flags` is
/// `Some`), not `--json`, not `--no-stream`, and `--stream` or stdout a terminal.
pub fn wanted(flags: Option<StreamFlags>, json: bool) -> bool {
    match flags {
        Some(f) if !json && !f.no_stream => f.stream || std::io::stdout().is_terminal(),
        _ => false,
    }
}

/// Prints the streamed text of one run on stdout (or any writer, in tests).
#[derive(Clone)]
pub struct Streamer(Arc<Mutex<State>>);

struct State {
    out: Box<dyn Write + Send>,
    secrets: Secrets,
    /// How much of a partial line is held back: the longest echo of a secret (double
    /// percent-encoding writes each byte as 5).
    hold: usize,
    /// Received, not yet printed.
    pending: String,
    /// Anything printed at all.
    printed: bool,
    /// Anything printed since the start or the last `Superseded`.
    printed_since: bool,
    /// Cleared at the first text: the bar and the answer share the terminal.
    progress: Option<Progress>,
}

impl Streamer {
    /// A streamer printing on stdout; `progress` is cleared when the first text arrives.
    pub fn stdout(secrets: Secrets, progress: Option<Progress>) -> Self {
        Self::new(Box::new(std::io::stdout()), secrets, progress)
    }

    fn new(out: Box<dyn Write + Send>, secrets: Secrets, progress: Option<Progress>) -> Self {
        let hold = secrets.longest().saturating_mul(5);
        Self(Arc::new(Mutex::new(State {
            out,
            secrets,
            hold,
            pending: String::new(),
            printed: false,
            printed_since: false,
            progress,
        })))
    }

    /// `ctx`, its answer text printed by this streamer.
    pub fn attach(&self, ctx: RunContext) -> RunContext {
        let s = self.clone();
        ctx.on_text(move |e| s.on_text(e))
    }

    fn on_text(&self, event: TextEvent<'_>) {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            TextEvent::Delta(d) => s.push(d),
            TextEvent::Superseded => {
                s.flush_all();
                if s.printed_since {
                    s.write("\n");
                }
                s.printed_since = false;
            }
            _ => {}
        }
    }

    /// Prints what is held back and the final newline. `true` when any text was printed: the
    /// value line is then not printed again.
    pub fn finish(&self) -> bool {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.flush_all();
        if s.printed {
            s.write("\n");
        }
        s.printed
    }
}

impl State {
    fn push(&mut self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        if let Some(p) = self.progress.take() {
            p.hide();
        }
        self.printed = true;
        self.printed_since = true;
        self.pending.push_str(delta);
        // Whole lines: every echo in them is whole too.
        if let Some(nl) = self.pending.rfind('\n') {
            let lines: String = self.pending.drain(..=nl).collect();
            self.write_redacted(&lines);
        }
        if self.hold == 0 {
            self.flush_all();
            return;
        }
        let clean = matches!(
            self.secrets.text(&self.pending),
            std::borrow::Cow::Borrowed(_)
        );
        if clean && self.pending.len() > self.hold {
            // No echo so far: an echo still to come ends after the held tail, so it starts in it.
            let mut cut = self.pending.len() - self.hold;
            while !self.pending.is_char_boundary(cut) {
                cut -= 1;
            }
            let head: String = self.pending.drain(..cut).collect();
            self.write(&head);
        } else if self.pending.len() > MAX_HELD {
            self.flush_all();
        }
    }

    fn flush_all(&mut self) {
        let all = std::mem::take(&mut self.pending);
        self.write_redacted(&all);
    }

    fn write_redacted(&mut self, text: &str) {
        if !text.is_empty() {
            let t = self.secrets.text(text).into_owned();
            self.write(&t);
        }
    }

    fn write(&mut self, text: &str) {
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn streamer(secrets: &[&str]) -> (Streamer, Buf) {
        let buf = Buf::default();
        let secrets = Secrets::new(secrets.iter().map(|s| (*s).to_owned()));
        (Streamer::new(Box::new(buf.clone()), secrets, None), buf)
    }

    #[test]
    fn prints_each_delta_at_once_without_secrets_and_ends_with_a_newline() {
        let (s, buf) = streamer(&[]);
        s.on_text(TextEvent::Delta("The ans"));
        assert_eq!(buf.text(), "The ans");
        s.on_text(TextEvent::Delta("wer."));
        assert_eq!(buf.text(), "The answer.");
        assert!(s.finish());
        assert_eq!(buf.text(), "The answer.\n");
    }

    #[test]
    fn superseded_text_is_ended_by_a_newline() {
        let (s, buf) = streamer(&[]);
        s.on_text(TextEvent::Delta("Let me check."));
        s.on_text(TextEvent::Superseded);
        s.on_text(TextEvent::Delta("42"));
        assert!(s.finish());
        assert_eq!(buf.text(), "Let me check.\n42\n");
    }

    #[test]
    fn nothing_printed_means_the_value_line_is_still_due() {
        let (s, buf) = streamer(&[]);
        assert!(!s.finish());
        assert_eq!(buf.text(), "");
    }

    #[test]
    fn a_secret_split_across_deltas_is_redacted_and_text_still_flows() {
        let key = "sk-test-0123456789abcdef";
        let (s, buf) = streamer(&[key]);
        let long = "x".repeat(200);
        s.on_text(TextEvent::Delta(&long));
        // Everything but the held tail is out already.
        assert_eq!(buf.text().len(), 200 - 5 * key.len());
        s.on_text(TextEvent::Delta(" key sk-test-0123"));
        s.on_text(TextEvent::Delta("456789ab"));
        s.on_text(TextEvent::Delta("cdef and "));
        s.on_text(TextEvent::Delta("SK-TEST-0123456789ABCDEF done"));
        assert!(s.finish());
        let out = buf.text();
        assert!(!out.to_lowercase().contains("0123456789"), "{out}");
        assert!(
            out.ends_with("key [REDACTED] and [REDACTED] done\n"),
            "{out}"
        );
    }

    #[test]
    fn whole_lines_are_printed_at_once_even_with_secrets() {
        let (s, buf) = streamer(&["sk-test-0123456789abcdef"]);
        s.on_text(TextEvent::Delta("line one\nli"));
        assert_eq!(buf.text(), "line one\n");
    }

    #[test]
    fn streams_only_when_asked_or_on_a_terminal_never_with_json() {
        let on = StreamFlags {
            stream: true,
            no_stream: false,
        };
        let off = StreamFlags {
            stream: false,
            no_stream: true,
        };
        assert!(wanted(Some(on), false));
        assert!(!wanted(Some(on), true));
        assert!(!wanted(Some(off), false));
        assert!(!wanted(None, false));
    }
}
