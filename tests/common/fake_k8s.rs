//! A fake Kubernetes API server for the tests of `--discovery kubernetes`: the real API over HTTP
//! on 127.0.0.1 (k8s-openapi's Pod, StatefulSet, ConfigMap, Lease, Event and Status; get, list,
//! create, and replace with optimistic concurrency on `metadata.resourceVersion`, for every kind of
//! [`KINDS`]; lists with a `resourceVersion`, watches as newline-delimited JSON events from a
//! `resourceVersion`, label and `metadata.name` field selectors, 404, 409 and 422 with a `Status`,
//! an `ERROR` event with 410 for a watch older than the kept history, and the discovery
//! documents), reached by `gm server` through a kubeconfig exactly as a real cluster would be.
//!
//! [`StatefulSetSim`] plays the StatefulSet controller and the kubelet: its pods are real
//! `gm server` processes, each on its own loopback IP (`127.X.Y.{ordinal + 1}`) with the same
//! ports, as pods of one StatefulSet have; the fake reports that IP as `status.podIP`, which is
//! how the nodes reach each other's `{pod}.{service}.{namespace}.svc` names here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use gm::client::{Client, RetryPolicy};
use gm::wire::{ClusterAnswer, Consistency, Role};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta, Status, StatusDetails};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{poll, wait_for};

/// How many IPs each pod of a [`StatefulSetSim`] can move between.
const IP_GENERATIONS: u8 = 3;

/// How long a pod's process gets to exit after SIGTERM (its `terminationGracePeriodSeconds`),
/// generous for a loaded machine: a node that needs longer is a bug worth a failed test.
const GRACE_PERIOD: Duration = Duration::from_secs(30);

/// How many changes the fake keeps for watches from an older `resourceVersion`.
const HISTORY: usize = 10_000;

/// The kinds the fake serves: (URL prefix, resource, kind, apiVersion).
const KINDS: [(&str, &str, &str, &str); 5] = [
    ("/api/v1", "pods", "Pod", "v1"),
    ("/api/v1", "configmaps", "ConfigMap", "v1"),
    ("/api/v1", "events", "Event", "v1"),
    ("/apis/apps/v1", "statefulsets", "StatefulSet", "apps/v1"),
    ("/apis/coordination.k8s.io/v1", "leases", "Lease", "coordination.k8s.io/v1"),
];

