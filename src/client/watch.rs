//! A watch stream as a [`Stream`] of the group's views.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

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
/// noticed: to notice one, expect at least a keep-alive within some time ([`Watch::bytes_read`]
/// grows with each).
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

    /// When the bytes that completed the view handed out last arrived (before it was decoded):
    /// the moment the node's change was seen here.
    pub fn received_at(&self) -> Instant {
        self.received_at
    }

    /// Bytes of the stream read so far, keep-alives included.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }
}

impl Stream for Watch {
    type Item = Result<GroupView, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(event) = this.parsed.pop_front() {
                if event.event != VIEW_EVENT {
                    continue;
                }
                let view = serde_json::from_str(&event.data).map_err(|source| {
                    this.ended = true;
                    ClientError::Decode { endpoint: this.endpoint.clone(), source }
                });
                return Poll::Ready(Some(view));
            }
            match this.body.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.ended = true,
                Poll::Ready(Some(Err(source))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ClientError::Transport { endpoint: this.endpoint.clone(), source })));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    this.received_at = Instant::now();
                    this.bytes += chunk.len() as u64;
                    this.parsed.extend(this.parser.push(&chunk));
                }
            }
        }
    }
}
