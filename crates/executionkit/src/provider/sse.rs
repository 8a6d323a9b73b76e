//! Server-sent events decoding for streamed completions (placeholder until implemented).
