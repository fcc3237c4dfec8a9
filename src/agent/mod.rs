//! `gm agent`: the sidecar that makes an app pod a member of its groups exactly while it lives.
//!
//! It joins each `--group` at start with the pod's address and a fresh `instance` (so every start
//! is a new incarnation), answers GM's probes on its own port (`200` while the app is healthy, if
//! an app check is configured, `503` otherwise), or in lease mode sends heartbeats; it re-joins
//! when it finds itself removed, follows each group's watch stream and serves the views to the app
//! on localhost, and on SIGTERM leaves with its own incarnation, so a late leave never removes a
//! successor. Everything toward GM goes through [`crate::client`].
//!
//! The parts: [`membership`] (join, heartbeats, re-join, leave, per group), [`view`] (the watch
//! streams and the cache), [`health`] (the app check), [`http`] (the local server) and
//! [`metrics`] (the agent's own registry). This file holds the flags and wires the parts.

pub mod health;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod view;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError};
use crate::membership::{Address, FailureDetection, GroupName, Instance, MemberId, MemberSpec, Metadata};
use crate::tasks::Tasks;

use self::health::AppCheck;
use self::membership::{Membership, Status};
use self::metrics::AgentMetrics;
use self::view::Views;

/// The agent's own routes, which a probe path must not shadow.
const OWN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// `gm agent`'s flags. Each also reads `GM_<FLAG>`; lists (`--endpoint`, `--group`,
/// `--metadata`, `--label`) read a comma-separated variable.
#[derive(Clone, Debug, Args)]
pub struct AgentConfig {
    /// A GM endpoint (`HOST:PORT` or `http://HOST:PORT`, any node); repeat it, or list them
    /// comma-separated, so that the agent fails over when one is down.
    #[arg(long = "endpoint", env = "GM_ENDPOINTS", value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// A group to join; repeat it for several.
    #[arg(long = "group", env = "GM_GROUPS", value_delimiter = ',', required = true, value_parser = group_name)]
    pub groups: Vec<GroupName>,
    /// The member id [default: $POD_NAME].
    #[arg(long, env = "GM_MEMBER_ID")]
    pub member_id: Option<String>,
    /// The address GM probes, `HOST:PORT` [default: $POD_IP and the port of --listen].
    #[arg(long, env = "GM_ADDRESS")]
    pub address: Option<String>,
    /// Where the agent listens: GM's probes, the app's reads of its views, health and metrics.
    #[arg(long, env = "GM_LISTEN", default_value = "0.0.0.0:9021")]
    pub listen: SocketAddr,
    /// The path GM probes (probe mode).
    #[arg(long, env = "GM_PROBE_PATH", default_value = "/gm/heartbeat")]
    pub probe_path: String,
    /// Lease mode, for pods GM cannot reach: keep the membership alive with heartbeats every third
    /// of this TTL instead of answering probes (for example `10s`).
    #[arg(long, env = "GM_LEASE", value_parser = crate::config::positive_duration)]
    pub lease: Option<Duration>,
    /// The app is healthy while `GET URL` answers 2xx (for example `http://127.0.0.1:8080/ready`).
    #[arg(long, env = "GM_APP_HEALTH_URL", conflicts_with = "app_health_tcp")]
    pub app_health_url: Option<reqwest::Url>,
    /// The app is healthy while `HOST:PORT` accepts a TCP connection.
    #[arg(long, env = "GM_APP_HEALTH_TCP")]
    pub app_health_tcp: Option<String>,
    /// How often the app is checked.
    #[arg(long, env = "GM_APP_HEALTH_INTERVAL", default_value = "1s", value_parser = crate::config::positive_duration)]
    pub app_health_interval: Duration,
    /// One app check's deadline.
    #[arg(long, env = "GM_APP_HEALTH_TIMEOUT", default_value = "1s", value_parser = crate::config::positive_duration)]
    pub app_health_timeout: Duration,
    /// Failed app checks in a row before the app counts as unhealthy (one success heals it).
    #[arg(
        long,
        env = "GM_APP_UNHEALTHY_AFTER",
        default_value_t = 2,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub app_unhealthy_after: u32,
    /// Metadata `KEY=VALUE`; repeat it. Wins over a pod label of the same key.
    #[arg(long = "metadata", env = "GM_METADATA", value_delimiter = ',', value_parser = key_value)]
    pub metadata: Vec<(String, String)>,
    /// The pod's labels as the downward API writes them (`key="value"` lines), copied into the
    /// metadata (see --label).
    #[arg(long, env = "GM_LABELS_FILE")]
    pub labels_file: Option<PathBuf>,
    /// A pod label to copy from --labels-file; repeat it [default: every label].
    #[arg(long = "label", env = "GM_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Also write each group's view, as `GET /v1/groups/{group}` answers it, to this file,
    /// atomically (a new file renamed over the old). With several groups the path must contain
    /// `{group}`, which is replaced by the group's name.
    #[arg(long, env = "GM_VIEW_FILE")]
    pub view_file: Option<String>,
    /// How long the leaves at SIGTERM may take, all groups together.
    #[arg(long, env = "GM_LEAVE_TIMEOUT", default_value = "3s", value_parser = crate::config::positive_duration)]
    pub leave_timeout: Duration,
}

