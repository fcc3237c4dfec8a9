//! `gm::client`: the Rust client of the public API (`docs/api.md`), one typed method per
//! endpoint. `gm bench` and the end-to-end tests use it; the command line and the sidecar are
//! meant to be thin users of it.
//!
//! A [`Client`] knows one or more endpoints (`http://HOST:PORT`, any GM node: every node serves
//! every endpoint). A request goes to the endpoint that answered last (at first, the first); one
//! that gets no answer, or `503`, is tried again on the next after a short pause, and the next
//! request starts there, until its [`RetryPolicy`] gives up (see [`retry`] for why
//! that is safe for every request of the contract, and what a retried leave may answer).
//! Clones, and the clients [`Client::at`] and [`Client::with_policy`] make, share one connection
//! pool.
//!
//! Answers are the contract's records ([`crate::wire`]); errors are one [`ClientError`], whose
//! [`ClientError::kind`] says what a caller should make of it.
//!
//! ```no_run
//! # async fn example() -> Result<(), gm::client::ClientError> {
//! use gm::client::Client;
//! use gm::membership::{GroupName, MemberId, MemberSpec};
//! use gm::wire::Consistency;
//!
//! let client = Client::new(["127.0.0.1:8081", "127.0.0.1:8082"])?;
//! let (group, id) = (GroupName::parse("orders").unwrap(), MemberId::parse("worker-7").unwrap());
//! let spec: MemberSpec = serde_json::from_str(r#"{"address": "10.1.2.3:9021"}"#).unwrap();
//! let joined = client.join(&group, &id, &spec).await?;
//! let view = client.group(&group, Consistency::Linearizable).await?;
//! assert!(view.revision >= joined.answer.revision);
//! # Ok(()) }
//! ```

mod error;
pub mod retry;
pub mod sse;
mod watch;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::membership::{GroupName, MemberId};
use crate::wire::{
    ClusterAnswer, Consistency, ErrorBody, ErrorCode, GroupView, GroupsAnswer, HealthAnswer, HeartbeatAnswer,
    JoinAnswer, Member, MemberSpec, RevisionAnswer,
};

pub use error::{ClientError, ErrorKind};
pub use retry::RetryPolicy;
pub use sse::{SseEvent, SseParser};
pub use watch::{Watch, WatchLost};

/// How long connecting to a node may take, unless [`ClientBuilder::connect_timeout`] says.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How much of a body that is not the contract's error an [`ClientError::Api`] message keeps.
const FOREIGN_BODY_CHARS: usize = 200;

/// A client of one GM cluster. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    /// Base URLs, `http://HOST:PORT`, without a trailing slash.
    endpoints: Arc<[String]>,
    /// The endpoint `healthz` and `readyz` ask, and where requests start until one fails.
    first: usize,
    /// The endpoint the next request tries first, shared by this client's clones: the last one
    /// that answered, or the one after an endpoint that did not, so a node that hangs (which
    /// costs a whole attempt timeout) is not asked first again and again.
    next: Arc<AtomicUsize>,
    policy: RetryPolicy,
}

/// The settings of a [`Client`] that are fixed when it is built.
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    policy: RetryPolicy,
    connect_timeout: Duration,
    pool_max_idle_per_host: usize,
}

impl ClientBuilder {
    /// How long connecting to a node may take (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The most idle connections kept open to one node (default: no limit).
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// When requests are tried again (default [`RetryPolicy::default`]).
    pub fn policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Fails with [`ClientError::Endpoint`] if an endpoint is malformed or there is none, and
    /// [`ClientError::Build`] if the HTTP client cannot be made.
    pub fn build(self) -> Result<Client, ClientError> {
        let endpoints = endpoint_urls(&self.endpoints)?;
        let http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .tcp_nodelay(true)
            .build()
            .map_err(ClientError::Build)?;
        Ok(Client { http, endpoints, first: 0, next: Arc::default(), policy: self.policy })
    }
}

/// The answer to a join: the record and revision, and whether the member is new.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    /// `201`: the id was not in the group. A join retried after a lost answer reads `false`.
    pub created: bool,
    pub answer: JoinAnswer,
}

impl Client {
    /// A client of `endpoints` (`http://HOST:PORT`, `https://...` or `HOST:PORT`) with the
    /// default settings.
    pub fn new<S: AsRef<str>>(endpoints: impl IntoIterator<Item = S>) -> Result<Client, ClientError> {
        Client::builder(endpoints).build()
    }

