//! Distributed tracing: a message's `trace` (a W3C `traceparent`) makes its span a
//! child of the caller's trace. With the `otel` feature the span is parented in
//! OpenTelemetry's context (exported by whatever `tracing-opentelemetry` layer the
//! application installs; the hub's `otel` feature installs an OTLP exporter); without
//! it the `trace` is a field of the span, for logs.

/// Makes `span` follow the remote trace `traceparent`, when there is one and the
/// `otel` feature is on.
#[cfg(feature = "otel")]
pub(crate) fn follow(span: &tracing::Span, traceparent: Option<&str>) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Some(t) = traceparent else { return };
    // Validated while decoding: `00-<32 hex>-<16 hex>-<2 hex>`.
    let (Some(trace), Some(parent), Some(flags)) = (t.get(3..35), t.get(36..52), t.get(53..55))
    else {
        return;
    };
    let (Ok(trace), Ok(parent), Ok(flags)) = (
        TraceId::from_hex(trace),
        SpanId::from_hex(parent),
        u8::from_str_radix(flags, 16),
    ) else {
        return;
    };
    let remote = SpanContext::new(
        trace,
        parent,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// Without the `otel` feature the `trace` is only a field of the span.
#[cfg(not(feature = "otel"))]
pub(crate) fn follow(_span: &tracing::Span, _traceparent: Option<&str>) {}
