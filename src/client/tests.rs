//! The client against small in-process HTTP servers that answer as a GM node would (or would
//! not).

use std::sync::{Arc, Mutex};

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::Router;
use futures::StreamExt;
use serde_json::{json, Value};

use super::*;

/// Serves `app` on a free loopback port until the test ends; its endpoint.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listener");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

/// An endpoint where nothing listens.
fn closed_endpoint() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
    format!("127.0.0.1:{port}")
}

fn member_json(id: &str, incarnation: u64) -> Value {
    json!({"id": id, "group": "g", "address": "127.0.0.1:1", "metadata": {}, "instance": null,
           "incarnation": incarnation, "joined_at": "2026-11-24T10:00:00.123Z", "responsible_node": null,
           "failure_detection": {"mode": "lease", "ttl_ms": 5000}})
}

fn names() -> (GroupName, MemberId) {
    (GroupName::parse("g").expect("group"), MemberId::parse("a").expect("id"))
}

/// A quick policy, so that tests of retries take milliseconds.
fn quick() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: Duration::from_secs(5),
        deadline: Duration::from_millis(500),
        first_pause: Duration::from_millis(10),
        max_pause: Duration::from_millis(10),
    }
}

#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<String>>,
}

impl Seen {
    fn push(&self, line: String) {
        self.requests.lock().unwrap().push(line);
    }