    pub fn builder<S: AsRef<str>>(endpoints: impl IntoIterator<Item = S>) -> ClientBuilder {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(|e| e.as_ref().to_owned()).collect(),
            policy: RetryPolicy::default(),
            connect_timeout: CONNECT_TIMEOUT,
            pool_max_idle_per_host: usize::MAX,
        }
    }

    /// The endpoints, as base URLs `http://HOST:PORT`, in the order they were given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// This client with another retry policy.
    pub fn with_policy(&self, policy: RetryPolicy) -> Client {
        Client { policy, ..self.clone() }
    }

    /// A client of endpoint `index` alone (counted modulo their number): to ask one node.
    pub fn at(&self, index: usize) -> Client {
        let endpoint = self.endpoints[index % self.endpoints.len()].clone();
        Client { endpoints: Arc::from([endpoint]), first: 0, next: Arc::default(), ..self.clone() }
    }

    /// This client, trying endpoint `index` (counted modulo their number) first and the others
    /// after it: to spread requests over the nodes.
    pub fn starting_at(&self, index: usize) -> Client {
        let first = index % self.endpoints.len();
        Client { first, next: Arc::new(AtomicUsize::new(first)), ..self.clone() }
    }

    /// A client of other `endpoints`, with this one's settings and connection pool.
    pub fn with_endpoints<S: AsRef<str>>(&self, endpoints: impl IntoIterator<Item = S>) -> Result<Client, ClientError> {
        let endpoints: Vec<String> = endpoints.into_iter().map(|e| e.as_ref().to_owned()).collect();
        Ok(Client { endpoints: endpoint_urls(&endpoints)?, first: 0, next: Arc::default(), ..self.clone() })
    }

    /// `PUT /v1/groups/{group}/members/{id}`: joins `id` to `group` as `spec` says, or re-joins
    /// it (a new incarnation) if it differs from the member's current record; a join equal to it
    /// changes nothing. Idempotent, so retried.
    pub async fn join(&self, group: &GroupName, id: &MemberId, spec: &MemberSpec) -> Result<Joined, ClientError> {
        let body = serde_json::to_vec(spec).map(Bytes::from).map_err(ClientError::Encode)?;
        let request = Request::new(Method::PUT, member_path(group, id)).body(body);
        let (status, answer) = self.call(&request).await?;
        Ok(Joined { created: status == StatusCode::CREATED, answer })
    }

    /// `DELETE /v1/groups/{group}/members/{id}[?incarnation=N]`: removes the member; with
    /// `incarnation`, only if it still is that one, else `409`. `404` if it is not a member —
    /// also when a retry follows a first try that was applied but whose answer was lost.
    pub async fn leave(
        &self,
        group: &GroupName,
        id: &MemberId,
        incarnation: Option<u64>,
    ) -> Result<RevisionAnswer, ClientError> {
        let mut request = Request::new(Method::DELETE, member_path(group, id));
        if let Some(n) = incarnation {
            request = request.query("incarnation", n.to_string());
        }
        Ok(self.call(&request).await?.1)
    }

    /// `GET /v1/groups/{group}/members/{id}`: one member's record; `404` if it is not a member.
    pub async fn member(
        &self,
        group: &GroupName,
        id: &MemberId,
        consistency: Consistency,
    ) -> Result<Member, ClientError> {
        Ok(self.call(&Request::new(Method::GET, member_path(group, id)).consistency(consistency)).await?.1)
    }

    /// `GET /v1/groups/{group}`: the view of a group, members sorted by id; `404` if it has none.
    pub async fn group(&self, group: &GroupName, consistency: Consistency) -> Result<GroupView, ClientError> {
        Ok(self.call(&Request::new(Method::GET, group_path(group)).consistency(consistency)).await?.1)
    }

    /// `GET /v1/groups/{group}?index=N&wait=W`, a blocking query: the view as soon as the
    /// group's revision passes `index`, or after `wait` (whole milliseconds, at most 5 minutes,
    /// else `400`) the current view. `index` 0 answers at once. `404` if the group has no
    /// members when it answers; `503` if `wait` ended without a quorum. Pass the view's
    /// `revision` as the next `index`.
    pub async fn group_after(
        &self,
        group: &GroupName,
        index: u64,
        wait: Duration,
        consistency: Consistency,
    ) -> Result<GroupView, ClientError> {
        let request = Request::new(Method::GET, group_path(group))
            .consistency(consistency)
            .query("index", index.to_string())
            .query("wait", format!("{}ms", wait.as_millis()))
            .longer_by(wait);
        Ok(self.call(&request).await?.1)
    }

    /// `GET /v1/groups`: every group's name, revision and size.
    pub async fn groups(&self, consistency: Consistency) -> Result<GroupsAnswer, ClientError> {
        Ok(self.call(&Request::new(Method::GET, "/v1/groups".into()).consistency(consistency)).await?.1)
    }

    /// `POST /v1/groups/{group}/members/{id}/heartbeat`: renews a lease-mode member's lease for
    /// its `ttl_ms`. `404` if it is not a member (it must join again); `409` if it is in probe
    /// mode.
    pub async fn heartbeat(&self, group: &GroupName, id: &MemberId) -> Result<HeartbeatAnswer, ClientError> {
        let path = format!("{}/heartbeat", member_path(group, id));
        Ok(self.call(&Request::new(Method::POST, path)).await?.1)
    }

    /// `GET /v1/cluster`: the GM nodes, their roles and the leader.
    pub async fn cluster(&self, consistency: Consistency) -> Result<ClusterAnswer, ClientError> {
        Ok(self.call(&Request::new(Method::GET, "/v1/cluster".into()).consistency(consistency)).await?.1)
    }

    /// `GET /healthz` of the first endpoint, once: whether that process is alive. A node's
    /// health is its own, so it is neither retried nor asked of another node.
    pub async fn healthz(&self) -> Result<HealthAnswer, ClientError> {
        self.ask_first(&Request::new(Method::GET, "/healthz".into())).await
    }

    /// `GET /readyz` of the first endpoint, once: `Ok` if that node is in the cluster, knows a
    /// leader and has caught up; a `503` [`ClientError::Api`] if not.
    pub async fn readyz(&self) -> Result<HealthAnswer, ClientError> {
        self.ask_first(&Request::new(Method::GET, "/readyz".into())).await
    }

    /// `GET /v1/groups/{group}/watch`: the group's views as they change, starting with the
    /// current one. Opening is retried like any read; the stream is not: see [`Watch`].
    pub async fn watch(&self, group: &GroupName, consistency: Consistency) -> Result<Watch, ClientError> {
        let request = Request::new(Method::GET, format!("{}/watch", group_path(group))).consistency(consistency);
        self.policy
            .run(self.endpoints.len(), self.next(), Duration::ZERO, |i| {
                let endpoint = &self.endpoints[i];
                let send = self.request(endpoint, &request).header(ACCEPT, "text/event-stream").send();
                self.noting(i, async move {
                    let response = within(self.policy.attempt_timeout, endpoint, send)
                        .await?
                        .map_err(|source| ClientError::Transport { endpoint: endpoint.clone(), source })?;
                    if !response.status().is_success() {
                        let retry_after = retry_after(&response);
                        let status = response.status();
                        let body = response.bytes().await.unwrap_or_default();
                        return Err(api_error(endpoint, status, retry_after, &body));
                    }
                    Ok(Watch::new(endpoint.clone(), response))
                })
            })
            .await
    }

    /// `request`, retried as the policy says; the status and the decoded answer.
    async fn call<T: DeserializeOwned>(&self, request: &Request) -> Result<(StatusCode, T), ClientError> {
        self.retried(request, |endpoint| self.attempt(endpoint, request)).await
    }

    /// `attempt`, at one endpoint after another as the retry policy says, noting where the next
    /// request should start.
    async fn retried<'a, T, F, Fut>(&'a self, request: &Request, attempt: F) -> Result<T, ClientError>
    where
        F: Fn(&'a str) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        self.policy
            .run(self.endpoints.len(), self.next(), request.longer_by, |i| self.noting(i, attempt(&self.endpoints[i])))
            .await
    }

    fn next(&self) -> usize {
        self.next.load(Ordering::Relaxed) % self.endpoints.len()
    }

    /// Runs an attempt at endpoint `i` and notes where the next request should start: here if
    /// it answered, at the following endpoint if it got no answer or `503`.
    async fn noting<T>(
        &self,
        i: usize,
        attempt: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let result = attempt.await;
        match &result {
            Ok(_) => self.next.store(i, Ordering::Relaxed),
            Err(error) if error.is_retryable() => {
                let following = (i + 1) % self.endpoints.len();
                let _ = self.next.compare_exchange(i, following, Ordering::Relaxed, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        result
    }

    /// `request` to the first endpoint, once.
    async fn ask_first<T: DeserializeOwned>(&self, request: &Request) -> Result<T, ClientError> {
        Ok(self.attempt(&self.endpoints[self.first], request).await?.1)
    }

    /// One try of `request` at `endpoint`, within the attempt timeout: the status and the answer.
    async fn attempt<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        request: &Request,
    ) -> Result<(StatusCode, T), ClientError> {
        let exchange = async {
            let transport = |source| ClientError::Transport { endpoint: endpoint.to_owned(), source };
            let response = self.request(endpoint, request).send().await.map_err(transport)?;
            let status = response.status();
            let retry_after = retry_after(&response);
            let body = response.bytes().await.map_err(transport)?;
            if !status.is_success() {
                return Err(api_error(endpoint, status, retry_after, &body));
            }
            let answer = serde_json::from_slice(&body)
                .map_err(|source| ClientError::Decode { endpoint: endpoint.to_owned(), source })?;
            Ok((status, answer))
        };
        within(self.policy.attempt_timeout + request.longer_by, endpoint, exchange).await?
    }

    fn request(&self, endpoint: &str, request: &Request) -> reqwest::RequestBuilder {
        let mut builder = self.http.request(request.method.clone(), format!("{endpoint}{}", request.path));
        if !request.query.is_empty() {
            builder = builder.query(&request.query);
        }
        if let Some(body) = &request.body {
            builder = builder.header(CONTENT_TYPE, "application/json").body(body.clone());
        }
        builder
    }
}

/// One request of the contract, as each attempt sends it.
struct Request {
    method: Method,
    /// From the root, `/v1/...`; its names are validated, so nothing in it needs escaping.
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Bytes>,
    /// How much longer than usual the server may take to answer: a blocking query's wait.
    longer_by: Duration,
}

impl Request {
    fn new(method: Method, path: String) -> Request {
        Request { method, path, query: Vec::new(), body: None, longer_by: Duration::ZERO }
    }

    fn query(mut self, name: &'static str, value: String) -> Request {
        self.query.push((name, value));
        self
    }

    /// `?consistency=stale`, or nothing for the default.
    fn consistency(self, consistency: Consistency) -> Request {
        match consistency {
            Consistency::Linearizable => self,
            Consistency::Stale => self.query("consistency", Consistency::Stale.as_str().to_owned()),
        }
    }

    fn body(mut self, json: Bytes) -> Request {
        self.body = Some(json);
        self
    }

    fn longer_by(mut self, extra: Duration) -> Request {
        self.longer_by = extra;
        self
    }
}

pub(crate) fn group_path(group: &GroupName) -> String {
    format!("/v1/groups/{group}")
}

pub(crate) fn member_path(group: &GroupName, id: &MemberId) -> String {
    format!("/v1/groups/{group}/members/{id}")
}

/// `work`, or [`ClientError::Timeout`] if it takes longer than `limit`.
async fn within<T>(
    limit: Duration,
    endpoint: &str,
    work: impl std::future::Future<Output = T>,
) -> Result<T, ClientError> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| ClientError::Timeout { endpoint: endpoint.to_owned(), after: limit })
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

