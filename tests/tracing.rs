//! Traces end to end: nodes started with `OTEL_EXPORTER_OTLP_ENDPOINT` export their spans over
//! OTLP/HTTP to a receiver in this test, a write sent to a follower with a client's `traceparent`
//! is one trace across the follower and the leader, the last spans go out on SIGTERM, and without
//! the variable nothing is sent at all.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use serde_json::json;

use common::{poll, Cluster};

/// One span as a receiver got it, with the node that sent it.
#[derive(Clone, Debug)]
struct Exported {
    /// The resource's `gm.node.id`.
    node: String,
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: BTreeMap<String, String>,
}

/// An OTLP/HTTP receiver on 127.0.0.1: `POST /v1/traces` with protobuf, every span kept.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Exported>>>,
    requests: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<Exported>>>,
    requests: Arc<Mutex<usize>>,
}

fn text(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Any::StringValue(s) => s.clone(),
                Any::IntValue(i) => i.to_string(),
                Any::BoolValue(b) => b.to_string(),
                Any::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

async fn traces(State(received): State<Received>, body: Bytes) -> (StatusCode, Vec<u8>) {
    *received.requests.lock().unwrap() += 1;
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut spans = received.spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = text(&resource_spans.resource.map(|r| r.attributes).unwrap_or_default());
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(Exported {
                    node: resource.get("gm.node.id").cloned().unwrap_or_default(),
                    service: resource.get("service.name").cloned().unwrap_or_default(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: text(&span.attributes),
                });
            }
        }
    }
    // An empty ExportTraceServiceResponse: all accepted.
    (StatusCode::OK, Vec::new())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Receiver {
    /// Listens on `port` of 127.0.0.1 (0: any free one).
    async fn start(port: u16) -> std::io::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let received = Received::default();
        let app = Router::new().route("/v1/traces", post(traces)).with_state(received.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { addr, spans: received.spans, requests: received.requests, task })
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }

    fn requests(&self) -> usize {
        *self.requests.lock().unwrap()
    }

    /// Waits until the spans of `trace_id` satisfy `done`, and returns them.
    async fn trace(&self, trace_id: &str, done: impl Fn(&[Exported]) -> bool) -> Vec<Exported> {
        poll(&format!("the spans of trace {trace_id}"), || async {
            let spans: Vec<Exported> = self.spans().into_iter().filter(|s| s.trace_id == trace_id).collect();
            done(&spans).then_some(spans)
        })
        .await
    }
}

/// The environment of nodes that export to `receiver`, every 100 ms, and of nothing else.
fn exporting_to(receiver: &Receiver) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", Some(receiver.endpoint())),
        ("OTEL_BSP_SCHEDULE_DELAY", Some("100".into())),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", None),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", None),
        ("OTEL_TRACES_SAMPLER", None),
        ("OTEL_SERVICE_NAME", None),
        ("OTEL_RESOURCE_ATTRIBUTES", None),
        ("OTEL_SDK_DISABLED", None),
    ]
}

