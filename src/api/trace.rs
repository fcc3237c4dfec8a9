//! The span of each API request under `/v1/`: named by its route template, with the group and
//! member it names and the node that serves it, continuing the trace of the client's W3C
//! `traceparent` if it sent one. Health, readiness, metrics and the OpenAPI document are not
//! traced: scrapes and probes would drown the requests that matter.

use std::sync::Arc;

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tracing::field::Empty;
use tracing::Instrument;

use super::AppState;
use crate::telemetry;

pub async fn request_span(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str());
    let name = format!("{} {route}", req.method());
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        node = state.node.id,
        group = Empty,
        member = Empty,
        status = Empty,
        otel.status_code = Empty,
    );
    let (mut parts, body) = req.into_parts();
    if let Ok(params) =
        <RawPathParams as axum::extract::FromRequestParts<()>>::from_request_parts(&mut parts, &()).await
    {
        for (key, value) in &params {
            match key {
                "group" => span.record("group", tracing::field::display(value)),
                "id" => span.record("member", tracing::field::display(value)),
                _ => &span,
            };
        }
    }
    telemetry::continue_trace(&span, &parts.headers);
    let resp = next.run(Request::from_parts(parts, body)).instrument(span.clone()).await;
    span.record("status", resp.status().as_u16());
    if resp.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    resp
}
