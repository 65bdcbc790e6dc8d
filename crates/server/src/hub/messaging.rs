//! Messaging requests — `broadcast`, `sendToUser`, `sendToServer`, `publish` —
//! which go through the retry window: delivered or handled once per (user,
//! message id), every retry answered with the first outcome.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pubsub_protocol::server_frame::write_topic_message;
use pubsub_protocol::{
    ActionRef, ErrorCode, MessageId, Received, Request, Sender, Topic, UserId, Via,
};
use serde::Serialize;
use serde::ser::SerializeMap;

use super::handler_call::HandlerCall;
use super::requests::Answer;
use super::retry_window::{Begin, Ticket};
use super::{Caller, Hub};
use crate::connection::{ClientHandle, Frame};
use crate::context::HandlerContext;
use crate::engine::{EngineError, UserDelivery};
use crate::handle::ServerHandle;

/// `result` of `broadcast` and `publish` acks.
#[derive(Serialize)]
struct Delivered {
    delivered: usize,
}

/// `result` of a `sendToUser` ack: recipients in request order.
#[derive(Serialize)]
struct RecipientsResult<'a> {
    recipients: Recipients<'a>,
}

struct Recipients<'a>(&'a [UserId], &'a [UserDelivery]);

impl Serialize for Recipients<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (user, delivery) in self.0.iter().zip(self.1) {
            map.serialize_entry(user, delivery)?;
        }
        map.end()
    }
}

/// How a request that may be retried ended: the frame, and whether a retry
/// gets it again (true) or runs again (false: a retryable failure).
type Outcome = (Frame, bool);

impl Hub {
    /// Looks `id` up in the retry window: the ticket of a first attempt, or
    /// the answer a retry gets (the remembered outcome, or the first
    /// attempt's once it ends).
    /// Forgets the outcomes of the requests whose acks the caller reports
    /// received: it will not resend them. (Requests that use the retry
    /// window do this as they begin.)
    pub(crate) fn release_received(&self, caller: &mut Caller, received: &Received<'_>) {
        self.retry_window
            .release(&mut caller.retry_slot, &caller.sender.user, received.iter());
    }

    fn begin_retryable(
        self: &Arc<Self>,
        caller: &mut Caller,
        id: &MessageId,
        received: &Received<'_>,
    ) -> Result<Ticket, Answer> {
        match self.retry_window.begin(
            &mut caller.retry_slot,
            &caller.sender.user,
            id,
            received.iter(),
            caller.received_at,
        ) {
            Begin::New(ticket) => Ok(ticket),
            Begin::Replay(frame) => {
                self.stats.retries_replayed.fetch_add(1, Ordering::Relaxed);
                Err(Answer::Now(frame))
            }
            Begin::Wait(first_attempt) => {
                self.stats.retries_replayed.fetch_add(1, Ordering::Relaxed);
                let hub = self.clone();
                let id = id.clone();
                Err(Answer::Later(Box::pin(async move {
                    match first_attempt.await {
                        Ok(frame) => frame,
                        Err(_) => hub.error_frame(
                            Some(&id),
                            ErrorCode::Internal,
                            "the first attempt with this id was abandoned; retry",
                        ),
                    }
                })))
            }
        }
    }

    /// `sendToServer`: waits on nothing before the handler's first poll, so
    /// it is answered without an `async` frame of its own (see
    /// [`Hub::answer_now`]).
    pub(super) fn send_to_server(
        self: &Arc<Self>,
        client: &Arc<ClientHandle>,
        caller: &mut Caller,
        id: MessageId,
        action: &ActionRef<'_>,
        received: &Received<'_>,
    ) -> Answer {
        match self.begin_retryable(caller, &id, received) {
            Ok(ticket) => self.call_handler(ticket, client, id, action),
            Err(answer) => answer,
        }
    }

