//! When the client tries again, where, and after how long.
//!
//! Only failures that another node or a later moment may cure are retried: no answer at all (a
//! transport error or a timeout) and `503 unavailable` (no leader, no quorum). Each retry goes to
//! the next endpoint, after a pause that doubles from [`RetryPolicy::first_pause`] up to
//! [`RetryPolicy::max_pause`], raised to the answer's `Retry-After` within that cap. No attempt
//! starts after [`RetryPolicy::deadline`].
//!
//! Every request of the contract may be retried so: reads change nothing; a join is idempotent
//! (a retried join may answer `200` where the first try would have answered `201`); a heartbeat
//! renews the same lease again; a leave whose first try was applied but not answered answers
//! `404` when retried (with `?incarnation=N` as well), which the caller must read as "gone".

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::ClientError;

/// How long an attempt may take and how long to keep retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The longest one attempt may take, from connecting to the last byte of the answer (for a
    /// blocking query, on top of its `wait`; for a watch, until its headers).
    pub attempt_timeout: Duration,
    /// No attempt starts this long after the first did (for a blocking query, this plus its
    /// `wait`). [`Duration::ZERO`]: one attempt only.
    pub deadline: Duration,
    /// The pause after the first failed attempt; each further failure doubles it.
    pub first_pause: Duration,
    /// The longest pause between two attempts.
    pub max_pause: Duration,
}