/// One change, as a watch sends it.
#[derive(Clone, Debug)]
struct Change {
    version: u64,
    resource: &'static str,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    version: u64,
    /// (resource, namespace, name) -> object.
    objects: BTreeMap<(&'static str, String, String), Value>,
    history: std::collections::VecDeque<Change>,
    /// A watch from a version below this is answered 410.
    oldest: u64,
    failing: bool,
    /// Cancelled to end every open watch.
    watches: CancellationToken,
    /// (resource, name) -> how many creates succeeded.
    creates: BTreeMap<(&'static str, String), u32>,
}

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<Change>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `object` (typed, so its shape is the API's) with a new resourceVersion and tells
    /// the watches.
    fn put(&self, resource: &'static str, namespace: &str, object: Value) -> Value {
        self.change(resource, namespace, object, false)
    }

    fn change(&self, resource: &'static str, namespace: &str, object: Value, deleted: bool) -> Value {
        let mut store = self.lock();
        self.record(&mut store, resource, namespace, object, deleted)
    }

    fn record(
        &self,
        store: &mut Store,
        resource: &'static str,
        namespace: &str,
        mut object: Value,
        deleted: bool,
    ) -> Value {
        store.version += 1;
        let version = store.version;
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let key = (resource, namespace.to_owned(), name.clone());
        let existed = store.objects.get(&key).map(|o| o["metadata"]["uid"].clone());
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(version.to_string());
        meta["namespace"] = json!(namespace);
        if meta.get("uid").is_none() {
            // An object keeps its uid through updates (a `kubectl scale`, an `apply`).
            meta["uid"] = existed.clone().unwrap_or_else(|| json!(format!("uid-{resource}-{name}-{version}")));
        }
        let event = match (deleted, existed.is_some()) {
            (true, _) => {
                store.objects.remove(&key);
                "DELETED"
            }
            (false, true) => "MODIFIED",
            (false, false) => "ADDED",
        };
        if !deleted {
            store.objects.insert(key, object.clone());
        }
        let change = Change { version, resource, namespace: namespace.to_owned(), kind: event, object: object.clone() };
        store.history.push_back(change.clone());
        while store.history.len() > HISTORY {
            let dropped = store.history.pop_front().map_or(0, |c| c.version);
            store.oldest = dropped + 1;
        }
        // Sent under the lock, so a watch that subscribes under it misses nothing.
        let _ = self.changes.send(change);
        object
    }
}

/// The fake API server; stops when dropped.
pub struct FakeK8s {
    pub addr: std::net::SocketAddr,
    pub kubeconfig: PathBuf,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl FakeK8s {
    /// Starts the server and writes a kubeconfig for it into `dir`.
    pub async fn start(dir: &Path) -> FakeK8s {
        let (changes, _) = broadcast::channel(4096);
        let shared = Shared { store: Arc::default(), changes };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("fake k8s listener");
        let addr = listener.local_addr().expect("fake k8s address");
        let app = Router::new()
            .route("/version", get(version))
            .route("/api", get(core_versions))
            .route("/apis", get(api_groups))
            .route("/api/v1", get(api_resources))
            .route("/apis/{group}/{version}", get(api_resources))
            .route("/api/v1/namespaces/{ns}/{resource}", get(list).post(create))
            .route("/api/v1/namespaces/{ns}/{resource}/{name}", get(get_one).put(replace))
            .route("/apis/{group}/{version}/namespaces/{ns}/{resource}", get(list).post(create))
            .route("/apis/{group}/{version}/namespaces/{ns}/{resource}/{name}", get(get_one).put(replace))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let kubeconfig = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
             user: fake\n    namespace: default\ncurrent-context: fake\n"
        );
        std::fs::write(&kubeconfig, text).expect("kubeconfig");
        FakeK8s { addr, kubeconfig, shared, task }
    }

    /// Creates or replaces the StatefulSet `name` with `replicas`.
    pub fn set_statefulset(&self, namespace: &str, name: &str, replicas: i32) {
        let sts = StatefulSet {
            metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
            spec: StatefulSetSpec { replicas: Some(replicas), ..StatefulSetSpec::default() },
            ..StatefulSet::default()
        };
        self.shared.put("statefulsets", namespace, to_value(&sts));
    }

    /// Creates or updates pod `name` with `labels`, running at `ip` (`None`: not yet scheduled).
    pub fn set_pod(&self, namespace: &str, name: &str, labels: &BTreeMap<String, String>, ip: Option<Ipv4Addr>) {
        let pod = Pod {
            metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels.clone()), ..ObjectMeta::default() },
            status: Some(PodStatus {
                phase: Some(if ip.is_some() { "Running" } else { "Pending" }.into()),
                pod_ip: ip.map(|ip| ip.to_string()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        self.shared.put("pods", namespace, to_value(&pod));
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let key = ("pods", namespace.to_owned(), name.to_owned());
        let found = self.shared.lock().objects.get(&key).cloned();
        if let Some(pod) = found {
            self.shared.change("pods", namespace, pod, true);
        }
    }

    /// While `failing`, every request is answered 500 with a Status.
    pub fn set_failing(&self, failing: bool) {
        self.shared.lock().failing = failing;
    }

    /// Ends every open watch, as an API server restart or a load balancer would.
    pub fn drop_watches(&self) {
        let mut store = self.shared.lock();
        store.watches.cancel();
        store.watches = CancellationToken::new();
    }

    /// Forgets the history: a watch from any version seen so far is then answered 410.
    pub fn compact(&self) {
        let mut store = self.shared.lock();
        // As an etcd compaction after a write nobody watched: every version seen so far is too old.
        store.version += 1;
        store.history.clear();
        store.oldest = store.version + 1;
    }

    /// Creates or replaces ConfigMap `name`, as `kubectl apply` would.
    pub fn set_config_map(&self, namespace: &str, name: &str, data: BTreeMap<String, String>) {
        let cm = ConfigMap {
            metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
            data: Some(data),
            ..ConfigMap::default()
        };
        self.shared.put("configmaps", namespace, to_value(&cm));
    }

    pub fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        self.object("configmaps", namespace, name)
    }

    /// How many creates of ConfigMap `name` succeeded.
    pub fn config_map_creates(&self, name: &str) -> u32 {
        self.shared.lock().creates.get(&("configmaps", name.to_owned())).copied().unwrap_or(0)
    }

    pub fn statefulset(&self, namespace: &str, name: &str) -> Option<StatefulSet> {
        self.object("statefulsets", namespace, name)
    }

    pub fn lease(&self, namespace: &str, name: &str) -> Option<Lease> {
        self.object("leases", namespace, name)
    }

    /// The core v1 events of `namespace`, oldest first.
    pub fn events(&self, namespace: &str) -> Vec<Event> {
        let store = self.shared.lock();
        let mut events: Vec<&Value> =
            store.objects.iter().filter(|((r, n, _), _)| *r == "events" && n == namespace).map(|(_, o)| o).collect();
        events.sort_by_key(|o| o["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse::<u64>().ok()));
        events.into_iter().map(|o| serde_json::from_value(o.clone()).expect("an Event")).collect()
    }

    fn object<T: serde::de::DeserializeOwned>(&self, resource: &'static str, namespace: &str, name: &str) -> Option<T> {
        let found = self.shared.lock().objects.get(&(resource, namespace.to_owned(), name.to_owned())).cloned();
        found.map(|v| serde_json::from_value(v).expect("an object of its kind"))
    }
}

impl Drop for FakeK8s {
    fn drop(&mut self) {
        self.drop_watches();
        self.task.abort();
    }
}

fn to_value<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("serializable")
}

fn status(code: u16, reason: &str, message: String, details: Option<(&str, &str)>) -> Response {
    let body = Status {
        code: Some(code.into()),
        message: Some(message),
        reason: Some(reason.into()),
        status: Some("Failure".into()),
        details: details.map(|(kind, name)| StatusDetails {
            kind: Some(kind.into()),
            name: Some(name.into()),
            ..StatusDetails::default()
        }),
        metadata: ListMeta::default(),
    };
    (StatusCode::from_u16(code).expect("a status code"), Json(to_value(&body))).into_response()
}

fn failing(shared: &Shared) -> Option<Response> {
    shared.lock().failing.then(|| status(500, "InternalError", "an internal error injected by the test".into(), None))
}

/// A kind the fake serves: its resource (the URL's plural), kind and apiVersion.
#[derive(Clone, Copy)]
struct Kind {
    resource: &'static str,
    kind: &'static str,
    api_version: &'static str,
}

fn kind_of(prefix: &str, resource: &str) -> Option<Kind> {
    KINDS.iter().find(|k| k.0 == prefix && k.1 == resource).map(|k| Kind { resource: k.1, kind: k.2, api_version: k.3 })
}

fn no_such_resource(resource: &str) -> Response {
    status(404, "NotFound", format!("the server could not find the requested resource {resource}"), None)
}

async fn version() -> Json<Value> {
    Json(json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0-fake", "platform": "linux/amd64"}))
}

async fn core_versions() -> Json<Value> {
    Json(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}))
}

/// The API groups of [`KINDS`], each with its one version.
async fn api_groups() -> Json<Value> {
    let groups: BTreeSet<&str> = KINDS.iter().filter_map(|k| k.3.split_once('/')).map(|(group, _)| group).collect();
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|name| {
            let version = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
            json!({"name": name, "versions": [version], "preferredVersion": version})
        })
        .collect();
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

/// The resources of one API group version (`/api/v1`, `/apis/{group}/{version}`).
async fn api_resources(UrlPath(p): UrlPath<HashMap<String, String>>) -> Response {
    let prefix = prefix_of(&p);
    let resources: Vec<Value> = KINDS
        .iter()
        .filter(|k| k.0 == prefix)
        .map(|k| {
            json!({"name": k.1, "singularName": k.2.to_lowercase(), "namespaced": true, "kind": k.2,
                "verbs": ["create", "get", "list", "update", "watch"]})
        })
        .collect();
    if resources.is_empty() {
        return no_such_resource(&prefix);
    }
    let group_version = prefix.trim_start_matches("/api/").trim_start_matches("/apis/");
    Json(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
        .into_response()
}

/// `/api/v1` for the core group, else `/apis/{group}/{version}`, from a route's parameters.
fn prefix_of(p: &HashMap<String, String>) -> String {
    match (p.get("group"), p.get("version")) {
        (Some(group), Some(version)) => format!("/apis/{group}/{version}"),
        _ => "/api/v1".to_owned(),
    }
}

/// What a namespaced request names: its kind (`None`: the fake does not serve it), namespace,
/// and object name (empty for a collection).
struct Target {
    kind: Option<Kind>,
    resource: String,
    ns: String,
    name: String,
}

impl Target {
    fn of(p: &HashMap<String, String>) -> Target {
        let resource = p.get("resource").cloned().unwrap_or_default();
        Target {
            kind: kind_of(&prefix_of(p), &resource),
            resource,
            ns: p.get("ns").cloned().unwrap_or_default(),
            name: p.get("name").cloned().unwrap_or_default(),
        }
    }
}

async fn list(
    State(s): State<Shared>,
    UrlPath(p): UrlPath<HashMap<String, String>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_or_watch(&s, &Target::of(&p), &q)
}

async fn get_one(State(s): State<Shared>, UrlPath(p): UrlPath<HashMap<String, String>>) -> Response {
    if let Some(fail) = failing(&s) {
        return fail;
    }
    let Target { kind, resource, ns, name } = Target::of(&p);
    let Some(Kind { resource, .. }) = kind else {
        return no_such_resource(&resource);
    };
    let found = s.lock().objects.get(&(resource, ns, name.clone())).cloned();
    match found {
        Some(object) => Json(object).into_response(),
        None => status(404, "NotFound", format!("{resource} \"{name}\" not found"), Some((resource, &name))),
    }
}

/// `body` as the API server would store it: read as its kind's type (so its shape is the API's),
/// in the request's namespace, and valid as [`invalid`] checks. A refusal is (status, reason,
/// message).
fn admitted(kind: Kind, ns: &str, body: Value) -> Result<Value, (u16, &'static str, String)> {
    fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(body: Value) -> Result<Value, serde_json::Error> {
        serde_json::from_value::<T>(body).map(|object| to_value(&object))
    }
    let bad = |message: String| (400, "BadRequest", message);
    if body["kind"].as_str().is_some_and(|k| k != kind.kind) {
        return Err(bad(format!("the body's kind is not {}", kind.kind)));
    }
    if body["metadata"]["namespace"].as_str().is_some_and(|n| n != ns) {
        return Err(
            bad("the namespace of the provided object does not match the namespace sent on the request".into()),
        );
    }
    let object = match kind.kind {
        "Pod" => typed::<Pod>(body),
        "ConfigMap" => typed::<ConfigMap>(body),
        "StatefulSet" => typed::<StatefulSet>(body),
        "Lease" => typed::<Lease>(body),
        "Event" => typed::<Event>(body),
        other => unreachable!("a kind of KINDS without a type: {other}"),
    }
    .map_err(|e| bad(format!("not a {}: {e}", kind.kind)))?;
    if object["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        return Err((422, "Invalid", "metadata.name: Required value".into()));
    }
    match invalid(kind, ns, &object) {
        Some(message) => Err((422, "Invalid", message)),
        None => Ok(object),
    }
}

/// What the API server's validation refuses in the kinds gm writes, as far as the fake checks it.
fn invalid(kind: Kind, ns: &str, object: &Value) -> Option<String> {
    match kind.kind {
        "Event" if object["involvedObject"]["namespace"].as_str() != Some(ns) => {
            Some("involvedObject.namespace: Invalid value: does not match event.namespace".into())
        }
        "Event" if object["reason"].as_str().is_none_or(str::is_empty) => Some("reason: Required value".into()),
        "Lease" if object["spec"]["leaseDurationSeconds"].as_i64().is_some_and(|d| d <= 0) => {
            Some("spec.leaseDurationSeconds: Invalid value: must be greater than 0".into())
        }
        "Lease" if object["spec"]["leaseTransitions"].as_i64().is_some_and(|t| t < 0) => {
            Some("spec.leaseTransitions: Invalid value: must be greater than or equal to 0".into())
        }
        _ => None,
    }
}

/// POST of an object: 409 AlreadyExists if one of that name exists.
async fn create(
    State(s): State<Shared>,
    UrlPath(p): UrlPath<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(fail) = failing(&s) {
        return fail;
    }
    let Target { kind, resource, ns, .. } = Target::of(&p);
    let Some(kind) = kind else {
        return no_such_resource(&resource);
    };
    let mut object = match admitted(kind, &ns, body) {
        Ok(object) => object,
        Err((code, reason, message)) => return status(code, reason, message, None),
    };
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    object["metadata"]["creationTimestamp"] =
        json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    // Checked and stored under one lock, so of two concurrent creates exactly one wins.
    let mut store = s.lock();
    let resource = kind.resource;
    if store.objects.contains_key(&(resource, ns.clone(), name.clone())) {
        return status(409, "AlreadyExists", format!("{resource} \"{name}\" already exists"), Some((resource, &name)));
    }
    *store.creates.entry((resource, name)).or_default() += 1;
    let stored = s.record(&mut store, resource, &ns, object, false);
    (StatusCode::CREATED, Json(stored)).into_response()
}

/// PUT of an object: replaces it only if the body's `metadata.resourceVersion` is the stored
/// one (optimistic concurrency, as the API server does), else 409 Conflict; 404 if none exists.
async fn replace(
    State(s): State<Shared>,
    UrlPath(p): UrlPath<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(fail) = failing(&s) {
        return fail;
    }
    let Target { kind, resource, ns, name } = Target::of(&p);
    let Some(kind) = kind else {
        return no_such_resource(&resource);
    };
    let mut object = match admitted(kind, &ns, body) {
        Ok(object) => object,
        Err((code, reason, message)) => return status(code, reason, message, None),
    };
    if object["metadata"]["name"].as_str() != Some(name.as_str()) {
        return status(400, "BadRequest", "the name in the body does not match the URL".into(), None);
    }
    let resource = kind.resource;
    let mut store = s.lock();
    let Some(stored) = store.objects.get(&(resource, ns.clone(), name.clone())) else {
        return status(404, "NotFound", format!("{resource} \"{name}\" not found"), Some((resource, &name)));
    };
    let current = stored["metadata"]["resourceVersion"].as_str().unwrap_or_default();
    if object["metadata"]["resourceVersion"].as_str() != Some(current) {
        return status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply \
                 your changes to the latest version and try again"
            ),
            Some((resource, &name)),
        );
    }
    object["metadata"]["uid"] = stored["metadata"]["uid"].clone();
    object["metadata"]["creationTimestamp"] = stored["metadata"]["creationTimestamp"].clone();
    let stored = s.record(&mut store, resource, &ns, object, false);
    Json(stored).into_response()
}

/// Whether `object` matches `labelSelector` (equality terms `k=v`, `k==v`, `k!=v`) and
/// `fieldSelector` (`metadata.name=` and `metadata.namespace=` only).
fn selected(object: &Value, q: &HashMap<String, String>) -> bool {
    let labels = &object["metadata"]["labels"];
    let label_ok = q.get("labelSelector").is_none_or(|sel| {
        sel.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels[k.trim()].as_str() == Some(v.trim())
            } else {
                labels.get(term).is_some()
            }
        })
    });
    let field_ok = q.get("fieldSelector").is_none_or(|sel| {
        sel.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|term| match term.split_once('=') {
            Some(("metadata.name", v)) => object["metadata"]["name"].as_str() == Some(v),
            Some(("metadata.namespace", v)) => object["metadata"]["namespace"].as_str() == Some(v),
            _ => false,
        })
    });
    label_ok && field_ok
}

