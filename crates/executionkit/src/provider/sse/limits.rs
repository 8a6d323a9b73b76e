//! [`StreamLimits`]: what one streamed reply may make the client hold, and its defaults.

use crate::provider::parse::MAX_TOOL_CALLS;

/// One mebibyte.
const MIB: usize = 1 << 20;

/// Bounds on what one streamed reply may make the client hold. Every limit passed ends the
/// stream with a `provider` error whose message names the limit (`StreamLimits::…`).
///
/// The first three are counted in raw bytes received, before the bytes are split into events
/// (by the byte-stream adapter the provider puts in front of the SSE parser); the others by
/// `StreamAccumulator` on what the events carry.
///
/// ```
/// use executionkit::{internals::sse::StreamAccumulator, StreamLimits};
/// let mut limits = StreamLimits::default();
/// assert_eq!(limits.max_text_bytes, 16 << 20);
/// limits.max_text_bytes = 4;
/// let mut acc = StreamAccumulator::with_limits(limits);
/// let e = acc
///     .push_data(r#"{"choices":[{"delta":{"content":"hello"}}]}"#, &mut Vec::new())
///     .unwrap_err();
/// assert!(e.is_provider());
/// assert!(e.message().contains("StreamLimits::max_text_bytes"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamLimits {
    /// The most raw bytes of one stream (`DEFAULT_MAX_STREAM_BYTES`).
    pub max_stream_bytes: u64,
    /// The most raw bytes of one SSE line, its line ending not counted
    /// (`DEFAULT_MAX_LINE_BYTES`).
    pub max_line_bytes: usize,
    /// The most bytes of one SSE event: its raw lines with their endings up to the blank line
    /// that ends it, and the `data` the accumulator is given (`DEFAULT_MAX_EVENT_BYTES`).
    pub max_event_bytes: usize,
    /// The most bytes of text a stream may accumulate (`DEFAULT_MAX_TEXT_BYTES`).
    pub max_text_bytes: usize,
    /// The most bytes of one tool call's name and arguments together
    /// (`DEFAULT_MAX_TOOL_CALL_BYTES`).
    pub max_tool_call_bytes: usize,
    /// The most tool calls one stream may carry (`MAX_TOOL_CALLS`, as in a whole reply).
    pub max_tool_calls: usize,
}

/// The default [`StreamLimits::max_stream_bytes`]: 64 MiB.
///
/// ```
/// assert_eq!(executionkit::internals::sse::DEFAULT_MAX_STREAM_BYTES, 64 << 20);
/// ```
pub const DEFAULT_MAX_STREAM_BYTES: u64 = 64 << 20;

/// The default [`StreamLimits::max_line_bytes`]: 1 MiB.
///
/// ```
/// assert_eq!(executionkit::internals::sse::DEFAULT_MAX_LINE_BYTES, 1 << 20);
/// ```
pub const DEFAULT_MAX_LINE_BYTES: usize = MIB;

/// The default [`StreamLimits::max_event_bytes`]: 1 MiB.
///
/// ```
/// assert_eq!(executionkit::internals::sse::DEFAULT_MAX_EVENT_BYTES, 1 << 20);
/// ```
pub const DEFAULT_MAX_EVENT_BYTES: usize = MIB;

/// The default [`StreamLimits::max_text_bytes`]: 16 MiB.
///
/// ```
/// assert_eq!(executionkit::internals::sse::DEFAULT_MAX_TEXT_BYTES, 16 << 20);
/// ```
pub const DEFAULT_MAX_TEXT_BYTES: usize = 16 * MIB;

/// The default [`StreamLimits::max_tool_call_bytes`]: 1 MiB.
///
/// ```
/// assert_eq!(executionkit::internals::sse::DEFAULT_MAX_TOOL_CALL_BYTES, 1 << 20);
/// ```
pub const DEFAULT_MAX_TOOL_CALL_BYTES: usize = MIB;

impl Default for StreamLimits {
    /// The defaults: 64 MiB per stream, 1 MiB per line and per event, 16 MiB of text, 1 MiB per
    /// tool call, 128 tool calls.
    ///
    /// ```
    /// let l = executionkit::StreamLimits::default();
    /// assert_eq!((l.max_line_bytes, l.max_tool_calls), (1 << 20, 128));
    /// ```
    fn default() -> Self {
        Self {
            max_stream_bytes: DEFAULT_MAX_STREAM_BYTES,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_text_bytes: DEFAULT_MAX_TEXT_BYTES,
            max_tool_call_bytes: DEFAULT_MAX_TOOL_CALL_BYTES,
            max_tool_calls: MAX_TOOL_CALLS,
        }
    }
}
