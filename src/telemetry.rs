//! Logs and traces: `tracing` events and spans with fields, written as text for people or JSON
//! for log pipelines, and exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. Without either, no exporter exists and spans
//! cost what plain `tracing` spans cost. The W3C trace context (`traceparent`, `tracestate`)
//! comes in with API and peer requests and goes out with node-to-node calls, so a write sent to a
//! follower is one trace across the follower and the leader. The rest of gm sees no OpenTelemetry
//! type: it passes `tracing` spans and HTTP header maps.

use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{Bytes, HeaderExtractor, HeaderInjector, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{SpanExporter, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::{Level, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event, for log pipelines.
    Json,
}

/// Checks a `--log` filter (as in RUST_LOG): a typo is an error, not a silent fallback.
pub fn filter(s: &str) -> Result<String, String> {
    EnvFilter::try_new(s).map(|_| s.to_owned()).map_err(|e| e.to_string())
}

/// The variables whose presence turns the export of traces on, as the OTLP exporter reads them.
const ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];
/// The variables that name the OTLP protocol; only `http/protobuf` is built in.
const PROTOCOL_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"];

/// What [`init`] started; [`Telemetry::shutdown`] flushes the spans not yet exported.
#[must_use = "shut it down at exit, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter (a no-op without one). Waits up to
    /// the exporter's timeout if the collector does not answer.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        // The SDK blocks its caller until its export thread is done; that thread's requests run
        // on this runtime, so they must not wait for a worker this call holds.
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = stopped {
            tracing::warn!(%error, "the last spans could not be exported");
        }
    }
}

/// Starts logging to stderr with `filter` (checked by [`filter`]) in `format`, and the export of
/// traces if an OTLP endpoint is set, with `resource` (this process's attributes, such as its node
/// id) added to the SDK's own (`OTEL_SERVICE_NAME`, default `gm`; `OTEL_RESOURCE_ATTRIBUTES`).
/// Colours only on a terminal, and never when `NO_COLOR` is set (<https://no-color.org>). Call it
/// within the Tokio runtime: the exporter sends on it.
pub fn init(filter: &str, format: LogFormat, resource: &[(&'static str, String)]) -> Telemetry {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let log: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    let export = endpoint().map(|endpoint| (endpoint, tracer_provider(resource)));
    let provider = match &export {
        Some((_, Ok(provider))) => Some(provider.clone()),
        _ => None,
    };
    // Its own filter, not the log's: `--log warn` quiets the logs, not the traces. gm's spans
    // only (with the events in them), not those of the libraries under it.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("gm"))
            .with_filter(Targets::new().with_target("gm", Level::INFO))
    });
    tracing_subscriber::registry().with(log.with_filter(filter)).with(otel).init();
    match export {
        Some((endpoint, Ok(_))) => {
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
        }
        Some((endpoint, Err(error))) => tracing::warn!(%endpoint, %error, "traces are not exported"),
        None => {}
    }
    Telemetry { provider }
}

/// The OTLP endpoint set in the environment, if any: whether to export at all.
fn endpoint() -> Option<String> {
    ENDPOINT_VARS.iter().find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
}

/// The SDK's tracer provider: a batch exporter over OTLP/HTTP with protobuf, configured by the
/// standard `OTEL_*` variables (endpoint, headers, timeout, compression, `OTEL_BSP_*`,
/// `OTEL_TRACES_SAMPLER`), whose requests go through gm's own HTTP client.
fn tracer_provider(resource: &[(&'static str, String)]) -> Result<SdkTracerProvider, String> {
    if let Some((var, protocol)) = PROTOCOL_VARS
        .iter()
        .find_map(|var| std::env::var(var).ok().map(|p| (var, p)))
        .filter(|(_, p)| p != "http/protobuf")
    {
        return Err(format!("{var}={protocol}: gm exports with http/protobuf only"));
    }
    let client = ExportClient::new()?;
    let exporter = SpanExporter::builder().with_http().with_http_client(client).build().map_err(|e| e.to_string())?;
    let mut builder = Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named {
        builder = builder.with_service_name("gm");
    }
    let attributes = resource.iter().map(|(k, v)| opentelemetry::KeyValue::new(*k, v.clone()));
    let resource = builder.with_attributes(attributes).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// The exporter's HTTP client: gm's reqwest, whose requests run on the Tokio runtime while the
/// SDK's export thread waits for them (that thread has no runtime of its own).
#[derive(Debug)]
struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

/// A bound on one export request, beyond the exporter's own timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`).
const EXPORT_REQUEST_LIMIT: Duration = Duration::from_secs(30);

impl ExportClient {
    fn new() -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder().timeout(EXPORT_REQUEST_LIMIT).build().map_err(|e| e.to_string())?;
        Ok(ExportClient { http, runtime })
    }
}

impl HttpClient for ExportClient {
    fn send_bytes<'a, 'f>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'f>>
    where
        'a: 'f,
        Self: 'f,
    {
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let answer = http.execute(request).await?;
            let mut response = Response::builder().status(answer.status());
            if let Some(headers) = response.headers_mut() {
                *headers = answer.headers().clone();
            }
            Ok::<_, HttpError>(response.body(answer.bytes().await?)?)
        });
        Box::pin(async move { sent.await? })
    }
}

/// Makes the trace context that `headers` carry (W3C `traceparent`, `tracestate`), if any, the
/// parent of `span`, which must not have been entered yet. Says whether there was one.
pub fn continue_trace(span: &Span, headers: &http::HeaderMap) -> bool {
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    if !parent.span().span_context().is_valid() {
        return false;
    }
    // Fails only without the OpenTelemetry layer (nothing is exported) or on a disabled span.
    let _ = span.set_parent(parent);
    true
}

/// The W3C trace context of the current span as headers, for a request to another node that
/// continues this trace; empty when nothing is exported.
pub fn trace_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&Span::current().context(), &mut HeaderInjector(&mut headers))
    });
    headers
}

/// Middleware of the node-to-node routes: a request that carries a trace context (a forwarded
/// write, a read-index round, a lease heartbeat sent on behalf of an API request) is served in a
/// `peer` span that continues it; the others (Raft's appends and votes) get no span, so a trace
/// shows the request it began with, not the replication traffic around it.
pub async fn peer_span(
    axum::extract::State(node): axum::extract::State<u64>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    if !req.headers().contains_key("traceparent") {
        return next.run(req).await;
    }
    let span = tracing::info_span!("peer", otel.name = %req.uri().path(), otel.kind = "server", node);
    continue_trace(&span, req.headers());
    next.run(req).instrument(span).await
}
