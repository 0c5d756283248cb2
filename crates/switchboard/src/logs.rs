//! Logs to stderr (text with colours only on a terminal, or JSON lines) and, built with
//! the `otel` feature and given `OTEL_EXPORTER_OTLP_ENDPOINT`, traces exported over
//! OTLP: a span per connection and per message, each message's span parented by the
//! `trace` (W3C traceparent) its client sent.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::args::LogFormat;

/// Keeps the trace exporter until the process ends; dropping it flushes what is
/// buffered.
pub(crate) struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the logs (`RUST_LOG`, else `default_level`) and, when configured, the
/// trace exporter.
pub(crate) fn init(format: LogFormat, default_level: &str) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        // Colours for people at a terminal, never escape codes in a file.
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
    };
    #[cfg(feature = "otel")]
    {
        let mut layers = vec![logs];
        let provider = otlp().map(|(traces, provider)| {
            layers.push(traces);
            provider
        });
        tracing_subscriber::registry().with(layers).init();
        Telemetry { provider }
    }
    #[cfg(not(feature = "otel"))]
    {
        tracing_subscriber::registry().with(logs).init();
        Telemetry {}
    }
}

/// The OTLP exporter (HTTP, protobuf) to `OTEL_EXPORTER_OTLP_ENDPOINT`, and the layer
/// that feeds it switchboard's spans: connections and messages (debug level).
#[cfg(feature = "otel")]
fn otlp() -> Option<(
    Box<dyn Layer<Registry> + Send + Sync>,
    opentelemetry_sdk::trace::SdkTracerProvider,
)> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::filter::Targets;
    std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("switchboard: traces not exported: {e}");
            return None;
        }
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("switchboard")
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let spans = Targets::new()
        .with_target("switchboard_server", tracing::Level::DEBUG)
        .with_default(tracing::Level::INFO);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("switchboard"))
        .with_filter(spans)
        .boxed();
    Some((layer, provider))
}
