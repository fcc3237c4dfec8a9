use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    agent: AgentConfig,
}

fn config(args: &[&str]) -> AgentConfig {
    let mut all = vec!["gm-agent", "--endpoint", "gm:8080", "--group", "web"];
    all.extend_from_slice(args);
    Cli::try_parse_from(all).expect("valid flags").agent
}

fn pod(key: &str) -> Option<String> {
    match key {
        "POD_NAME" => Some("web-7d9f-abcde".into()),
        "POD_IP" => Some("10.1.2.3".into()),
        _ => None,
    }
}

#[test]
fn the_pod_gives_id_and_address_and_every_start_a_new_instance() {
    let c = config(&[]);
    let a = Identity::resolve(&c, 9021, BTreeMap::new(), pod).unwrap();
    assert_eq!(a.id.as_str(), "web-7d9f-abcde");
    assert_eq!(a.spec.address.to_string(), "10.1.2.3:9021");
    assert_eq!(a.spec.failure_detection, FailureDetection::Probe { path: "/gm/heartbeat".into() });
    let b = Identity::resolve(&c, 9021, BTreeMap::new(), pod).unwrap();
    assert!(a.spec.instance.is_some() && a.spec.instance != b.spec.instance);

    let six = Identity::resolve(&c, 9021, BTreeMap::new(), |k| (k == "POD_IP").then(|| "fd00::7".into()));
    assert!(matches!(six, Err(AgentError::Config(_))), "no id");
    let c = config(&["--member-id", "w1"]);
    let six = Identity::resolve(&c, 9021, BTreeMap::new(), |k| (k == "POD_IP").then(|| "fd00::7".into())).unwrap();
    assert_eq!(six.spec.address.to_string(), "[fd00::7]:9021");
}

#[test]
fn flags_win_over_the_pod() {
    let c = config(&["--member-id", "w1", "--address", "w1.svc:80", "--metadata", "zone=a", "--lease", "6s"]);
    let labels = BTreeMap::from([("zone".to_owned(), "b".to_owned()), ("app".to_owned(), "web".to_owned())]);
    let a = Identity::resolve(&c, 9021, labels.clone(), pod).unwrap();
    assert_eq!((a.id.as_str(), a.spec.address.to_string().as_str()), ("w1", "w1.svc:80"));
    let metadata = serde_json::to_value(&a.spec.metadata).unwrap();
    assert_eq!(metadata, serde_json::json!({"app": "web", "zone": "a"}));
    assert_eq!(a.spec.failure_detection, FailureDetection::Lease { ttl_ms: 6000 });

    let c = config(&["--label", "app"]);
    let a = Identity::resolve(&c, 9021, labels, pod).unwrap();
    assert_eq!(serde_json::to_value(&a.spec.metadata).unwrap(), serde_json::json!({"app": "web"}));
}

#[test]
fn bad_values_stop_the_start() {
    for args in [
        &["--lease", "100ms"][..],
        &["--probe-path", "/healthz"],
        &["--probe-path", "no-slash"],
        &["--address", "nowhere"],
        &["--member-id=-bad"],
    ] {
        let c = config(args);
        assert!(matches!(Identity::resolve(&c, 1, BTreeMap::new(), pod), Err(AgentError::Config(_))), "{args:?}");
    }
    let unspecified = config(&[]);
    assert!(Identity::resolve(&unspecified, 1, BTreeMap::new(), |_| None).is_err(), "no POD_NAME, no POD_IP");
}

#[test]
fn labels_are_read_as_the_downward_api_writes_them() {
    let text = "app=\"web\"\npod-template-hash=\"7d9f\"\nnote=\"a \\\"quoted\\\" word\"\n";
    let labels = parse_labels(text);
    assert_eq!(labels["app"], "web");
    assert_eq!(labels["pod-template-hash"], "7d9f");
    assert_eq!(labels["note"], "a \"quoted\" word");
}
