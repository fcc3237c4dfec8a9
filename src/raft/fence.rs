//! Cluster fencing: every node-to-node request carries this node's cluster id in a header, and
//! a node refuses a request that carries another cluster's. A node of another cluster that
//! reaches our peer port (its peers' addresses now ours after a redeploy, a copied data dir, a
//! stale DNS name) then never votes, appends or forwards writes here, and we never act on its
//! answers.
//!
//! The id is the replicated state's `cluster_id`, named by the first leader after the first
//! election (with Kubernetes discovery, the bootstrap marker's id, known earlier). Until a node
//! knows it, it sends no header and checks none: a node without state, or a new cluster before
//! its first election, cannot be fenced and cannot fence. A request without the header is
//! accepted for the same reason.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::state_machine::StateHandle;

/// The header that carries the sender's cluster id on every node-to-node request.
pub const HEADER: &str = "gm-cluster-id";
/// The `code` of the refusal's error.
pub const REFUSED_CODE: &str = "other_cluster";
/// A node of another cluster that keeps calling is logged once per this interval, per peer.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// This node's cluster id, once known: read on every peer request sent and received. Clones
/// share it.
#[derive(Clone, Default)]
pub struct ClusterFence {
    id: Arc<RwLock<Option<Arc<str>>>>,
    /// One warning per minute per foreign peer, on either side of a refusal.
    warned: Warnings,
}

/// Whether a request that carries `theirs` (`None`: no header) may reach a node of cluster
/// `ours` (`None`: not known yet). Only two known, different ids refuse.
pub fn admits(ours: Option<&str>, theirs: Option<&str>) -> bool {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => ours == theirs,
        _ => true,
    }
}

impl ClusterFence {
    /// The cluster id, if this node knows it.
    pub fn id(&self) -> Option<Arc<str>> {
        self.id.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes `id` as this node's cluster id. The committed state decides: an id set earlier from
    /// a hint and different from the state's is replaced, with a warning.
    fn set(&self, id: &str) {
        let mut current = self.id.write().unwrap_or_else(|e| e.into_inner());
        match current.as_deref() {
            Some(known) if known == id => return,
            Some(known) => tracing::warn!(was = known, cluster = id, "the cluster id changed"),
            None => tracing::info!(cluster = id, "this node's cluster id is known; peer requests are fenced"),
        }
        *current = Some(id.into());
    }

    /// Takes the id in `state`, if it has one.
    pub fn learn(&self, state: &StateHandle) {
        let named = state.read().state.cluster_id().map(str::to_owned);
        if let Some(id) = named {
            self.set(&id);
        }
    }

    /// Keeps the fence at the cluster id of the applied state from when it is named, until
    /// `cancel`. `hint` may give the id before this node has applied it (Kubernetes: the
    /// bootstrap marker's id); it is taken only while the state has none.
    pub async fn follow(
        self,
        state: StateHandle,
        hint: impl Future<Output = Option<String>>,
        cancel: CancellationToken,
    ) {
        let mut applied = state.applied();
        let mut hint = std::pin::pin!(hint);
        let mut hinted = false;
        loop {
            self.learn(&state);
            if state.read().state.cluster_id().is_some() {
                // Set once in the state: nothing more to follow.
                return cancel.cancelled().await;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = applied.changed() => if changed.is_err() { return cancel.cancelled().await },
                id = &mut hint, if !hinted => {
                    hinted = true;
                    if let Some(id) = id.filter(|_| self.id().is_none()) {
                        self.set(&id);
                    }
                }
            }
        }
    }

    /// Notes that the peer at `addr` refused our request as a node of `theirs`: one warning per
    /// minute per peer.
    pub fn refused_by(&self, addr: &str, refusal: &Refusal) {
        if self.warned.due(format!("{addr} {}", refusal.cluster_id)) {
            tracing::warn!(
                peer = addr,
                peer_cluster = %refusal.cluster_id,
                cluster = %refusal.request_cluster_id,
                "peer belongs to another cluster, not ours; it refuses our requests"
            );
        }
    }
}

/// The body of a refusal (status 403): the refusing node's cluster id and the request's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: String,
    pub message: String,
    /// The refusing node's cluster.
    pub cluster_id: String,
    /// The cluster the request came from.
    pub request_cluster_id: String,
}

impl Refusal {
    fn new(ours: &str, theirs: &str) -> Self {
        Refusal {
            code: REFUSED_CODE.to_owned(),
            message: format!("this node belongs to cluster {ours}; the request came from a node of cluster {theirs}"),
            cluster_id: ours.to_owned(),
            request_cluster_id: theirs.to_owned(),
        }
    }