fn group_name(s: &str) -> Result<GroupName, String> {
    GroupName::parse(s).map_err(|e| e.to_string())
}

fn key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// Why the agent could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the labels file {path}: {source}")]
    LabelsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the agent's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Task(#[from] crate::tasks::TaskError),
}

/// What the agent joins with, resolved from the flags, the environment and the bound port.
#[derive(Clone, Debug)]
pub struct Identity {
    pub id: MemberId,
    pub spec: MemberSpec,
}

impl Identity {
    /// `env` reads the environment (`POD_NAME`, `POD_IP`); `port` is the one --listen bound;
    /// `labels` the pod's labels, if a file gave them.
    pub fn resolve(
        config: &AgentConfig,
        port: u16,
        labels: BTreeMap<String, String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Identity, AgentError> {
        let bad = |e: crate::membership::ValidationError| AgentError::Config(e.to_string());
        let id = config
            .member_id
            .clone()
            .or_else(|| env("POD_NAME"))
            .ok_or_else(|| AgentError::Config("no member id: set --member-id or POD_NAME".into()))?;
        let id = MemberId::parse(&id).map_err(bad)?;
        let address = match &config.address {
            Some(address) => address.clone(),
            None => {
                let ip: IpAddr = match env("POD_IP") {
                    Some(ip) => ip.parse().map_err(|_| AgentError::Config(format!("POD_IP {ip:?} is not an IP")))?,
                    None if !config.listen.ip().is_unspecified() => config.listen.ip(),
                    None => return Err(AgentError::Config("no address: set --address or POD_IP".into())),
                };
                SocketAddr::new(ip, port).to_string()
            }
        };
        let address = Address::parse(&address).map_err(bad)?;
        let mut metadata: BTreeMap<String, String> = if config.labels.is_empty() {
            labels
        } else {
            labels.into_iter().filter(|(k, _)| config.labels.contains(k)).collect()
        };
        metadata.extend(config.metadata.iter().cloned());
        let metadata = Metadata::try_from(metadata).map_err(bad)?;
        // Validated as a join body is, so the bounds are the contract's.
        let (flag, detection) = match config.lease {
            Some(ttl) => {
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                ("--lease", serde_json::json!({"mode": "lease", "ttl_ms": ttl_ms}))
            }
            None => {
                let path = &config.probe_path;
                if OWN_PATHS.contains(&path.as_str()) || path.starts_with("/v1/") {
                    return Err(AgentError::Config(format!("--probe-path {path} is one of the agent's own routes")));
                }
                ("--probe-path", serde_json::json!({"mode": "probe", "path": path}))
            }
        };
        let failure_detection: FailureDetection =
            serde_json::from_value(detection).map_err(|e| AgentError::Config(format!("{flag}: {e}")))?;
        // A fresh token at every start: a restarted agent is a re-join, a new incarnation.
        let instance = Instance::parse(&uuid::Uuid::new_v4().simple().to_string()).map_err(bad)?;
        Ok(Identity { id, spec: MemberSpec { address, metadata, instance: Some(instance), failure_detection } })
    }
}

/// The pod's labels from a downward API file: one `key="value"` line each, the value quoted
/// as Go's `%q` writes it.
pub fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            let value = value.trim();
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            Some((key.trim().to_owned(), unquote(value)))
        })
        .collect()
}

