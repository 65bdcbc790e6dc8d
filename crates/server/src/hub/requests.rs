//! Turning one client request into its effects and exactly one answer:
//! dispatch by kind to messaging.rs, presence.rs and topics.rs.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::future::BoxFuture;
use pubsub_protocol::server_frame::write_ack;
use pubsub_protocol::{MessageId, Received, Request, RequestKind};
use serde::Serialize;

use super::{Caller, Hub};
use crate::connection::{ClientHandle, Frame};

/// The answer to a request: ready now, or once a handler (or the first
/// attempt of a retried request) finishes.
pub(crate) enum Answer {
    Now(Frame),
    /// A retry whose first attempt is still running: its outcome, once it ends.
    Later(BoxFuture<'static, Frame>),
    /// A handler call: poll it once before parking it (see handler_call.rs).
    Call(super::HandlerCall),
}

impl Hub {
    /// Answers `request` at once when nothing has to be awaited first, and
    /// hands it back otherwise, for [`Hub::handle_request`]. Only
    /// `sendToServer` qualifies (the retry window, then one poll of the
    /// handler): it is the request sent most often, and answering it here
    /// spares the connection an `async` frame for it, a boxed future of
    /// about a kilobyte made and copied per request.
    pub(crate) fn answer_now<'a>(
        self: &Arc<Self>,
        client: &Arc<ClientHandle>,
        caller: &mut Caller,
        request: Request<'a>,
        received: &Received<'_>,
    ) -> Result<Answer, Request<'a>> {
        match request {
            Request::SendToServer { id, action } => {
                self.count_request(RequestKind::SendToServer);
                Ok(self.send_to_server(client, caller, id, &action, received))
            }
            other => Err(other),
        }
    }

    /// Processes one request from `client`, after forgetting the outcomes
    /// whose acks it reports `received`.
    pub(crate) async fn handle_request(
        self: &Arc<Self>,
        client: &Arc<ClientHandle>,
        caller: &mut Caller,
        request: Request<'_>,
        received: &Received<'_>,
    ) -> Answer {
        self.count_request(request.kind());
        // Requests that use the retry window forget them as they begin,
        // under the same lock.
        if !request.kind().uses_retry_window() && !received.is_empty() {
            self.release_received(caller, received);
        }
        match request {
            Request::Join { id, topic } => Answer::Now(self.join(client, &id, &topic).await),
            Request::Leave { id, topic } => Answer::Now(self.leave(client, &id, &topic).await),
            Request::Presence { id, users } => {
                Answer::Now(self.query_presence(client, &id, &users).await)
            }
            Request::Watch { id, users } => Answer::Now(self.watch(client, &id, &users).await),
            Request::Unwatch { id, users } => Answer::Now(self.unwatch(client, &id, &users).await),
            Request::SendToServer { id, action } => {
                self.send_to_server(client, caller, id, &action, received)
            }
            messaging => {
                self.handle_messaging(client, caller, messaging, received)
                    .await
            }
        }
    }

    fn count_request(&self, kind: RequestKind) {
        let counters = &self.stats.messages_in;
        let counter = match kind {
            RequestKind::Broadcast => &counters.broadcast,
            RequestKind::SendToUser => &counters.send_to_user,
            RequestKind::SendToServer => &counters.send_to_server,
            RequestKind::Publish => &counters.publish,
            RequestKind::Join => &counters.join,
            RequestKind::Leave => &counters.leave,
            RequestKind::Presence => &counters.presence,
            RequestKind::Watch => &counters.watch,
            RequestKind::Unwatch => &counters.unwatch,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Builds an `ack` frame and counts it.
    pub(crate) fn ack_frame<T: Serialize + ?Sized>(&self, id: &MessageId, result: &T) -> Frame {
        self.count_ack();
        Frame::text_with(|out| write_ack(out, id, result))
    }

    /// Counts an ack built elsewhere (a handler's answer, lent as it is built).
    pub(crate) fn count_ack(&self) {
        self.stats.messages_out.ack.fetch_add(1, Ordering::Relaxed);
    }
}
