//! Gathers concurrent requests into batches: one round trip (a Raft append, a forwarded HTTP
//! request, a read-index round) then serves many callers. A request waits in the queue only
//! while the allowed number of batches are already on their way, so batches grow with load
//! and a lone request goes at once.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

type Waiter<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// The sending half: callers submit here.
pub struct Batcher<Req, Resp> {
    queue: mpsc::UnboundedSender<Waiter<Req, Resp>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the batching task. `send` gets up to `max_batch` requests and must answer each, in
    /// order; at most `in_flight` calls of `send` run at once. The task stops with `cancel`.
    pub fn start<F, Fut>(
        max_batch: usize,
        in_flight: usize,
        cancel: CancellationToken,
        send: F,
    ) -> (Self, JoinHandle<()>)
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        let (queue, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(rx, max_batch, in_flight, cancel, send));
        (Batcher { queue }, task)
    }

    /// Queues `req` and waits for its answer; `None` once the batcher has stopped.
    pub async fn submit(&self, req: Req) -> Option<Resp> {
        let (tx, rx) = oneshot::channel();
        self.queue.send((req, tx)).ok()?;
        rx.await.ok()
    }
}

async fn run<Req, Resp, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<Waiter<Req, Resp>>,
    max_batch: usize,
    in_flight: usize,
    cancel: CancellationToken,
    send: F,
) where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Resp>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut batches = JoinSet::new();
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            w = rx.recv() => match w { Some(w) => w, None => return },
        };
        // Waiting for a free slot lets more requests queue up behind `first`.
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        while batches.try_join_next().is_some() {}
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        // Callers that gave up need no answer.
        batch.retain(|(_, tx)| !tx.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (reqs, waiters): (Vec<Req>, Vec<_>) = batch.into_iter().unzip();
        let answers = send(reqs);
        batches.spawn(async move {
            for (tx, answer) in waiters.into_iter().zip(answers.await) {
                let _ = tx.send(answer);
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_requests_share_batches_and_get_their_own_answers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let (batcher, task) = Batcher::start(64, 1, CancellationToken::new(), move |reqs: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                reqs.into_iter().map(|r| r * 2).collect()
            }
        });
        let batcher = Arc::new(batcher);
        let answers = futures::future::join_all((0..200u32).map(|i| {
            let b = Arc::clone(&batcher);
            async move { b.submit(i).await }
        }))
        .await;
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a, Some(i as u32 * 2));
        }
        assert!(calls.load(Ordering::SeqCst) < 200 / 2, "{} calls for 200 requests", calls.load(Ordering::SeqCst));
        task.abort();
    }

    #[tokio::test]
    async fn a_stopped_batcher_answers_none() {
        let cancel = CancellationToken::new();
        let (batcher, task) = Batcher::start(8, 1, cancel.clone(), |reqs: Vec<u32>| async move { reqs });
        cancel.cancel();
        let _ = task.await;
        assert_eq!(batcher.submit(1).await, None);
    }
}
