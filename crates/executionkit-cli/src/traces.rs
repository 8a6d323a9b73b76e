//! `--otlp-endpoint`: the run's spans exported to an OpenTelemetry collector (the library's
//! `otel` feature), flushed before `ek` exits so that a short run's spans arrive too.

use std::io::Write;

use executionkit::Error;
use executionkit::otel::Otlp;

use crate::secrets::Secrets;

/// The exporter for `endpoint`, installed as the process's tracing subscriber (service name
/// `ek`); `None` without an endpoint. An unusable URL is an `invalid_argument` error.
pub fn start(endpoint: Option<&str>) -> Result<Option<Otlp>, Error> {
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    let otlp = Otlp::builder(endpoint).service_name("ek").build()?;
    otlp.install()?;
    Ok(Some(otlp))
}

/// Sends the spans left and stops the exporter. A collector that cannot be reached is a
/// warning on stderr: the run's own outcome and exit code stand.
pub fn finish(otlp: Option<Otlp>, secrets: &Secrets) {
    let Some(otlp) = otlp else {
        return;
    };
    if let Err(e) = otlp.shutdown() {
        let msg = format!("ek: warning: {}\n", e.message());
        let _ = std::io::stderr().write_all(secrets.text(&msg).as_bytes());
    }
}
