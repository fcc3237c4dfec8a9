//! Leader duties in one place: the tasks only the leader runs (handing members of dead nodes
//! over, expiring leases, naming the cluster; with Kubernetes discovery, reconciling the voters
//! and holding the leader Lease) start when this node becomes leader of a term and
//! stop when that leadership ends, instead of each polling "am I leader?". Leader changes are
//! counted and logged here too, as this node sees them (the other Raft gauges are read when
//! `/metrics` is scraped: [`Node::raft_figures`]).

use std::sync::Arc;

use futures::future::BoxFuture;
use openraft::ServerState;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Node;
use crate::membership::NodeId;

/// A leader-only task: given the term this node leads in and a token cancelled when that
/// leadership ends. It may finish early (a one-off duty); a panic stops the node.
pub type Duty = Box<dyn Fn(u64, CancellationToken) -> BoxFuture<'static, ()> + Send + Sync>;

/// Runs `duties` while this node leads, and counts leader changes, until `cancel`.
pub async fn run(node: Arc<Node>, duties: Vec<Duty>, cancel: CancellationToken) {
    let mut raft = node.raft.metrics();
    let mut leader: Option<NodeId> = None;
    // The term this node leads in, the token that ends its duties, and the duties.
    let mut leading: Option<(u64, CancellationToken, JoinSet<()>)> = None;
    loop {
        let (now_leader, term, mine) = {
            let m = raft.borrow_and_update();
            (m.current_leader, m.current_term, m.state == ServerState::Leader && m.current_leader == Some(node.id))
        };
        if now_leader != leader && now_leader.is_some() {
            node.metrics.leader_changes.inc();
            tracing::info!(node = node.id, leader = now_leader, term, "leader changed");
        }
        leader = now_leader;
        let want = mine.then_some(term);
        if leading.as_ref().map(|(term, _, _)| *term) != want {
            if let Some((_, token, duties)) = leading.take() {
                stop(token, duties).await;
            }
            if let Some(term) = want {
                let token = cancel.child_token();
                let mut running = JoinSet::new();
                for duty in &duties {
                    running.spawn(duty(term, token.clone()));
                }
                leading = Some((term, token, running));
            }
        }
        let finished = async {
            match leading.as_mut() {
                Some((_, _, running)) if !running.is_empty() => running.join_next().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = raft.changed() => if changed.is_err() { break },
            Some(Err(e)) = finished => if e.is_panic() { std::panic::resume_unwind(e.into_panic()) },
        }
    }
    if let Some((_, token, duties)) = leading.take() {
        stop(token, duties).await;
    }
}

/// Ends a leadership's duties and waits for them, passing a panic on.
async fn stop(token: CancellationToken, mut duties: JoinSet<()>) {
    token.cancel();
    while let Some(done) = duties.join_next().await {
        if let Err(e) = done {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// The duty that names the cluster: once, by the first leader that finds it unnamed.
pub async fn name_cluster(node: Arc<Node>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if node.state.read().state.cluster_id().is_some() {
            return;
        }
        let cluster_id = uuid::Uuid::new_v4().to_string();
        if let Err(error) = node.write_local(crate::membership::Command::InitCluster { cluster_id }).await {
            tracing::debug!(%error, "naming the cluster failed; will retry");
        }
    }
}
