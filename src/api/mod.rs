//! The public REST API of the contract (`docs/api.md`), served on `--api-addr`.

mod cluster;
pub mod error;
pub mod extract;
mod groups;
mod trace;
mod watch;

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use tokio::time::Instant;
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;

use crate::metrics::Metrics;
use crate::node::Node;
use crate::probe::lease::Leases;
use error::ApiError;

/// What every handler reaches.
pub struct AppState {
    pub node: Arc<Node>,
    pub metrics: Arc<Metrics>,
    /// Lease deadlines, kept while this node leads; heartbeats renew them.
    pub leases: Arc<Leases>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/groups/{group}/members/{id}", put(groups::join).delete(groups::leave).get(groups::get_member))
        .route("/v1/groups/{group}/members/{id}/heartbeat", post(groups::heartbeat))
        .route("/v1/groups/{group}", get(groups::get_group))
        .route("/v1/groups/{group}/watch", get(watch::watch))
        .route("/v1/groups", get(groups::list_groups))
        .route("/v1/cluster", get(cluster::cluster))
        .route("/healthz", get(cluster::healthz))
        .route("/readyz", get(cluster::readyz))
        .route("/metrics", get(cluster::metrics))
        .route("/openapi.json", get(cluster::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), trace::request_span))
        .layer(compression())
        .with_state(state)
}

/// Gzip for large answers a client accepts it for (`/metrics` of a cluster with many groups,
/// `/openapi.json`). Views and the list of groups carry their own gzip form, made once per
/// change ([`crate::views`]), and are left alone here, as is the watch stream.
fn compression() -> CompressionLayer<impl Predicate> {
    let large = SizeAbove::new(crate::views::GZIP_ABOVE.try_into().unwrap_or(u16::MAX));
    CompressionLayer::new().compress_when(DefaultPredicate::new().and(large))
}

/// One more on a gauge while it lives: a request counted as open until it ends, however it ends
/// (a client that goes away drops the handler's future).
pub(crate) struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    pub(crate) fn inc(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} is not allowed on {}", req.method(), req.uri().path()))
}

/// Counts and times every request by its route template, not its path, to bound label values.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    // A shared handle of the template (cloning it copies no bytes), kept past `req`.
    let route = req.extensions().get::<MatchedPath>().cloned();
    // Any token is a method to hyper: unknown ones share one label, so series stay bounded.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    };
    let start = Instant::now();
    let resp = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    state.metrics.observe_request(route, method, resp.status(), start.elapsed());
    resp
}