impl Default for RetryPolicy {
    /// 15 s an attempt (a node answers `503` within 10 s when it cannot complete a request),
    /// retries for 30 s, pauses from 50 ms up to 1 s.
    fn default() -> Self {
        RetryPolicy {
            attempt_timeout: Duration::from_secs(15),
            deadline: Duration::from_secs(30),
            first_pause: Duration::from_millis(50),
            max_pause: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// One attempt of at most `attempt_timeout`, never retried: its error is the request's.
    pub fn once(attempt_timeout: Duration) -> RetryPolicy {
        RetryPolicy { attempt_timeout, deadline: Duration::ZERO, ..RetryPolicy::default() }
    }

    /// The pause before the next attempt, after `failures` (at least 1) failed ones the last of
    /// which asked to wait `retry_after`, `elapsed` after the first started; `None` if the next
    /// attempt would start past `deadline`.
    pub fn pause(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        elapsed: Duration,
        deadline: Duration,
    ) -> Option<Duration> {
        let doubled = self.first_pause.saturating_mul(1 << failures.saturating_sub(1).min(20));
        let pause = doubled.max(retry_after.unwrap_or_default()).min(self.max_pause);
        (elapsed + pause < deadline).then_some(pause)
    }

    /// Runs `attempt(endpoint)` for endpoint `first`, then, while it fails in a way worth
    /// retrying, for the next ones of `endpoints` in turn, until one succeeds or the policy gives
    /// up. `extra` lengthens the deadline (a blocking query's `wait`).
    ///
    /// Gives the first attempt's error as it is when the policy allows no retry, and
    /// [`ClientError::NoEndpointAnswered`] with the last error when retries ran out.
    pub(super) async fn run<T, F, Fut>(
        &self,
        endpoints: usize,
        first: usize,
        extra: Duration,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let start = Instant::now();
        let deadline = if self.deadline.is_zero() { Duration::ZERO } else { self.deadline + extra };
        let mut failures = 0;
        loop {
            let error = match attempt((first + failures as usize) % endpoints.max(1)).await {
                Ok(answer) => return Ok(answer),
                Err(error) if !error.is_retryable() => return Err(error),
                Err(error) => error,
            };
            failures += 1;
            match self.pause(failures, error.retry_after(), start.elapsed(), deadline) {
                Some(pause) => tokio::time::sleep(pause).await,
                None if failures == 1 => return Err(error),
                None => {
                    return Err(ClientError::NoEndpointAnswered {
                        attempts: failures,
                        waited: start.elapsed(),
                        last: Box::new(error),
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::wire::ErrorCode;

    const MS: Duration = Duration::from_millis(1);

    fn api(status: u16, retry_after: Option<Duration>) -> ClientError {
        ClientError::Api {
            endpoint: "http://a:1".into(),
            status,
            code: ErrorCode::Other(String::new()),
            message: "m".into(),
            retry_after,
        }
    }

    #[test]
    fn pauses_double_up_to_the_cap() {
        let p = RetryPolicy::default();
        let long = Duration::from_secs(3600);
        let pauses: Vec<Duration> = (1..=7).map(|n| p.pause(n, None, Duration::ZERO, long).unwrap()).collect();
        assert_eq!(pauses, [50 * MS, 100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]);
        assert_eq!(p.pause(u32::MAX, None, Duration::ZERO, long), Some(1000 * MS), "no overflow");
    }

    #[test]
    fn retry_after_raises_the_pause_within_the_cap() {
        let p = RetryPolicy::default();
        let long = Duration::from_secs(3600);
        assert_eq!(p.pause(1, Some(300 * MS), Duration::ZERO, long), Some(300 * MS));
        assert_eq!(p.pause(1, Some(Duration::from_secs(5)), Duration::ZERO, long), Some(1000 * MS));
        assert_eq!(p.pause(4, Some(MS), Duration::ZERO, long), Some(400 * MS));
    }

    #[test]
    fn no_attempt_starts_past_the_deadline() {
        let p = RetryPolicy::default();
        let deadline = Duration::from_secs(1);
        assert_eq!(p.pause(1, None, 900 * MS, deadline), Some(50 * MS));
        assert_eq!(p.pause(1, None, 960 * MS, deadline), None);
        assert_eq!(RetryPolicy::once(Duration::from_secs(1)).pause(1, None, Duration::ZERO, Duration::ZERO), None);
    }

    /// Runs `policy` over answers given in turn; returns its result and the endpoints and
    /// instants (since the start) of the attempts.
    async fn run(
        policy: RetryPolicy,
        endpoints: usize,
        first: usize,
        answers: Vec<Result<u32, ClientError>>,
    ) -> (Result<u32, ClientError>, Vec<(usize, Duration)>) {
        let start = Instant::now();
        let answers = Mutex::new(answers.into_iter());
        let tried = Mutex::new(Vec::new());
        let result = policy
            .run(endpoints, first, Duration::ZERO, |endpoint| {
                tried.lock().unwrap().push((endpoint, start.elapsed()));
                let answer = answers.lock().unwrap().next().unwrap_or_else(|| Err(api(503, None)));
                async move { answer }
            })
            .await;
        (result, tried.into_inner().unwrap())
    }

    /// A real transport error: a connection to a port nothing listens on.
    async fn connect_refused() -> ClientError {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let source = reqwest::get(&endpoint).await.expect_err("nothing listens");
        ClientError::Transport { endpoint, source }
    }

    #[tokio::test]
    async fn failures_move_on_to_the_next_endpoint_after_a_pause() {
        let refused = connect_refused().await;
        assert!(refused.is_connect() && refused.is_retryable(), "{refused}");
        tokio::time::pause();
        let answers = vec![Err(api(503, None)), Err(refused), Ok(7)];
        let (result, tried) = run(RetryPolicy::default(), 3, 1, answers).await;
        assert_eq!(result.expect("the third try answers"), 7);
        assert_eq!(tried.iter().map(|(e, _)| *e).collect::<Vec<_>>(), [1, 2, 0]);
        // Time paused mid-millisecond: timers fire on the next whole one.
        for ((_, at), expected) in tried.iter().zip([0, 50, 150]) {
            assert!((expected..=expected + 2).contains(&at.as_millis()), "{tried:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_that_are_not_unavailable_are_final() {
        for status in [400, 404, 409, 500] {
            let (result, tried) = run(RetryPolicy::default(), 3, 0, vec![Err(api(status, None)), Ok(1)]).await;
            assert_eq!(result.expect_err("final").status(), Some(status));
            assert_eq!(tried.len(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_attempt_gives_its_own_error() {
        let (result, tried) = run(RetryPolicy::once(Duration::from_secs(1)), 3, 2, vec![Err(api(503, None))]).await;
        assert_eq!(result.expect_err("fails").status(), Some(503));
        assert_eq!(tried, [(2, Duration::ZERO)]);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_end_at_the_deadline_with_the_last_error() {
        let policy = RetryPolicy { deadline: Duration::from_secs(2), ..RetryPolicy::default() };
        let (result, tried) = run(policy, 2, 0, vec![]).await;
        // 50 + 100 + 200 + 400 + 800 ms of pauses: the next would start at 2.55 s.
        let starts: Vec<u64> = tried.iter().map(|(_, at)| at.as_millis() as u64).collect();
        assert_eq!(starts, [0, 50, 150, 350, 750, 1550]);
        assert_eq!(tried.iter().map(|(e, _)| *e).collect::<Vec<_>>(), [0, 1, 0, 1, 0, 1]);
        match result {
            Err(ClientError::NoEndpointAnswered { attempts: 6, last, .. }) => assert_eq!(last.status(), Some(503)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_slows_the_retries_down() {
        let answers = vec![Err(api(503, Some(Duration::from_secs(1)))), Ok(1)];
        let (_, tried) = run(RetryPolicy::default(), 1, 0, answers).await;
        assert_eq!(tried, [(0, Duration::ZERO), (0, Duration::from_secs(1))]);
    }
}