    /// The refusal in a 403 answer's body, if that is what it is.
    pub fn parse(status: u16, body: &str) -> Option<Refusal> {
        let refusal: Refusal = serde_json::from_str(body).ok().filter(|_| status == 403)?;
        (refusal.code == REFUSED_CODE).then_some(refusal)
    }
}

/// The middleware over the peer routes (`axum::middleware::from_fn_with_state`): refuses a
/// request from a node of another cluster with 403 and a [`Refusal`].
pub async fn check(State(fence): State<ClusterFence>, request: Request, next: Next) -> Response {
    let theirs = request.headers().get(HEADER).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let ours = fence.id();
    if admits(ours.as_deref(), theirs.as_deref()) {
        return next.run(request).await;
    }
    let (ours, theirs) = (ours.unwrap_or_default(), theirs.unwrap_or_default());
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    // Keyed by IP, not port: each new connection comes from another port.
    let key = format!("{} {theirs}", peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip()));
    if fence.warned.due(key) {
        tracing::warn!(
            peer = %peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
            peer_cluster = %theirs,
            cluster = %ours,
            path = request.uri().path(),
            "refused a request from a node of another cluster"
        );
    }
    (StatusCode::FORBIDDEN, Json(Refusal::new(&ours, &theirs))).into_response()
}

/// When each key was last warned about, so a peer that keeps calling is logged once a minute.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<HashMap<String, Instant>>>);

impl Warnings {
    /// Whether a warning about `key` is due now; if so, it is counted as given.
    fn due(&self, key: String) -> bool {
        let now = Instant::now();
        let mut warned = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the old ones, so a stream of different peers cannot grow the map for ever.
        warned.retain(|_, at| now - *at < WARN_EVERY);
        if warned.contains_key(&key) {
            return false;
        }
        warned.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    #[test]
    fn admits_unless_both_ids_are_known_and_differ() {
        assert!(admits(Some("a"), Some("a")), "same cluster");
        assert!(!admits(Some("a"), Some("b")), "another cluster");
        assert!(admits(Some("a"), None), "a sender that does not know its id yet");
        assert!(admits(None, Some("b")), "this node does not know its id yet");
        assert!(admits(None, None));
    }

    fn fenced(id: Option<&str>) -> Router {
        let fence = ClusterFence::default();
        if let Some(id) = id {
            fence.set(id);
        }
        Router::new()
            .route("/raft/vote", post(|| async { "voted" }))
            .layer(axum::middleware::from_fn_with_state(fence, check))
    }

    async fn send(router: Router, header: Option<&str>) -> (StatusCode, String) {
        let mut request = Request::post("/raft/vote");
        if let Some(id) = header {
            request = request.header(HEADER, id);
        }
        let response = router.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn middleware_refuses_only_another_cluster() {
        assert_eq!(send(fenced(Some("a")), Some("a")).await, (StatusCode::OK, "voted".into()));
        assert_eq!(send(fenced(Some("a")), None).await, (StatusCode::OK, "voted".into()));
        assert_eq!(send(fenced(None), Some("b")).await, (StatusCode::OK, "voted".into()));

        let (status, body) = send(fenced(Some("a")), Some("b")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let refusal = Refusal::parse(403, &body).expect("a refusal");
        assert_eq!((refusal.cluster_id.as_str(), refusal.request_cluster_id.as_str()), ("a", "b"));
    }

    #[test]
    fn only_a_403_with_the_code_is_a_refusal() {
        let body = serde_json::to_string(&Refusal::new("a", "b")).unwrap();
        assert!(Refusal::parse(403, &body).is_some());
        assert!(Refusal::parse(500, &body).is_none());
        assert!(Refusal::parse(403, "forbidden").is_none());
        assert!(Refusal::parse(403, &body.replace(REFUSED_CODE, "other")).is_none());
    }

    #[test]
    fn a_peer_is_warned_about_once_per_interval() {
        let warnings = Warnings::default();
        assert!(warnings.due("10.0.0.1 b".into()));
        assert!(!warnings.due("10.0.0.1 b".into()));
        assert!(warnings.due("10.0.0.2 b".into()), "another peer");
    }

    #[test]
    fn the_state_id_replaces_a_different_hint() {
        let fence = ClusterFence::default();
        fence.set("hinted");
        fence.set("committed");
        assert_eq!(fence.id().as_deref(), Some("committed"));
    }
}
