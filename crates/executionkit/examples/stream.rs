//! Streaming: one completion streamed through the budget (`stream_completion`), its text deltas
//! printed as they arrive, then the cost.
//!
//! ```text
//! cargo run -p executionkit --example stream
//! EXECUTIONKIT_BASE_URL=http://127.0.0.1:8081/v1 EXECUTIONKIT_MODEL=smollm2 \
//!   cargo run -p executionkit --example stream -- "Tell me a short story."
//! ```
//!
//! With `--quiet` the deltas are counted, not printed, and one summary line is printed at the end
//! (`deltas=N bytes=N input_tokens=N output_tokens=N`): `bench/run.sh` runs it this way against
//! a fixed 1,000-event stream to measure the CPU of streaming end to end.

mod support;

use std::io::Write;

use executionkit::{ChatRequest, Message, RunContext, stream_completion};
use futures::StreamExt;

// `ek` runs on a current-thread runtime; so does this, so the figures compare.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), executionkit::Error> {
    let mut quiet = false;
    let mut prompt = None;
    for arg in std::env::args().skip(1) {
        if arg == "--quiet" {
            quiet = true;
        } else {
            prompt = Some(arg);
        }
    }
    let prompt = prompt.unwrap_or_else(|| "Count from one to ten in words.".to_owned());
    let support::Endpoint { provider, offline } = support::endpoint()?;

    let mut request = ChatRequest::new(vec![Message::user(prompt)]);
    if offline {
        request = request.seed(0); // the offline model's stream is then reproducible
    }
    let mut stream = stream_completion(provider, request, &RunContext::new()).await?;
    let (mut deltas, mut bytes) = (0_u64, 0_usize);
    let mut out = std::io::stdout().lock();
    while let Some(delta) = stream.next().await {
        let delta = delta?;
        deltas += 1;
        bytes += delta.len();
        if !quiet {
            // A closed stdout (`| head`) ends the printing, not the stream.
            let _ = out.write_all(delta.as_bytes()).and_then(|()| out.flush());
        }
    }
    let cost = stream.cost();
    if quiet {
        let _ = writeln!(
            out,
            "deltas={deltas} bytes={bytes} input_tokens={} output_tokens={}",
            cost.input_tokens, cost.output_tokens
        );
    } else {
        let _ = writeln!(out);
        eprintln!("{deltas} deltas; {cost}");
    }
    Ok(())
}
