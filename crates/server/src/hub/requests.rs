//! Turning one client request into deliveries and exactly one answer.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use pubsub_protocol::server_frame::{ErrorParts, encode_ack, encode_error, encode_message};
use pubsub_protocol::{ActionRef, ErrorCode, MessageId, Request, Sender, UserId, Via};
use serde::Serialize;
use serde::ser::SerializeMap;

use super::Hub;
use super::retry_window::{Begin, Ticket};
use crate::connection::{ClientInfo, Frame};
use crate::context::HandlerContext;
use crate::engine::{EngineError, UserDelivery};
use crate::handle::ServerHandle;

/// The answer to a request: ready now, or once a handler (or the first
/// attempt of a retried request) finishes.
pub(crate) enum Answer {
    Now(Frame),
    Later(BoxFuture<'static, Frame>),
}

/// `result` of a `broadcast` ack.
#[derive(Serialize)]
struct BroadcastResult {
    delivered: usize,
}

/// `result` of a `sendToUser` ack: recipients in request order.
struct RecipientsResult<'a>(&'a [UserId], &'a [UserDelivery]);

impl Serialize for RecipientsResult<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wrapper<'a> {
            recipients: Inner<'a>,
        }
        struct Inner<'a>(&'a [UserId], &'a [UserDelivery]);
        impl Serialize for Inner<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for (user, delivery) in self.0.iter().zip(self.1) {
                    map.serialize_entry(user, delivery)?;
                }
                map.end()
            }
        }
        Wrapper {
            recipients: Inner(self.0, self.1),
        }
        .serialize(serializer)
    }
}

impl Hub {
    /// Processes one request from `client`.
    pub(crate) async fn handle_request(
        self: &Arc<Self>,
        client: &Arc<ClientInfo>,
        sender: &Sender,
        request: Request<'_>,
    ) -> Answer {
        let counters = &self.stats.messages_in;
        let counter = match &request {
            Request::Broadcast { .. } => &counters.broadcast,
            Request::SendToUser { .. } => &counters.send_to_user,
            Request::SendToServer { .. } => &counters.send_to_server,
            other => {
                return Answer::Now(self.error_frame(
                    Some(other.id()),
                    ErrorCode::UnknownKind,
                    "not supported by this server yet",
                ));
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let id = request.id();

        let ticket = match self.retry_window.begin(&sender.user, id) {
            Begin::New(ticket) => ticket,
            Begin::Replay(frame) => {
                self.stats.retries_replayed.fetch_add(1, Ordering::Relaxed);
                return Answer::Now(frame);
            }
            Begin::Wait(first_attempt) => {
                self.stats.retries_replayed.fetch_add(1, Ordering::Relaxed);
                let hub = self.clone();
                let id = id.clone();
                return Answer::Later(Box::pin(async move {
                    match first_attempt.await {
                        Ok(frame) => frame,
                        Err(_) => hub.error_frame(
                            Some(&id),
                            ErrorCode::Internal,
                            "the first attempt with this id was abandoned; retry",
                        ),
                    }
                }));
            }
        };

        match request {
            Request::Broadcast { id, action } => {
                let outcome = self.route_broadcast(sender, &id, &action).await;
                Answer::Now(self.settle(ticket, &id, outcome))
            }
            Request::SendToUser { id, to, action } => {
                let outcome = self.route_to_users(sender, &id, &to, &action).await;
                Answer::Now(self.settle(ticket, &id, outcome))
            }
            Request::SendToServer { id, action } => self.call_handler(ticket, client, id, &action),
            _ => Answer::Now(self.error_frame(None, ErrorCode::UnknownKind, "not supported")),
        }
    }

    async fn route_broadcast(
        &self,
        sender: &Sender,
        id: &MessageId,
        action: &ActionRef<'_>,
    ) -> Result<Frame, EngineError> {
        let message = Frame::from(encode_message(
            id,
            Via::Broadcast,
            Some(sender),
            action.raw(),
        ));
        let delivery = self
            .engine
            .send_to_user(&sender.user, Some(&sender.client), &message)
            .await?;
        self.count_deliveries(delivery.clients);
        Ok(Frame::from(encode_ack(
            id,
            &BroadcastResult {
                delivered: delivery.clients,
            },
        )))
    }

    async fn route_to_users(
        &self,
        sender: &Sender,
        id: &MessageId,
        to: &[UserId],
        action: &ActionRef<'_>,
    ) -> Result<Frame, EngineError> {
        let message = Frame::from(encode_message(id, Via::User, Some(sender), action.raw()));
        let deliveries = self.engine.send_to_users(to, &message).await?;
        self.count_deliveries(deliveries.iter().map(|d| d.clients).sum());
        Ok(Frame::from(encode_ack(
            id,
            &RecipientsResult(to, &deliveries),
        )))
    }

    /// Turns a routing outcome into the answer and records it for retries.
    fn settle(&self, ticket: Ticket, id: &MessageId, outcome: Result<Frame, EngineError>) -> Frame {
        match outcome {
            Ok(ack) => {
                self.stats.messages_out.ack.fetch_add(1, Ordering::Relaxed);
                ticket.settle(&ack, true);
                ack
            }
            Err(e) => {
                let frame = self.error_frame(Some(id), ErrorCode::Internal, &e.to_string());
                ticket.settle(&frame, false);
                frame
            }
        }
    }

    fn call_handler(
        self: &Arc<Self>,
        ticket: Ticket,
        client: &Arc<ClientInfo>,
        id: MessageId,
        action: &ActionRef<'_>,
    ) -> Answer {
        let Some(handler) = self.handler.clone() else {
            let frame = self.error_frame(
                Some(&id),
                ErrorCode::NoHandler,
                "this server has no handler for sendToServer",
            );
            ticket.settle(&frame, true);
            return Answer::Now(frame);
        };
        let hub = self.clone();
        let ctx = HandlerContext::new(ServerHandle::new(self.clone()), client.clone(), id.clone());
        let action = action.to_owned();
        Answer::Later(Box::pin(async move {
            let call = AssertUnwindSafe(handler.handle(ctx, action)).catch_unwind();
            let (frame, remember) =
                match tokio::time::timeout(hub.config.handler_timeout(), call).await {
                    Ok(Ok(Ok(reply))) => {
                        hub.stats.messages_out.ack.fetch_add(1, Ordering::Relaxed);
                        (Frame::from(encode_ack(&id, reply.as_raw())), true)
                    }
                    Ok(Ok(Err(e))) => {
                        hub.stats.error(ErrorCode::HandlerError);
                        let data = e
                            .data
                            .as_ref()
                            .and_then(|d| serde_json::value::to_raw_value(d).ok());
                        let frame = Frame::from(encode_error(ErrorParts {
                            id: Some(&id),
                            code: ErrorCode::HandlerError,
                            message: &e.message,
                            retryable: e.retryable,
                            data: data.as_deref(),
                        }));
                        (frame, !e.retryable)
                    }
                    Ok(Err(_panic)) => {
                        tracing::error!(message_id = %id, "handler panicked");
                        let frame =
                            hub.error_frame(Some(&id), ErrorCode::Internal, "the handler failed");
                        (frame, false)
                    }
                    Err(_elapsed) => {
                        let frame = hub.error_frame(
                            Some(&id),
                            ErrorCode::HandlerTimeout,
                            &format!(
                                "the handler did not answer within {} ms",
                                hub.config.handler_timeout_ms
                            ),
                        );
                        (frame, false)
                    }
                };
            ticket.settle(&frame, remember);
            frame
        }))
    }
}