    fn all(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_join_sends_the_spec_and_tells_a_first_join_from_a_repeated_one() {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route(
            "/v1/groups/{group}/members/{id}",
            put(
                |State(seen): State<Arc<Seen>>,
                 Path((g, id)): Path<(String, String)>,
                 headers: HeaderMap,
                 body: String| async move {
                    let first = seen.all().is_empty();
                    seen.push(format!("{g}/{id} {} {body}", headers[header::CONTENT_TYPE].to_str().unwrap()));
                    let status = if first { StatusCode::CREATED } else { StatusCode::OK };
                    (status, axum::Json(json!({"member": member_json(&id, 1), "revision": 4})))
                },
            ),
        )
        .with_state(Arc::clone(&seen));
    let client = Client::new([serve(app).await]).expect("client");
    let (group, id) = names();
    let spec: MemberSpec = serde_json::from_value(json!({"address": "127.0.0.1:1"})).expect("spec");
    let first = client.join(&group, &id, &spec).await.expect("joins");
    assert!(first.created);
    assert_eq!(first.answer.revision, 4);
    assert_eq!(first.answer.member.id, id);
    assert!(!client.join(&group, &id, &spec).await.expect("joins again").created);
    let sent = &seen.all()[0];
    assert!(sent.starts_with("g/a application/json {\"address\":\"127.0.0.1:1\""), "{sent}");
}

#[tokio::test]
async fn queries_carry_consistency_index_wait_and_incarnation() {
    let seen = Arc::new(Seen::default());
    let record = |State(seen): State<Arc<Seen>>, RawQuery(q): RawQuery| async move {
        seen.push(q.unwrap_or_default());
        axum::Json(json!({"group": "g", "revision": 9, "members": [member_json("a", 2)]}))
    };
    let leave = |State(seen): State<Arc<Seen>>, RawQuery(q): RawQuery| async move {
        seen.push(q.unwrap_or_default());
        axum::Json(json!({"revision": 10}))
    };
    let app = Router::new()
        .route("/v1/groups/{group}", get(record))
        .route("/v1/groups/{group}/members/{id}", axum::routing::delete(leave))
        .with_state(Arc::clone(&seen));
    let client = Client::new([serve(app).await]).expect("client");
    let (group, id) = names();
    let view = client.group(&group, Consistency::Linearizable).await.expect("view");
    assert_eq!((view.revision, view.members[0].incarnation), (9, 2));
    client.group(&group, Consistency::Stale).await.expect("view");
    client.group_after(&group, 9, Duration::from_millis(1500), Consistency::Linearizable).await.expect("view");
    assert_eq!(client.leave(&group, &id, Some(2)).await.expect("left").revision, 10);
    client.leave(&group, &id, None).await.expect("left");
    assert_eq!(seen.all(), ["", "consistency=stale", "index=9&wait=1500ms", "incarnation=2", ""]);
}

#[tokio::test]
async fn errors_carry_status_code_and_message() {
    let app = Router::new()
        .route(
            "/v1/groups/{group}",
            get(|| async {
                (StatusCode::NOT_FOUND, axum::Json(json!({"error": {"code": "not_found", "message": "no group g"}})))
            }),
        )
        .route("/v1/cluster", get(|| async { (StatusCode::BAD_GATEWAY, "<html>bad gateway</html>") }))
        .route("/v1/groups", get(|| async { axum::Json(json!({"revision": "x"})) }));
    let client = Client::new([serve(app).await]).expect("client");
    let (group, _) = names();
    match client.group(&group, Consistency::Linearizable).await {
        Err(e @ ClientError::Api { status: 404, code: ErrorCode::NotFound, .. }) => {
            assert_eq!(e.kind(), ErrorKind::NotFound);
            assert!(e.to_string().ends_with("404 not_found: no group g"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    match client.cluster(Consistency::Linearizable).await {
        Err(ClientError::Api { status: 502, code: ErrorCode::Other(code), message, .. }) => {
            assert_eq!((code.as_str(), message.as_str()), ("", "<html>bad gateway</html>"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(client.groups(Consistency::Linearizable).await, Err(ClientError::Decode { .. })));
}

#[tokio::test]
async fn unavailable_and_silent_endpoints_are_skipped_until_one_answers() {
    let unavailable = Router::new().fallback(|| async {
        let body = axum::Json(json!({"error": {"code": "unavailable", "message": "no leader"}}));
        (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], body).into_response()
    });
    let answering = Router::new().route(
        "/v1/groups/{group}/members/{id}/heartbeat",
        axum::routing::post(|| async { axum::Json(json!({"revision": 3, "ttl_ms": 5000})) }),
    );
    let endpoints = [closed_endpoint(), serve(unavailable).await, serve(answering).await];
    let client = Client::builder(&endpoints).policy(quick()).build().expect("client");
    let (group, id) = names();
    let answer = client.heartbeat(&group, &id).await.expect("the third endpoint answers");
    assert_eq!(answer, HeartbeatAnswer { revision: 3, ttl_ms: 5000 });

    // One endpoint, one attempt: its own error.
    let once = client.at(1).with_policy(RetryPolicy::once(Duration::from_secs(5)));
    let error = once.heartbeat(&group, &id).await.expect_err("503");
    assert_eq!((error.kind(), error.retry_after()), (ErrorKind::Unavailable, Some(Duration::from_secs(1))));

    // No endpoint answers: the last error, after several attempts.
    let none = client.with_endpoints(&endpoints[..2]).expect("client");
    match none.heartbeat(&group, &id).await {
        Err(ClientError::NoEndpointAnswered { attempts, last, .. }) => {
            assert!(attempts > 2, "{attempts}");
            assert!(last.is_retryable());
        }
        other => panic!("{other:?}"),
    }
    let refused = client.at(0).with_policy(RetryPolicy::once(Duration::from_secs(5)));
    assert!(refused.healthz().await.expect_err("nothing listens").is_connect());
}

#[tokio::test]
async fn an_attempt_that_takes_too_long_times_out_and_moves_on() {
    let hanging = Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        "late"
    });
    let answering =
        Router::new().route("/v1/groups", get(|| async { axum::Json(json!({"revision": 1, "groups": []})) }));
    let policy = RetryPolicy { attempt_timeout: Duration::from_millis(200), ..quick() };
    let client =
        Client::builder([serve(hanging).await, serve(answering).await]).policy(policy).build().expect("client");
    assert_eq!(client.groups(Consistency::Stale).await.expect("the second answers").revision, 1);
    let error = client.at(0).with_policy(RetryPolicy::once(policy.attempt_timeout)).readyz().await.expect_err("hangs");
    assert!(error.is_timeout() && matches!(error, ClientError::Timeout { .. }), "{error}");
}

#[tokio::test]
async fn a_watch_yields_views_split_across_chunks_and_ends_with_the_stream() {
    let view = |revision: u64, ids: &[&str]| {
        let members: Vec<Value> = ids.iter().map(|id| member_json(id, 1)).collect();
        json!({"group": "g", "revision": revision, "members": members}).to_string()
    };
    let text = format!(
        ": watching group g\n\nevent: view\nid: 5\ndata: {}\n\n: keep-alive\n\nevent: other\ndata: x\n\nevent: view\r\nid: 7\r\ndata: {}\r\n\r\n",
        view(5, &["a"]),
        view(7, &["a", "b"])
    );
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        text.as_bytes().chunks(7).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let body = Arc::new(Mutex::new(Some(chunks)));
    let app = Router::new().route(
        "/v1/groups/{group}/watch",
        get(move |headers: HeaderMap| {
            let chunks = body.lock().unwrap().take().unwrap_or_default();
            async move {
                assert_eq!(headers[header::ACCEPT], "text/event-stream");
                let stream = futures::stream::iter(chunks);
                ([(crate::wire::REVISION_HEADER, "5")], axum::body::Body::from_stream(stream))
            }
        }),
    );
    let client = Client::new([serve(app).await]).expect("client");
    let (group, _) = names();
    let mut watch = client.watch(&group, Consistency::Stale).await.expect("opens");
    assert_eq!(watch.revision(), Some(5));
    let first = watch.next().await.expect("a view").expect("decodes");
    assert_eq!((first.revision, first.members.len()), (5, 1));
    let second = watch.next().await.expect("a view").expect("decodes");
    assert_eq!((second.revision, second.members.len()), (7, 2));
    assert!(watch.next().await.is_none(), "the stream ended");
    assert_eq!(watch.bytes_read(), text.len() as u64);
}

#[test]
fn endpoints_are_normalised() {
    let client = Client::new(["127.0.0.1:8081", "http://gm:8080/", " https://gm.example ", "gm:80"]).expect("client");
    assert_eq!(client.endpoints(), ["http://127.0.0.1:8081", "http://gm:8080", "https://gm.example", "http://gm:80"]);
    for bad in [
        " ",
        "ftp://gm:1",
        "http://:80",
        "gm:8080/x?y=1",
        "127.0.0.1:8081/v1",
        "http://gm:8080/v1/",
        "localhost",
        "u:p@gm:1",
    ] {
        assert!(matches!(Client::new([bad]), Err(ClientError::Endpoint(_))), "{bad}");
    }
    assert!(matches!(Client::new(Vec::<String>::new()), Err(ClientError::Endpoint(_))));
    assert_eq!(client.at(5).endpoints(), ["http://gm:8080"]);
    assert_eq!(client.starting_at(2).first, 2);
}

#[tokio::test]
async fn after_a_node_hangs_requests_start_where_an_answer_came_from() {
    let hung = Arc::new(Seen::default());
    let hanging = Router::new()
        .fallback(|State(seen): State<Arc<Seen>>| async move {
            seen.push("asked".into());
            tokio::time::sleep(Duration::from_secs(60)).await;
            "late"
        })
        .with_state(Arc::clone(&hung));
    let answering =
        Router::new().route("/v1/groups", get(|| async { axum::Json(json!({"revision": 1, "groups": []})) }));
    let policy = RetryPolicy { attempt_timeout: Duration::from_millis(200), ..quick() };
    let client =
        Client::builder([serve(hanging).await, serve(answering).await]).policy(policy).build().expect("client");
    client.groups(Consistency::Stale).await.expect("the second answers");
    // The hung node cost one attempt; neither this client nor its clones ask it first again.
    for _ in 0..3 {
        client.clone().groups(Consistency::Stale).await.expect("the second answers");
    }
    assert_eq!(hung.all().len(), 1, "the hung node was asked again");
}

/// An endpoint whose first watch stream is `body`: a view of revision 5 first, then `rest`.
async fn watch_endpoint(rest: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>) -> String {
    let view = json!({"group": "g", "revision": 5, "members": [member_json("a", 1)]});
    let first = Bytes::from(format!("event: view\nid: 5\ndata: {view}\n\n"));
    let body = Arc::new(Mutex::new(Some(futures::stream::once(async { Ok(first) }).chain(rest).boxed())));
    let app = Router::new().route(
        "/v1/groups/{group}/watch",
        get(move || {
            let stream = body.lock().unwrap().take().expect("one watch only");
            async move { axum::body::Body::from_stream(stream) }
        }),
    );
    serve(app).await
}

#[tokio::test]
async fn a_watch_cut_short_says_the_connection_broke() {
    // The node's body fails mid-stream, after the view went out: hyper drops the connection
    // without the last chunk.
    let cut = futures::stream::once(async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Err(std::io::Error::other("the node died"))
    })
    .boxed();
    let client = Client::new([watch_endpoint(cut).await]).expect("client");
    let (group, _) = names();
    let mut watch = client.watch(&group, Consistency::Stale).await.expect("opens");
    assert_eq!(watch.next_within(Duration::from_secs(30)).await.expect("the first view").revision, 5);
    let lost = watch.next_within(Duration::from_secs(30)).await.expect_err("the stream broke");
    let text = lost.to_string();
    assert!(matches!(lost, WatchLost::Failed(ClientError::Transport { .. })), "{lost:?}");
    assert!(
        text.starts_with(&format!("{}: the connection broke before the whole answer came", watch.endpoint())),
        "{text}"
    );
    assert!(!text.contains("decoding"), "{text}");
}

#[tokio::test]
async fn a_watch_is_given_up_after_a_silence_but_not_while_keep_alives_come() {
    // Keep-alives every 100 ms for 1 s, then nothing (the connection stays open).
    let keep_alives = futures::stream::iter(0..10)
        .then(|_| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(Bytes::from_static(b": keep-alive\n\n"))
        })
        .chain(futures::stream::pending())
        .boxed();
    let client = Client::new([watch_endpoint(keep_alives).await]).expect("client");
    let (group, _) = names();
    let mut watch = client.watch(&group, Consistency::Stale).await.expect("opens");
    watch.next_within(Duration::from_secs(30)).await.expect("the first view");
    let waited = std::time::Instant::now();
    let lost = watch.next_within(Duration::from_millis(400)).await.expect_err("given up");
    assert!(matches!(lost, WatchLost::Silent(_)), "{lost:?}");
    // Not before the keep-alives stopped (1 s) and a silence of 400 ms followed.
    assert!(waited.elapsed() >= Duration::from_millis(1300), "given up after {:?}", waited.elapsed());
    assert!(watch.received_at().elapsed() >= Duration::from_millis(400));
    assert_eq!(lost.to_string(), "nothing came for 0.4 s");
}
