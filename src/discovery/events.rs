//! Kubernetes Events on the StatefulSet, one for each change the leader makes to the voters, so
//! `kubectl describe statefulset` and `kubectl get events` tell what gm did to its cluster and
//! when. They are a report, not a record: a create that fails is logged (one warning per outage)
//! and forgotten, and never affects the change it reports.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;

use super::kubernetes::Kubernetes;

/// The component events are reported by.
const COMPONENT: &str = "gm";

/// How long the leader waits for the API server to take an event: the reconcile loop waits for
/// it, so that an event is not lost to the end of a leadership, but only this long.
const CREATE_TIMEOUT: Duration = Duration::from_secs(3);

/// Reports events on the StatefulSet, as this pod.
pub struct Recorder {
    kube: Kubernetes,
    api: Api<Event>,
    /// Whether the last create failed: only the first failure of an outage is a warning.
    failing: bool,
}

impl Recorder {
    pub fn new(kube: &Kubernetes) -> Self {
        let api = Api::namespaced(kube.client().clone(), &kube.settings().namespace);
        Recorder { kube: kube.clone(), api, failing: false }
    }

    /// Creates a `Normal` event with `reason` (CamelCase, as Kubernetes' own) and a one-line
    /// `message`.
    pub async fn record(&mut self, reason: &str, message: String) {
        let event = self.event(reason, message);
        let created = tokio::time::timeout(CREATE_TIMEOUT, self.api.create(&PostParams::default(), &event)).await;
        let error = match created {
            Ok(Ok(_)) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(reason, "creating events works again");
                }
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {CREATE_TIMEOUT:?}"),
        };
        if std::mem::replace(&mut self.failing, true) {
            tracing::debug!(reason, %error, "cannot create an event");
        } else {
            tracing::warn!(reason, %error, "cannot create an event; the voter change is made all the same");
        }
    }

    fn event(&self, reason: &str, message: String) -> Event {
        let settings = self.kube.settings();
        let now = Timestamp::now();
        Event {
            metadata: ObjectMeta {
                // As client-go names events: the object's name and a unique suffix.
                name: Some(format!("{}.{:x}", settings.statefulset, now.as_nanosecond())),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("apps/v1".into()),
                kind: Some("StatefulSet".into()),
                name: Some(settings.statefulset.clone()),
                namespace: Some(settings.namespace.clone()),
                uid: self.kube.statefulset_uid(),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some("Normal".into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(EventSource { component: Some(COMPONENT.into()), host: None }),
            reporting_component: Some(COMPONENT.into()),
            reporting_instance: Some(settings.pod_name.clone()),
            ..Event::default()
        }
    }
}