fn list_or_watch(s: &Shared, target: &Target, q: &HashMap<String, String>) -> Response {
    if let Some(fail) = failing(s) {
        return fail;
    }
    let Some(Kind { resource, kind, api_version }) = target.kind else {
        return no_such_resource(&target.resource);
    };
    let ns = target.ns.as_str();
    if q.get("watch").is_some_and(|w| w == "1" || w == "true") {
        return watch(s, ns, resource, q);
    }
    let store = s.lock();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((r, n, _), o)| *r == resource && n == ns && selected(o, q))
        .map(|(_, o)| o.clone())
        .collect();
    let list = json!({
        "apiVersion": api_version,
        "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": store.version.to_string()},
        "items": items,
    });
    Json(list).into_response()
}

fn watch(s: &Shared, ns: &str, resource: &'static str, q: &HashMap<String, String>) -> Response {
    let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout =
        q.get("timeoutSeconds").and_then(|t| t.parse().ok()).map_or(Duration::from_secs(300), Duration::from_secs);
    let matches = {
        let (ns, q) = (ns.to_owned(), q.clone());
        move |c: &Change| c.resource == resource && c.namespace == ns && selected(&c.object, &q)
    };
    let line = |c: &Change| {
        let mut text = serde_json::to_vec(&json!({"type": c.kind, "object": c.object})).expect("json");
        text.push(b'\n');
        Ok::<_, Infallible>(bytes::Bytes::from(text))
    };
    let store = s.lock();
    let ended = store.watches.clone();
    if from != 0 && from + 1 < store.oldest {
        let gone = Status {
            code: Some(410),
            message: Some(format!("too old resource version: {from} ({})", store.oldest)),
            reason: Some("Expired".into()),
            status: Some("Failure".into()),
            ..Status::default()
        };
        let event = json!({"type": "ERROR", "object": to_value(&gone)});
        let mut text = serde_json::to_vec(&event).expect("json");
        text.push(b'\n');
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(text))
            .expect("a response");
    }
    let backlog: Vec<Change> = store.history.iter().filter(|c| c.version > from && matches(c)).cloned().collect();
    let last = backlog.last().map_or(from.max(store.version), |c| c.version);
    let live = tokio_stream::wrappers::BroadcastStream::new(s.changes.subscribe()).filter_map(move |c| {
        let keep = c.ok().filter(|c| c.version > last && matches(c));
        async move { keep }
    });
    drop(store);
    let stream = futures::stream::iter(backlog).chain(live).map(move |c| line(&c)).take_until(async move {
        tokio::select! {
            () = ended.cancelled_owned() => {}
            () = tokio::time::sleep(timeout) => {}
        }
    });
    Response::builder().header("content-type", "application/json").body(Body::from_stream(stream)).expect("a response")
}

