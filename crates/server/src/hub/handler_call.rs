//! One `sendToServer` handler call: polled once where the request was read,
//! since most handlers answer at once, and parked with its timeout only if
//! it did not. A plain struct rather than an `async` block, so the common
//! case allocates nothing beyond the handler's own future.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, CatchUnwind};
use pubsub_protocol::ErrorCode;
use pubsub_protocol::server_frame::{ErrorParts, write_ack_json, write_error};

use super::Hub;
use super::retry_window::Ticket;
use crate::connection::Frame;
use crate::handler::HandlerResult;

type Call = CatchUnwind<AssertUnwindSafe<BoxFuture<'static, HandlerResult>>>;

pub(crate) struct HandlerCall {
    /// Carries the request's id too. Dropped unsettled (the connection went
    /// away mid-call), it lets a retry run again.
    ticket: Ticket,
    call: Call,
}

impl HandlerCall {
    pub(super) fn new(ticket: Ticket, call: BoxFuture<'static, HandlerResult>) -> Self {
        Self {
            ticket,
            call: AssertUnwindSafe(call).catch_unwind(),
        }
    }

    /// Polls the handler; once it answered, settles the answer's frame in
    /// the retry window and lends it to `deliver` (to push to the outbox:
    /// an ack written at once is never a frame of its own).
    ///
    /// The hub is lent rather than held: most calls end here, and a
    /// reference of their own would be two locked instructions on a count
    /// every worker thread shares.
    pub(crate) fn poll_answer<R>(
        &mut self,
        hub: &Hub,
        cx: &mut Context<'_>,
        deliver: impl FnOnce(&[u8]) -> R,
    ) -> Poll<R> {
        match Pin::new(&mut self.call).poll(cx) {
            Poll::Ready(outcome) => Poll::Ready(self.finish(hub, Ok(outcome), deliver)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The call as a future bounded by the handler timeout, for a handler
    /// that did not answer at once.
    pub(crate) fn into_waiting(mut self, hub: Arc<Hub>) -> BoxFuture<'static, Frame> {
        Box::pin(async move {
            let timeout = hub.config.handler_timeout();
            let outcome = tokio::time::timeout(timeout, &mut self.call).await;
            self.finish(&hub, outcome.map_err(|_| ()), |frame| {
                Frame::raw(Bytes::copy_from_slice(frame))
            })
        })
    }

    /// The frame for how the call ended (`Err` = timed out), settled in the
    /// retry window and lent to `deliver`.
    fn finish<R>(
        &mut self,
        hub: &Hub,
        outcome: Result<Result<HandlerResult, Box<dyn Any + Send>>, ()>,
        deliver: impl FnOnce(&[u8]) -> R,
    ) -> R {
        let id = self.ticket.id().clone();
        let (frame, remember) = match outcome {
            Ok(Ok(Ok(reply))) => {
                // The usual answer: built in the thread's frame buffer,
                // copied into the retry window and written from there.
                hub.count_ack();
                let ticket = &mut self.ticket;
                return Frame::lend_text(
                    |out| write_ack_json(out, &id, reply.json()),
                    |frame| {
                        ticket.settle_in_place(frame, true);
                        deliver(frame)
                    },
                );
            }
            Ok(Ok(Err(e))) => {
                hub.stats.error(ErrorCode::HandlerError);
                let data = e
                    .data
                    .as_ref()
                    .and_then(|d| serde_json::value::to_raw_value(d).ok());
                let frame = Frame::text_with(|out| {
                    write_error(
                        out,
                        ErrorParts {
                            id: Some(&id),
                            code: ErrorCode::HandlerError,
                            message: &e.message,
                            retryable: e.retryable,
                            data: data.as_deref(),
                        },
                    );
                });
                (frame, !e.retryable)
            }
            Ok(Err(_panic)) => {
                tracing::error!(message_id = %id, "handler panicked");
                let frame = hub.error_frame(Some(&id), ErrorCode::Internal, "the handler failed");
                (frame, false)
            }
            Err(()) => {
                let message = format!(
                    "the handler did not answer within {} ms",
                    hub.config.handler_timeout_ms
                );
                let frame = hub.error_frame(Some(&id), ErrorCode::HandlerTimeout, &message);
                (frame, false)
            }
        };
        self.ticket.settle_in_place(frame.bytes(), remember);
        deliver(frame.bytes())
    }
}
