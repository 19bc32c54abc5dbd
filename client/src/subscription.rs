//! [`Subscription`]: a stream of a queue's lifecycle events (issue 9), renewed across
//! reconnects.
//!
//! The socket side (routing pushed frames to a bounded channel, and dropping what a caller
//! does not read fast enough) is `connection.rs`'s. This file turns that channel into a
//! [`Stream`] that outlives sockets: when the channel closes (the socket died), the next poll
//! subscribes again on a new socket and yields [`Event::Resubscribed`], since events may have
//! happened in between. Dropping the stream unsubscribes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use qd_protocol::JobEvent;
use tokio::sync::mpsc;

use crate::connection::{Connection, Missed, StreamHandle};
use crate::error::Error;

/// One item of a [`Subscription`]. More kinds may come: match with a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Something happened to a job; the server sends it only once the change is durable.
    Job(JobEvent),
    /// `missed` events were dropped here because the stream was read too slowly (by the
    /// server, or by this client's own buffer). Read a queue's state (`stats`, `jobs`) if
    /// you need to catch up.
    Lagged { missed: u64 },
    /// The connection was lost and the subscription renewed on a new one: events that
    /// happened in between were not seen, and how many is unknown.
    Resubscribed,
}

type Renewal = Pin<Box<dyn Future<Output = Result<StreamHandle, Error>> + Send>>;

/// The lifecycle events of some queues, as a [`Stream`]; made by
/// [`Client::subscribe`](crate::Client::subscribe). Never ends by itself: a lost
/// connection is renewed on the next poll (an error is yielded when that fails; polling
/// again tries again). Dropping it ends the subscription.
pub struct Subscription {
    conn: Arc<Connection>,
    queues: Vec<String>,
    /// Request id of the live `Subscribe`, which tags its events.
    id: u64,
    /// `None` while renewing.
    rx: Option<mpsc::Receiver<Event>>,
    /// Events dropped and not yet reported (shared with the socket's reader).
    missed: Missed,
    renewing: Option<Renewal>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("queues", &self.queues).field("id", &self.id).finish()
    }
}

impl Subscription {
    pub(crate) async fn start(conn: Arc<Connection>, queues: Vec<String>) -> Result<Self, Error> {
        let StreamHandle { id, rx, missed } = conn.subscribe(queues.clone()).await?;
        Ok(Subscription { conn, queues, id, rx: Some(rx), missed, renewing: None })
    }

    /// The queues this subscription streams (empty: every queue).
    pub fn queues(&self) -> &[String] {
        &self.queues
    }
}

impl Stream for Subscription {
    type Item = Result<Event, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(rx) = &mut this.rx {
            match rx.poll_recv(cx) {
                Poll::Ready(Some(event)) => return Poll::Ready(Some(Ok(event))),
                // The socket died: renew below.
                Poll::Ready(None) => this.rx = None,
                Poll::Pending => {
                    // Caught up, but the reader dropped events since: say so now rather
                    // than ahead of the next event, which may be long in coming.
                    let mut lost = this.missed.lock().unwrap_or_else(|e| e.into_inner());
                    if *lost > 0 {
                        let missed = std::mem::take(&mut *lost);
                        return Poll::Ready(Some(Ok(Event::Lagged { missed })));
                    }
                    return Poll::Pending;
                }
            }
        }
        let renewal = this.renewing.get_or_insert_with(|| {
            let (conn, queues) = (this.conn.clone(), this.queues.clone());
            Box::pin(async move { conn.subscribe(queues).await })
        });
        let Poll::Ready(renewed) = renewal.as_mut().poll(cx) else { return Poll::Pending };
        this.renewing = None;
        match renewed {
            Ok(StreamHandle { id, rx, missed }) => {
                tracing::info!(queues = ?this.queues, "event subscription renewed on a new connection");
                this.id = id;
                this.rx = Some(rx);
                this.missed = missed;
                Poll::Ready(Some(Ok(Event::Resubscribed)))
            }
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.conn.forget_stream(self.id);
        }
    }
}
