//! A write load for tests that change the cluster under it: writers join members with unique
//! ids through a client of every node, keep the ids of the joins acknowledged, and afterwards the
//! test checks that a linearizable read holds every one of them (no acknowledged write lost).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gm::client::{Client, RetryPolicy};
use gm::membership::{GroupName, MemberId, MemberSpec};
use gm::wire::Consistency;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{lease_member, poll};

/// What the writers saw.
#[derive(Debug, Default)]
pub struct Written {
    /// The ids of the members whose join was acknowledged.
    pub acknowledged: BTreeSet<String>,
    /// Attempts that failed (503 while the leader moves, a node down): not acknowledged.
    pub failed: usize,
    /// The longest time between two acknowledged writes.
    pub longest_gap: Duration,
}

/// Writers running until [`WriteLoad::stop`].
pub struct WriteLoad {
    group: GroupName,
    stop: CancellationToken,
    writers: JoinSet<()>,
    written: Arc<Mutex<(Written, Instant)>>,
}

impl WriteLoad {
    /// Starts `writers` writers joining members to `group` through any of `apis`.
    pub fn start(apis: &[String], group: &str, writers: usize) -> WriteLoad {
        let group = GroupName::parse(group).expect("a group name");
        let client = Client::builder(apis).policy(RetryPolicy::once(Duration::from_secs(2))).build().expect("client");
        let stop = CancellationToken::new();
        let written = Arc::new(Mutex::new((Written::default(), Instant::now())));
        let mut tasks = JoinSet::new();
        for writer in 0..writers {
            let (client, group, stop, written) =
                (client.starting_at(writer), group.clone(), stop.clone(), Arc::clone(&written));
            tasks.spawn(async move {
                let spec: MemberSpec = serde_json::from_value(lease_member("10.0.0.1:9000")).expect("a spec");
                for n in 0.. {
                    if stop.is_cancelled() {
                        return;
                    }
                    let id = format!("w{writer}-{n}");
                    let member = MemberId::parse(&id).expect("a member id");
                    let acknowledged = client.join(&group, &member, &spec).await.is_ok();
                    {
                        let mut w = written.lock().expect("lock");
                        let (written, last) = &mut *w;
                        if acknowledged {
                            written.longest_gap = written.longest_gap.max(last.elapsed());
                            *last = Instant::now();
                            written.acknowledged.insert(id);
                        } else {
                            written.failed += 1;
                        }
                    }
                    if !acknowledged {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            });
        }
        WriteLoad { group, stop, writers: tasks, written }
    }

    /// How many writes were acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.written.lock().expect("lock").0.acknowledged.len()
    }

    /// Stops the writers and returns what they saw.
    pub async fn stop(mut self) -> Written {
        self.stop.cancel();
        while self.writers.join_next().await.is_some() {}
        std::mem::take(&mut self.written.lock().expect("lock").0)
    }

    /// Waits until a linearizable read through `client` answers, then asserts it holds every
    /// acknowledged join.
    pub async fn assert_none_lost(group: &str, client: &Client, written: &Written) {
        let group = GroupName::parse(group).expect("a group name");
        let view = poll("a linearizable read of the load's group", || {
            let (client, group) = (client.clone(), group.clone());
            async move { client.group(&group, Consistency::Linearizable).await.ok() }
        })
        .await;
        let present: BTreeSet<String> = view.members.iter().map(|m| m.id.to_string()).collect();
        let lost: Vec<&String> = written.acknowledged.difference(&present).collect();
        assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
    }
}