fn env<'a>(vars: &'a [(&'static str, Option<String>)]) -> Vec<(&'static str, Option<&'a str>)> {
    vars.iter().map(|(k, v)| (*k, v.as_deref())).collect()
}

/// A client's W3C trace context: (trace id, span id, the `traceparent` header).
fn client_context() -> (String, String, String) {
    let trace_id = format!("{:032x}", rand::random::<u128>());
    let span_id = format!("{:016x}", rand::random::<u64>() | 1);
    let header = format!("00-{trace_id}-{span_id}-01");
    (trace_id, span_id, header)
}

async fn join_with(cluster: &Cluster, node: u64, group: &str, id: &str, traceparent: &str) -> u16 {
    cluster
        .http
        .put(cluster.node(node).url(&format!("/v1/groups/{group}/members/{id}")))
        .header("traceparent", traceparent)
        .json(&json!({"address": "10.1.2.3:9021"}))
        .send()
        .await
        .expect("join")
        .status()
        .as_u16()
}

const JOIN_ROUTE: &str = "PUT /v1/groups/{group}/members/{id}";

#[tokio::test]
async fn a_write_to_a_follower_is_one_trace_from_the_client_through_the_leader() {
    let receiver = Receiver::start(0).await.expect("receiver");
    let vars = exporting_to(&receiver);
    let cluster = Cluster::start_with_env(3, &[], &env(&vars)).await;
    let leader = cluster.leader().await;
    let follower = cluster.nodes.iter().map(|n| n.id).find(|&id| id != leader).expect("a follower");
    let (trace_id, client_span, traceparent) = client_context();

    assert_eq!(join_with(&cluster, follower, "traced", "worker-7", &traceparent).await, 201);

    let (leader_id, follower_id) = (leader.to_string(), follower.to_string());
    let spans = receiver
        .trace(&trace_id, |spans| {
            let on = |node: &str, name: &str| spans.iter().any(|s| s.node == node && s.name == name);
            on(&follower_id, JOIN_ROUTE) && on(&follower_id, "forward") && on(&leader_id, "propose")
        })
        .await;
    let named = |node: &str, name: &str| {
        spans.iter().find(|s| s.node == node && s.name == name).unwrap_or_else(|| panic!("{name} on node {node}"))
    };

    // The follower's request span continues the client's span, and names what it serves.
    let request = named(&follower_id, JOIN_ROUTE);
    assert_eq!(request.parent_span_id, client_span, "{request:?}");
    assert_eq!(request.service, "gm");
    for (key, value) in [("group", "traced"), ("member", "worker-7"), ("node", follower_id.as_str()), ("status", "201")]
    {
        assert_eq!(request.attributes.get(key).map(String::as_str), Some(value), "{key} of {request:?}");
    }
    let write = named(&follower_id, "write");
    assert_eq!(write.parent_span_id, request.span_id, "{write:?}");
    assert_eq!(write.attributes.get("op").map(String::as_str), Some("join"));

    // The forwarded batch goes on in the leader's peer span, under the follower's forward span,
    // down to the proposal, which lasts until the entry is applied on the leader.
    let forward = named(&follower_id, "forward");
    let peer = named(&leader_id, "/forward/writes");
    assert_eq!(peer.parent_span_id, forward.span_id, "{peer:?}");
    let propose = named(&leader_id, "propose");
    assert!(propose.attributes.get("term").is_some_and(|t| t != "0"), "{propose:?}");
    assert!(propose.attributes.contains_key("index"), "{propose:?}");
    let mut ancestor = propose.parent_span_id.clone();
    while ancestor != peer.span_id {
        let parent = spans.iter().find(|s| s.span_id == ancestor).unwrap_or_else(|| panic!("no span {ancestor}"));
        assert_eq!(parent.node, leader_id, "{parent:?} between the peer span and the proposal");
        ancestor = parent.parent_span_id.clone();
    }

    // Raft's own traffic (appends, heartbeats) starts no trace: every span exported belongs to
    // a request.
    let other = receiver.spans().into_iter().filter(|s| s.trace_id != trace_id).find(|s| s.name.starts_with("/raft"));
    assert!(other.is_none(), "{other:?}");
}

#[tokio::test]
async fn the_last_spans_are_exported_when_the_node_stops() {
    let receiver = Receiver::start(0).await.expect("receiver");
    let mut vars = exporting_to(&receiver);
    // Nothing would go out for a minute, but for the flush at exit.
    vars.retain(|(k, _)| *k != "OTEL_BSP_SCHEDULE_DELAY");
    vars.push(("OTEL_BSP_SCHEDULE_DELAY", Some("60000".into())));
    vars.push(("OTEL_SERVICE_NAME", Some("gm-test".into())));
    // Quiet logs do not quiet the traces.
    let cluster = Cluster::start_with_env(1, &["--log", "warn"], &env(&vars)).await;
    let (trace_id, client_span, traceparent) = client_context();
    assert_eq!(join_with(&cluster, 1, "flushed", "worker-1", &traceparent).await, 201);
    assert!(receiver.spans().iter().all(|s| s.trace_id != trace_id));

    cluster.terminate(1).await;
    let spans = receiver.trace(&trace_id, |spans| spans.iter().any(|s| s.name == "propose")).await;
    let request = spans.iter().find(|s| s.name == JOIN_ROUTE).expect("the request span");
    assert_eq!(request.parent_span_id, client_span);
    assert_eq!(request.service, "gm-test", "OTEL_SERVICE_NAME names the service");
    assert_eq!(request.node, "1");
}

#[tokio::test]
async fn nothing_is_exported_without_an_endpoint() {
    // The exporter's default endpoint, if it is free: an exporter built without the variable
    // would send here.
    let receiver = match Receiver::start(4318).await {
        Ok(receiver) => receiver,
        Err(_) => Receiver::start(0).await.expect("receiver"),
    };
    let mut vars = exporting_to(&receiver);
    vars.retain(|(k, _)| !k.starts_with("OTEL_EXPORTER_OTLP_"));
    vars.extend([("OTEL_EXPORTER_OTLP_ENDPOINT", None), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)]);
    let cluster = Cluster::start_with_env(1, &[], &env(&vars)).await;
    let (_, _, traceparent) = client_context();
    assert_eq!(join_with(&cluster, 1, "untraced", "worker-1", &traceparent).await, 201);
    // Absence takes waiting: ten export periods of 100 ms.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.terminate(1).await;
    assert_eq!(receiver.requests(), 0, "{:?}", receiver.spans());
    let log = cluster.log_text(1);
    assert!(!log.contains("exporting traces"), "{log}");
}
