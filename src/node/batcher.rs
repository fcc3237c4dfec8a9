//! Gathers concurrent requests into batches: one round trip (a Raft append, a forwarded HTTP
//! request, a read-index round) then serves many callers. A request waits in the queue only
//! while the allowed number of batches are already on their way, so batches grow with load
//! and a lone request goes at once.
//!
//! Each batch runs in a `batch` span. Its parent is the span of the first caller in it that has
//! one, so a lone write's trace runs straight through (a follower's request, the forward, the
//! leader's proposal); it follows from (an OpenTelemetry link) every other caller's span, and
//! each of those follows from it, so any caller's trace leads to the batch that served it.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

/// A request, the span of its caller, and where its answer goes.
type Waiter<Req, Resp> = (Req, Span, oneshot::Sender<Resp>);

/// How big batches get, and how many travel at once.
#[derive(Clone, Copy)]
pub struct Limits<Req> {
    pub weight: usize,
    pub weigh: fn(&Req) -> usize,
    pub in_flight: usize,
}

/// The sending half: callers submit here.
pub struct Batcher<Req, Resp> {
    queue: mpsc::UnboundedSender<Waiter<Req, Resp>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the batching task. `send` gets requests whose `weigh`ts add up to at most
    /// `limits.weight` (and at least one), and must answer each, in order; at most
    /// `limits.in_flight` calls of `send` run at once. The task stops with `cancel`.
    pub fn start<F, Fut>(limits: Limits<Req>, cancel: CancellationToken, send: F) -> (Self, JoinHandle<()>)
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        let (queue, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(rx, limits, cancel, send));
        (Batcher { queue }, task)
    }

    /// Queues `req` and waits for its answer; `None` once the batcher has stopped.
    pub async fn submit(&self, req: Req) -> Option<Resp> {
        let (tx, rx) = oneshot::channel();
        self.queue.send((req, Span::current(), tx)).ok()?;
        rx.await.ok()
    }
}

async fn run<Req, Resp, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<Waiter<Req, Resp>>,
    limits: Limits<Req>,
    cancel: CancellationToken,
    send: F,
) where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Resp>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.in_flight));
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
        let mut weight = (limits.weigh)(&first.0);
        let mut batch = vec![first];
        while weight < limits.weight {
            match rx.try_recv() {
                Ok(w) => {
                    weight += (limits.weigh)(&w.0);
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        // Callers that gave up need no answer.
        batch.retain(|(_, _, tx)| !tx.is_closed());
        if batch.is_empty() {
            continue;
        }
        let span = batch_span(batch.iter().map(|(_, span, _)| span), batch.len());
        let (reqs, waiters): (Vec<Req>, Vec<_>) = batch.into_iter().map(|(req, _, tx)| (req, tx)).unzip();
        let answers = send(reqs).instrument(span);
        batches.spawn(async move {
            for (tx, answer) in waiters.into_iter().zip(answers.await) {
                let _ = tx.send(answer);
            }
            drop(permit);
        });
    }
}

/// The span of a batch of `size` requests whose callers' spans are `callers`.
fn batch_span<'a>(callers: impl Iterator<Item = &'a Span>, size: usize) -> Span {
    let mut traced = callers.filter(|s| !s.is_disabled());
    let span = match traced.next() {
        Some(first) => tracing::info_span!(parent: first, "batch", size),
        None => tracing::info_span!(parent: None, "batch", size),
    };
    for caller in traced {
        span.follows_from(caller);
        caller.follows_from(&span);
    }
    span
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_requests_share_batches_and_get_their_own_answers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let limits = Limits { weight: 64, weigh: |_| 1, in_flight: 1 };
        let (batcher, task) = Batcher::start(limits, CancellationToken::new(), move |reqs: Vec<u32>| {
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
    async fn batches_stay_within_their_weight() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let limits = Limits { weight: 10, weigh: |r: &usize| *r, in_flight: 1 };
        let (batcher, task) = Batcher::start(limits, CancellationToken::new(), move |reqs: Vec<usize>| {
            seen.lock().unwrap().push(reqs.iter().sum::<usize>());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                reqs
            }
        });
        let batcher = Arc::new(batcher);
        let weights = [3usize, 4, 5, 20, 1, 2, 6, 6, 6];
        futures::future::join_all(weights.iter().map(|&w| {
            let b = Arc::clone(&batcher);
            async move { b.submit(w).await }
        }))
        .await;
        // A batch stops growing once it reaches the weight; a single heavy request still goes.
        for total in sizes.lock().unwrap().iter() {
            assert!(*total < 10 + 20, "batch of weight {total}");
        }
        task.abort();
    }

    #[tokio::test]
    async fn a_stopped_batcher_answers_none() {
        let cancel = CancellationToken::new();
        let limits = Limits { weight: 8, weigh: |_| 1, in_flight: 1 };
        let (batcher, task) = Batcher::start(limits, cancel.clone(), |reqs: Vec<u32>| async move { reqs });
        cancel.cancel();
        let _ = task.await;
        assert_eq!(batcher.submit(1).await, None);
    }
}