    /// `broadcast`, `sendToUser` and `publish`, which wait on the engine.
    pub(super) async fn handle_messaging(
        self: &Arc<Self>,
        client: &Arc<ClientHandle>,
        caller: &mut Caller,
        request: Request<'_>,
        received: &Received<'_>,
    ) -> Answer {
        let ticket = match self.begin_retryable(caller, request.id(), received) {
            Ok(ticket) => ticket,
            Err(answer) => return answer,
        };
        let sender = &caller.sender;
        let outcome = match request {
            Request::Broadcast { id, action } => self.route_broadcast(sender, &id, &action).await,
            Request::SendToUser { id, to, action } => {
                self.route_to_users(sender, &id, &to, &action).await
            }
            Request::Publish {
                id,
                topic,
                action,
                echo,
            } => {
                self.route_publish(client, sender, &id, &topic, &action, echo)
                    .await
            }
            other => (
                self.error_frame(
                    Some(other.id()),
                    ErrorCode::Internal,
                    "not a messaging request",
                ),
                false,
            ),
        };
        ticket.settle(&outcome.0, outcome.1);
        Answer::Now(outcome.0)
    }

    /// An engine failure is retryable and therefore not remembered.
    fn engine_failure(&self, id: &MessageId, e: &EngineError) -> Outcome {
        (
            self.error_frame(Some(id), ErrorCode::Internal, &e.to_string()),
            false,
        )
    }

    async fn route_broadcast(
        &self,
        sender: &Sender,
        id: &MessageId,
        action: &ActionRef<'_>,
    ) -> Outcome {
        let message = Frame::text_with(|out| {
            write_topic_message(out, id, Via::Broadcast, Some(sender), None, action);
        });
        match self
            .engine
            .send_to_user(&sender.user, Some(&sender.client), &message)
            .await
        {
            Ok(delivery) => {
                self.count_deliveries(delivery.clients);
                let result = Delivered {
                    delivered: delivery.clients,
                };
                (self.ack_frame(id, &result), true)
            }
            Err(e) => self.engine_failure(id, &e),
        }
    }

    async fn route_to_users(
        &self,
        sender: &Sender,
        id: &MessageId,
        to: &[UserId],
        action: &ActionRef<'_>,
    ) -> Outcome {
        let message = Frame::text_with(|out| {
            write_topic_message(out, id, Via::User, Some(sender), None, action);
        });
        match self.engine.send_to_users(to, &message).await {
            Ok(deliveries) => {
                self.count_deliveries(deliveries.iter().map(|d| d.clients).sum());
                let result = RecipientsResult {
                    recipients: Recipients(to, &deliveries),
                };
                (self.ack_frame(id, &result), true)
            }
            Err(e) => self.engine_failure(id, &e),
        }
    }

    async fn route_publish(
        &self,
        client: &ClientHandle,
        sender: &Sender,
        id: &MessageId,
        topic: &Topic,
        action: &ActionRef<'_>,
        echo: bool,
    ) -> Outcome {
        if !self.topic_policy.may_publish(client.info(), topic).await {
            let message = format!("not allowed to publish to {topic}");
            return (
                self.error_frame(Some(id), ErrorCode::Forbidden, &message),
                true,
            );
        }
        let message = Frame::text_with(|out| {
            write_topic_message(out, id, Via::Topic, Some(sender), Some(topic), action);
        });
        let except = (!echo).then_some(&sender.client);
        match self.engine.publish(topic, except, &message).await {
            Ok(delivered) => {
                self.count_topic_publish(delivered);
                (self.ack_frame(id, &Delivered { delivered }), true)
            }
            Err(e) => self.engine_failure(id, &e),
        }
    }

    fn call_handler(
        self: &Arc<Self>,
        ticket: Ticket,
        client: &Arc<ClientHandle>,
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
        let ctx = HandlerContext::new(ServerHandle::new(self.clone()), client.clone(), id);
        Answer::Call(HandlerCall::new(
            ticket,
            handler.call(ctx, action.to_owned()),
        ))
    }
}
