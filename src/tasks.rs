//! The background tasks of a node, owned and watched: every task has a name, and one that ends
//! or panics while the node runs is an error that stops the node (a dead prober must not
//! silently end failure detection while the API still answers).

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinSet};

/// Why a task ended before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("the {0} task stopped while the node was running")]
    Ended(&'static str),
    #[error("the {0} task panicked: {1}")]
    Panicked(&'static str, String),
}

/// Named tasks that run until the node stops.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl Tasks {
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Completes when the first task ends, with why; never while all of them run.
    pub async fn first_end(&mut self) -> TaskError {
        let Some(ended) = self.set.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let name = |id: Id| self.names.get(&id).copied().unwrap_or("unnamed");
        match ended {
            Ok((id, ())) => TaskError::Ended(name(id)),
            Err(e) => {
                let name = name(e.id());
                let why = match e.try_into_panic() {
                    Ok(panic) => panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".into()),
                    Err(e) => e.to_string(),
                };
                TaskError::Panicked(name, why)
            }
        }
    }

    /// Waits until every task has ended (after the node was told to stop).
    pub async fn join_all(&mut self) {
        while self.set.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_task_to_end_is_named() {
        let mut tasks = Tasks::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("short", async {});
        assert!(matches!(tasks.first_end().await, TaskError::Ended("short")));
        tasks.spawn("panics", async { panic!("boom") });
        match tasks.first_end().await {
            TaskError::Panicked(name, why) => assert_eq!((name, why.as_str()), ("panics", "boom")),
            other => panic!("{other:?}"),
        }
    }
}