/// The StatefulSet controller and the kubelet: pods as real `gm server` processes.
pub struct StatefulSetSim {
    pub fake: FakeK8s,
    pub namespace: String,
    pub name: String,
    pub service: String,
    labels: BTreeMap<String, String>,
    /// `127.{net.0}.{net.1}.{ordinal + 1 + 10 × generation}` is pod `ordinal`'s IP.
    net: (u8, u8),
    /// Each pod's IP generation: bumped by [`StatefulSetSim::move_pod`].
    generations: BTreeMap<u64, u8>,
    pub api_port: u16,
    pub peer_port: u16,
    dir: tempfile::TempDir,
    pods: BTreeMap<u64, Child>,
}

impl StatefulSetSim {
    /// A fake API server with a StatefulSet `gm-cluster` of `replicas` and no pods yet.
    pub async fn new(replicas: i32) -> StatefulSetSim {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = FakeK8s::start(dir.path()).await;
        let name = "gm-cluster".to_owned();
        let namespace = "gm-test".to_owned();
        fake.set_statefulset(&namespace, &name, replicas);
        let net = (rand::random::<u8>() % 200 + 20, rand::random::<u8>());
        let (api_port, peer_port) = free_ports(net, IP_GENERATIONS * 10);
        let labels = BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "gm".to_owned()),
            ("app.kubernetes.io/instance".to_owned(), name.clone()),
        ]);
        StatefulSetSim {
            fake,
            service: format!("{name}-headless"),
            namespace,
            name,
            labels,
            net,
            generations: BTreeMap::new(),
            api_port,
            peer_port,
            dir,
            pods: BTreeMap::new(),
        }
    }

    pub fn pod_name(&self, ordinal: u64) -> String {
        format!("{}-{ordinal}", self.name)
    }

    pub fn ip(&self, ordinal: u64) -> Ipv4Addr {
        let generation = self.generations.get(&ordinal).copied().unwrap_or(0);
        Ipv4Addr::new(127, self.net.0, self.net.1, ordinal as u8 + 1 + 10 * generation)
    }

    /// Gives stopped pod `ordinal` a new IP for its next start, as a rescheduled pod gets.
    pub fn move_pod(&mut self, ordinal: u64) {
        assert!(!self.pods.contains_key(&ordinal), "pod {ordinal} is running");
        let generation = self.generations.entry(ordinal).or_default();
        *generation = (*generation + 1) % IP_GENERATIONS;
    }

    pub fn api(&self, ordinal: u64) -> String {
        format!("{}:{}", self.ip(ordinal), self.api_port)
    }

    pub fn data_dir(&self, ordinal: u64) -> PathBuf {
        self.dir.path().join(self.pod_name(ordinal))
    }

    pub fn marker(&self) -> Option<ConfigMap> {
        self.fake.config_map(&self.namespace, &format!("{}-bootstrap", self.name))
    }

    pub fn marker_creates(&self) -> u32 {
        self.fake.config_map_creates(&format!("{}-bootstrap", self.name))
    }

    /// The Lease the leader holds, `{statefulset}-leader`.
    pub fn leader_lease(&self) -> Option<Lease> {
        self.fake.lease(&self.namespace, &format!("{}-leader", self.name))
    }

    /// The events on the StatefulSet, oldest first.
    pub fn events(&self) -> Vec<Event> {
        let mut events = self.fake.events(&self.namespace);
        events.retain(|e| e.involved_object.name.as_deref() == Some(self.name.as_str()));
        events
    }

    pub fn statefulset_uid(&self) -> Option<String> {
        self.fake.statefulset(&self.namespace, &self.name)?.metadata.uid
    }

    pub fn set_replicas(&self, replicas: i32) {
        self.fake.set_statefulset(&self.namespace, &self.name, replicas);
    }

    /// Creates pod `ordinal` (the fake reports it with its IP) and starts its process.
    pub fn start_pod(&mut self, ordinal: u64) {
        self.start_pod_published(ordinal, true);
    }

    /// Starts pods `ordinals`, one right after another (as `podManagementPolicy: Parallel`).
    pub fn start_pods(&mut self, ordinals: std::ops::Range<u64>) {
        ordinals.for_each(|ordinal| self.start_pod(ordinal));
    }

    /// Starts pod `ordinal`'s process; the fake reports its IP only if `published`, else once
    /// [`StatefulSetSim::publish_ip`] is called (as a kubelet that reports the pod's status late).
    pub fn start_pod_published(&mut self, ordinal: u64, published: bool) {
        assert!(!self.pods.contains_key(&ordinal), "pod {ordinal} is already running");
        let pod = self.pod_name(ordinal);
        let ip = published.then(|| self.ip(ordinal));
        self.fake.set_pod(&self.namespace, &pod, &self.labels, ip);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir(ordinal).with_extension("log"))
            .expect("log file");
        let selector = self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let child = Command::new(env!("CARGO_BIN_EXE_gm"))
            .arg("server")
            .env("KUBECONFIG", &self.fake.kubeconfig)
            .env("GM_DISCOVERY", "kubernetes")
            .env("GM_POD_NAME", &pod)
            .env("GM_NAMESPACE", &self.namespace)
            .env("GM_POD_IP", self.ip(ordinal).to_string())
            .env("GM_STATEFULSET", &self.name)
            .env("GM_SERVICE", &self.service)
            .env("GM_POD_SELECTOR", selector)
            .env("GM_API_ADDR", self.api(ordinal))
            .env("GM_PEER_ADDR", format!("{}:{}", self.ip(ordinal), self.peer_port))
            .env("GM_DATA_DIR", self.data_dir(ordinal))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gm server");
        self.pods.insert(ordinal, child);
    }

    /// Reports pod `ordinal`'s IP in its status.
    pub fn publish_ip(&self, ordinal: u64) {
        self.fake.set_pod(&self.namespace, &self.pod_name(ordinal), &self.labels, Some(self.ip(ordinal)));
    }

    /// Kills pods `ordinals` (see [`StatefulSetSim::kill_pod`]).
    pub fn kill_pods(&mut self, ordinals: std::ops::Range<u64>) {
        ordinals.for_each(|ordinal| self.kill_pod(ordinal));
    }

    /// kill -9 of pod `ordinal`'s process; the pod object is deleted, as on a node failure.
    pub fn kill_pod(&mut self, ordinal: u64) {
        if let Some(mut child) = self.pods.remove(&ordinal) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.fake.delete_pod(&self.namespace, &self.pod_name(ordinal));
    }

    /// Stops pod `ordinal` as the kubelet does when the pod is deleted: SIGTERM, then the
    /// process must exit cleanly within [`GRACE_PERIOD`] (else kill -9 and a failed test); the pod
    /// object keeps its IP while it terminates and is gone once the process is. Returns how long
    /// the process took to exit.
    pub async fn stop_pod(&mut self, ordinal: u64) -> Duration {
        self.stop_pods(ordinal..ordinal + 1).await[0]
    }

    /// [`StatefulSetSim::stop_pod`] of every pod of `ordinals` at once, as the StatefulSet
    /// controller stops the pods it scales away: SIGTERM to all, then a wait for each. Returns
    /// how long each took to exit.
    pub async fn stop_pods(&mut self, ordinals: std::ops::Range<u64>) -> Vec<Duration> {
        let mut stopping = Vec::new();
        for ordinal in ordinals {
            let child = self.pods.remove(&ordinal).unwrap_or_else(|| panic!("pod {ordinal} is not running"));
            let pid = libc::pid_t::try_from(child.id()).expect("a pid");
            // SAFETY: kill(2) of a child of this process that is not reaped yet, so its pid is not reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            stopping.push((ordinal, child));
        }
        let start = Instant::now();
        let mut took = Vec::new();
        for (ordinal, mut child) in stopping {
            let status = loop {
                if let Some(status) = child.try_wait().expect("waiting for a pod's process") {
                    break status;
                }
                if start.elapsed() > GRACE_PERIOD {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.fake.delete_pod(&self.namespace, &self.pod_name(ordinal));
                    panic!(
                        "pod {ordinal} did not exit within {GRACE_PERIOD:?} of SIGTERM and was killed; its log ends:\n{}",
                        self.log_tail(ordinal, 40)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            took.push(start.elapsed());
            self.fake.delete_pod(&self.namespace, &self.pod_name(ordinal));
            assert!(
                status.success(),
                "pod {ordinal} exited with {status} after SIGTERM; its log ends:\n{}",
                self.log_tail(ordinal, 40)
            );
        }
        took
    }

    /// What a rolling update does to pod `ordinal`: [`StatefulSetSim::stop_pod`], then, `gone_for`
    /// later (in a real cluster the controller, the scheduler and the kubelet take seconds), the
    /// pod is created again under its name and its process started on the same data dir and IP.
    /// Returns how long the old process took to exit.
    pub async fn roll_pod(&mut self, ordinal: u64, gone_for: Duration) -> Duration {
        let stopped = self.stop_pod(ordinal).await;
        tokio::time::sleep(gone_for).await;
        self.start_pod(ordinal);
        stopped
    }

    pub fn wipe(&self, ordinal: u64) {
        let _ = std::fs::remove_dir_all(self.data_dir(ordinal));
    }

    pub fn running(&self) -> impl Iterator<Item = u64> + '_ {
        self.pods.keys().copied()
    }

    /// A client of pod `ordinal` alone that tries once.
    pub fn client(&self, ordinal: u64) -> Client {
        Client::builder([self.api(ordinal)]).policy(RetryPolicy::once(Duration::from_secs(5))).build().expect("client")
    }

    /// What pod `ordinal` says of the cluster, read stale (no leader needed); `None` if it does not answer.
    pub async fn cluster(&self, ordinal: u64) -> Option<ClusterAnswer> {
        self.client(ordinal).cluster(Consistency::Stale).await.ok()
    }

    pub async fn is_ready(&self, ordinal: u64) -> bool {
        self.client(ordinal).readyz().await.is_ok()
    }

    /// The text of pod `ordinal`'s log, over all its lives.
    pub fn log_text(&self, ordinal: u64) -> String {
        std::fs::read_to_string(self.data_dir(ordinal).with_extension("log")).unwrap_or_default()
    }

    /// The last `lines` lines of pod `ordinal`'s log.
    pub fn log_tail(&self, ordinal: u64, lines: usize) -> String {
        let text = self.log_text(ordinal);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether a pod's process the test started has exited on its own.
    pub fn exited(&mut self) -> Vec<u64> {
        self.pods.iter_mut().filter_map(|(&o, c)| c.try_wait().ok().flatten().map(|_| o)).collect()
    }
}

impl Drop for StatefulSetSim {
    fn drop(&mut self) {
        let ordinals: Vec<u64> = self.pods.keys().copied().collect();
        if std::thread::panicking() {
            for &ordinal in &ordinals {
                let text = self.log_text(ordinal);
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("----- pod {} log (last 30 lines) -----", self.pod_name(ordinal));
                for line in &lines[lines.len().saturating_sub(30)..] {
                    eprintln!("{line}");
                }
            }
        }
        for (_, mut child) in std::mem::take(&mut self.pods) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until every running pod is ready and they all agree on one cluster id, one leader
/// and the voters 1..=replicas. Returns the cluster id.
pub async fn one_cluster(sim: &mut StatefulSetSim, replicas: u64) -> String {
    cluster_with_voters(sim, &(1..=replicas).collect()).await
}

/// Waits until every running pod is ready and they all agree on one cluster id, one leader
/// and the voters `expected`. Returns the cluster id.
pub async fn cluster_with_voters(sim: &mut StatefulSetSim, expected: &BTreeSet<u64>) -> String {
    let running: Vec<u64> = sim.running().collect();
    for &ordinal in &running {
        let sim = &*sim;
        wait_for(&format!("pod {ordinal} ready"), || async move { sim.is_ready(ordinal).await }).await;
    }
    assert!(sim.exited().is_empty(), "pods exited: {:?}", sim.exited());
    let sim = &*sim;
    poll("one cluster id, one leader, the expected voters on every pod", || {
        let (running, expected) = (running.clone(), expected.clone());
        async move {
            let mut seen = BTreeSet::new();
            for &ordinal in &running {
                let cluster = sim.cluster(ordinal).await?;
                if voters(&cluster) != expected {
                    return None;
                }
                seen.insert((cluster.cluster_id?, cluster.leader_id?));
            }
            (seen.len() == 1).then(|| seen.into_iter().next().map(|(id, _)| id)).flatten()
        }
    })
    .await
}

/// The voters' ids in `cluster`.
pub fn voters(cluster: &ClusterAnswer) -> BTreeSet<u64> {
    cluster.nodes.iter().filter(|n| matches!(n.role, Role::Leader | Role::Follower)).map(|n| n.id).collect()
}

/// An API port and a peer port free on the first `n` IPs of `127.{net.0}.{net.1}.0/24`, below the
/// ephemeral range.
fn free_ports(net: (u8, u8), n: u8) -> (u16, u16) {
    let free_everywhere = |port: u16| {
        (1..=n).all(|host| std::net::TcpListener::bind((Ipv4Addr::new(127, net.0, net.1, host), port)).is_ok())
    };
    let pick = || loop {
        let port = rand::random::<u16>() % 20_000 + 12_000;
        if free_everywhere(port) {
            return port;
        }
    };
    let api = pick();
    loop {
        let peer = pick();
        if peer != api {
            return (api, peer);
        }
    }
}