/// The error an answer with `status` and `body` stands for: the contract's, or, from something
/// in between that does not speak it, the status and the start of the body.
fn api_error(endpoint: &str, status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> ClientError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => (error.code, error.message),
        Err(_) => {
            let text: String = String::from_utf8_lossy(body).trim().chars().take(FOREIGN_BODY_CHARS).collect();
            let text = if text.is_empty() { status.canonical_reason().unwrap_or_default().to_owned() } else { text };
            (ErrorCode::Other(String::new()), text)
        }
    };
    ClientError::Api { endpoint: endpoint.to_owned(), status: status.as_u16(), code, message, retry_after }
}

/// `http://HOST:PORT` from `HOST:PORT` or a URL, without a trailing slash; at least one.
fn endpoint_urls(endpoints: &[String]) -> Result<Arc<[String]>, ClientError> {
    if endpoints.is_empty() {
        return Err(ClientError::Endpoint(String::new()));
    }
    endpoints.iter().map(|e| endpoint_url(e)).collect()
}

fn endpoint_url(endpoint: &str) -> Result<String, ClientError> {
    let bad = || ClientError::Endpoint(endpoint.to_owned());
    let trimmed = endpoint.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(bad());
    }
    let bare = !trimmed.contains("://");
    let url = if bare { format!("http://{trimmed}") } else { trimmed.to_owned() };
    let parsed = reqwest::Url::parse(&url).map_err(|_| bad())?;
    // Nothing but a scheme, a host and a port: a path would be put before every request's own
    // (`/v1/v1/groups`, a 404 that reads as "no such group"), and `HOST` alone is more likely a
    // forgotten port than a node on port 80 (which `http://HOST` still names).
    let plain = matches!(parsed.scheme(), "http" | "https")
        && parsed.host().is_some()
        && parsed.path() == "/"
        && parsed.query().is_none()
        && parsed.fragment().is_none()
        && parsed.username().is_empty()
        && parsed.password().is_none()
        // (The URL drops a port that is the scheme's default: `HOST:80` names one too.)
        && (!bare || parsed.port().is_some() || trimmed.ends_with(":80"));
    if !plain {
        return Err(bad());
    }
    Ok(url)
}

#[cfg(test)]
mod tests;
