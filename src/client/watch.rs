//! A watch stream as a [`Stream`] of the group's views.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use tokio::time::Instant;

use super::sse::{SseEvent, SseParser};
use super::ClientError;
use crate::wire::{GroupView, REVISION_HEADER, VIEW_EVENT};

/// The views of one group from one node, as [`super::Client::watch`] opened them: first the
/// current view (with no members if the group has none), then one per change. Events other
/// than `view`, and keep-alive comments (every 15 s), are skipped.
///
/// The stream ends (`None`) when the node ends it (it shuts down), after an `Err` item when the
/// connection breaks or a view does not decode. It is not opened again by itself: open a new
/// one, on any node; its first view is the whole current view, so no change is lost, though
/// one may be seen twice. A node that stops answering without closing the connection is not
/// noticed by the stream itself: [`Watch::next_within`] gives it up after a silence.
pub struct Watch {
    endpoint: String,
    revision: Option<u64>,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    parser: SseParser,
    /// Events parsed but not yet handed out.
    parsed: VecDeque<SseEvent>,
    received_at: Instant,
    bytes: u64,
    ended: bool,
}

impl Watch {
    pub(super) fn new(endpoint: String, response: reqwest::Response) -> Watch {
        let revision = response.headers().get(REVISION_HEADER).and_then(|v| v.to_str().ok()?.parse().ok());
        Watch {
            endpoint,
            revision,
            body: response.bytes_stream().boxed(),
            parser: SseParser::default(),
            parsed: VecDeque::new(),
            received_at: Instant::now(),
            bytes: 0,
            ended: false,
        }
    }

    /// The node that sends the stream, `http://HOST:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `X-GM-Revision` of the stream: its first view's revision, or, if the node had no quorum
    /// when it answered, the revision it had applied then, which the first view will not be below.
    pub fn revision(&self) -> Option<u64> {
        self.revision
    }

    /// When the stream's last bytes arrived, keep-alives included (when it was opened, before
    /// any). Right after a view is handed out: when the bytes that completed it arrived (before it
    /// was decoded), the moment the node's change was seen here.
    pub fn received_at(&self) -> Instant {
        self.received_at
    }

    /// Bytes of the stream read so far, keep-alives included.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }
}

/// Why [`Watch::next_within`] has no next view: the stream is of no more use, open another.
#[derive(Debug, thiserror::Error)]
pub enum WatchLost {
    /// The node closed the stream (it is shutting down).
    #[error("the node ended the stream")]
    Ended,
    /// The connection broke, or a view did not decode.
    #[error(transparent)]
    Failed(#[from] ClientError),
    /// Nothing came, not even a keep-alive, for this long: the node (or the way to it) hangs.
    #[error("nothing came for {} s", seconds(*.0))]
    Silent(Duration),
}

/// `d` in seconds: whole ones as such (`35`), others to a tenth (`0.4`).
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{:.1}", d.as_secs_f64())
    }
}

impl Watch {
    /// The next view, unless the stream sends nothing at all (keep-alives count, and a node
    /// sends one after 15 s of quiet) for `silence` from its last bytes. The silence is timed
    /// from [`Watch::received_at`], so a stream is given up `silence` after it fell silent
    /// whenever the caller started waiting. Pick `silence` above two keep-alive periods, so that
    /// one late keep-alive does not lose the stream.
    pub async fn next_within(&mut self, silence: Duration) -> Result<GroupView, WatchLost> {
        loop {
            match tokio::time::timeout_at(self.received_at + silence, self.next()).await {
                Ok(Some(view)) => return Ok(view?),
                Ok(None) => return Err(WatchLost::Ended),
                // Keep-alives came meanwhile: the node is there, the group has not changed.
                Err(_) if self.received_at.elapsed() < silence => {}
                Err(_) => return Err(WatchLost::Silent(silence)),
            }
        }
    }

    /// The next view's revision (its event id), without decoding the view: for a tool that
    /// follows many streams and only counts what arrives (`gm bench watch`). `None` when the
    /// stream ends; an `Err` when the connection breaks.
    pub async fn next_revision(&mut self) -> Option<Result<u64, ClientError>> {
        let event = std::future::poll_fn(|cx| self.poll_view_event(cx)).await?;
        Some(event.and_then(|event| {
            let id = event.id.as_deref().and_then(|id| id.parse().ok());
            id.ok_or_else(|| ClientError::Decode {
                endpoint: self.endpoint.clone(),
                source: serde::de::Error::custom(format!("a view event without a numeric id: {:?}", event.id)),
            })
        }))
    }

    /// The next `view` event, undecoded; other events and comments are skipped.
    fn poll_view_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<SseEvent, ClientError>>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            if let Some(event) = self.parsed.pop_front() {
                if event.event == VIEW_EVENT {
                    return Poll::Ready(Some(Ok(event)));
                }
                continue;
            }
            match self.body.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.ended = true,
                Poll::Ready(Some(Err(source))) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(ClientError::Transport { endpoint: self.endpoint.clone(), source })));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    self.received_at = Instant::now();
                    self.bytes += chunk.len() as u64;
                    self.parsed.extend(self.parser.push(&chunk));
                }
            }
        }
    }
}

impl Stream for Watch {
    type Item = Result<GroupView, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let event = match this.poll_view_event(cx) {
            Poll::Ready(Some(Ok(event))) => event,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let view = serde_json::from_str(&event.data).map_err(|source| {
            this.ended = true;
            ClientError::Decode { endpoint: this.endpoint.clone(), source }
        });
        Poll::Ready(Some(view))
    }
}