fn unquote(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Where a group's view file goes, if one is asked for.
fn view_file(config: &AgentConfig, group: &GroupName) -> Option<PathBuf> {
    config.view_file.as_ref().map(|p| PathBuf::from(p.replace("{group}", group.as_str())))
}

/// What the local server reads: the views, each group's status, the app's health, metrics.
pub struct AgentState {
    pub views: Views,
    pub statuses: BTreeMap<GroupName, watch::Receiver<Status>>,
    pub app_healthy: watch::Receiver<bool>,
    pub probe_path: Option<String>,
    pub metrics: AgentMetrics,
}

impl AgentState {
    /// Ready once every group was joined once: a GM outage later does not make the pod unready.
    pub fn ready(&self) -> bool {
        self.statuses.values().all(|s| s.borrow().joined_once())
    }
}

/// Runs the agent until `shutdown` completes (SIGTERM), then leaves every group with its own
/// incarnation, within --leave-timeout, and stops.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let mut groups = config.groups.clone();
    groups.sort();
    groups.dedup();
    if groups.len() > 1 && config.view_file.as_ref().is_some_and(|p| !p.contains("{group}")) {
        return Err(AgentError::Config("--view-file must contain {group} when there are several groups".into()));
    }
    let labels = match &config.labels_file {
        Some(path) => parse_labels(
            &std::fs::read_to_string(path).map_err(|source| AgentError::LabelsFile { path: path.clone(), source })?,
        ),
        None => BTreeMap::new(),
    };
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| AgentError::Listen { addr: config.listen, source })?;
    let port = listener.local_addr().map_err(|source| AgentError::Listen { addr: config.listen, source })?.port();
    let identity = Identity::resolve(&config, port, labels, |k| std::env::var(k).ok())?;
    let client = Client::new(&config.endpoints)?;
    let metrics = AgentMetrics::new()?;
    tracing::info!(
        member = %identity.id,
        address = %identity.spec.address,
        listen = %SocketAddr::new(config.listen.ip(), port),
        groups = ?groups.iter().map(GroupName::as_str).collect::<Vec<_>>(),
        lease = ?config.lease,
        "agent starting"
    );

    let stop = CancellationToken::new();
    let mut tasks = Tasks::default();
    let check = match (&config.app_health_url, &config.app_health_tcp) {
        (Some(url), _) => Some(AppCheck::Http(url.clone())),
        (None, Some(addr)) => Some(AppCheck::Tcp(addr.clone())),
        (None, None) => None,
    };
    let (healthy_tx, app_healthy) = watch::channel(check.is_none());
    metrics.app_healthy.set(i64::from(check.is_none()));
    let views = Views::new(&groups);
    let mut statuses = BTreeMap::new();
    let mut members = Vec::new();
    for group in &groups {
        let (status_tx, status_rx) = watch::channel(Status::Waiting { joined_once: false });
        statuses.insert(group.clone(), status_rx);
        members.push(Membership {
            client: client.clone(),
            group: group.clone(),
            identity: identity.clone(),
            views: views.subscribe(group).expect("a followed group"),
            app_healthy: app_healthy.clone(),
            status: status_tx,
            leave_timeout: config.leave_timeout,
        });
    }
    let state = Arc::new(AgentState {
        views,
        statuses,
        app_healthy: app_healthy.clone(),
        probe_path: match &identity.spec.failure_detection {
            FailureDetection::Probe { path } => Some(path.clone()),
            FailureDetection::Lease { .. } => None,
        },
        metrics,
    });

    if let Some(check) = check {
        let settings = health::Settings {
            interval: config.app_health_interval,
            timeout: config.app_health_timeout,
            unhealthy_after: config.app_unhealthy_after,
        };
        tasks.spawn("app check", health::run(check, settings, healthy_tx, Arc::clone(&state), stop.clone()));
    } else {
        // No check: the app counts as healthy. The sender is kept until the agent stops, so
        // that the memberships never see the app's health end.
        let stopped = stop.clone();
        tasks.spawn("app check", async move {
            let _healthy = healthy_tx;
            stopped.cancelled().await
        });
    }
    for group in &groups {
        let follow =
            view::follow(client.clone(), group.clone(), view_file(&config, group), Arc::clone(&state), stop.clone());
        tasks.spawn("view", follow);
    }
    for member in members {
        tasks.spawn("membership", member.run(Arc::clone(&state), stop.clone()));
    }
    let http_stop = CancellationToken::new();
    let server = tokio::spawn(http::serve(listener, Arc::clone(&state), http_stop.clone()));

    let outcome = tokio::select! {
        _ = shutdown => Ok(()),
        ended = tasks.first_end() => Err(AgentError::Task(ended)),
    };
    tracing::info!("agent stopping: leaving its groups");
    stop.cancel();
    // The leaves are bounded by --leave-timeout; the other tasks end at once.
    let _ = tokio::time::timeout(config.leave_timeout + Duration::from_secs(1), tasks.join_all()).await;
    // Probes are answered until the leaves are done, so none fails in between.
    http_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    tracing::info!("agent stopped");
    outcome
}

#[cfg(test)]
mod tests;
