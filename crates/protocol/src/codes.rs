//! Numbered error codes (carried in `error` frames) and WebSocket close codes.
//!
//! docs/protocol.md repeats these tables word for word; the vectors test fails
//! when the two drift apart.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! error_codes {
    ($( $variant:ident = $num:literal, $name:literal, retryable = $retry:literal, $doc:literal; )*) => {
        /// A numbered error. `code()` is what travels on the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( #[doc = $doc] $variant, )*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            pub const fn code(self) -> u16 {
                match self { $(ErrorCode::$variant => $num,)* }
            }

            /// The snake_case name carried next to the number.
            pub const fn name(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name,)* }
            }

            /// Whether sending the same request again (same message id) may succeed.
            /// `handler_error` frames say for themselves; this is their default.
            pub const fn retryable(self) -> bool {
                match self { $(ErrorCode::$variant => $retry,)* }
            }

            pub const fn description(self) -> &'static str {
                match self { $(ErrorCode::$variant => $doc,)* }
            }

            pub fn from_code(code: u16) -> Option<Self> {
                match code { $($num => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

error_codes! {
    MalformedFrame = 1000, "malformed_frame", retryable = false,
        "The frame is not a JSON object in a text message.";
    UnknownKind = 1001, "unknown_kind", retryable = false,
        "The frame's `kind` is missing or not one this server knows.";
    InvalidField = 1002, "invalid_field", retryable = false,
        "A field is missing, has the wrong type or breaks a limit; the message names it.";
    InvalidAction = 1003, "invalid_action", retryable = false,
        "`action` is not a JSON object with a non-empty string `type`.";
    ReservedType = 1004, "reserved_type", retryable = false,
        "The action's `type` starts with the reserved prefix `@pubsub/`.";
    TooManyRecipients = 1005, "too_many_recipients", retryable = false,
        "`to` lists more users than the server's `maxRecipients`.";
    RateLimited = 1006, "rate_limited", retryable = true,
        "The connection sent more requests per second than allowed; retry later.";
    Forbidden = 1100, "forbidden", retryable = false,
        "A server policy does not allow this request.";
    TooManyWatches = 1200, "too_many_watches", retryable = false,
        "`watch` would make this connection watch more users than `maxWatchedUsers`.";
    InvalidTopic = 1300, "invalid_topic", retryable = false,
        "The topic name is empty, too long or uses characters outside the allowed set.";
    TooManyTopics = 1301, "too_many_topics", retryable = false,
        "`join` would put this connection in more topics than `maxTopics`.";
    NoHandler = 2000, "no_handler", retryable = false,
        "`sendToServer` reached a server with no handler configured.";
    HandlerError = 2001, "handler_error", retryable = false,
        "The server's handler returned an error; `message` and `data` are the handler's.";
    HandlerTimeout = 2002, "handler_timeout", retryable = true,
        "The handler did not answer within the server's handler timeout.";
    Internal = 2003, "internal_error", retryable = true,
        "The server failed to process the request (a bug, or a handler panic).";
    ShuttingDown = 2004, "shutting_down", retryable = true,
        "The server is shutting down and did not process the request.";
    Disconnected = 3000, "disconnected", retryable = true,
        "Client-side: the connection dropped before the request settled.";
    RequestTimeout = 3001, "request_timeout", retryable = true,
        "Client-side: no answer arrived within the client's request timeout.";
    NotConnected = 3002, "not_connected", retryable = true,
        "Client-side: the request was made while the client had no connection.";
        ClientClosed = 3003, "client_closed", retryable = false,
        "Client-side: the client was closed by the application.";
    MessageTooBig = 3004, "message_too_big", retryable = false,
        "Client-side: the frame would exceed the server's `maxMessageBytes`; it was not sent.";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.name())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.code())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(deserializer)?;
        ErrorCode::from_code(code)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {code}")))
    }
}

/// What a client should do after the server closed its connection with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAdvice {
    /// Reconnect, with backoff.
    Reconnect,
    /// Do not reconnect automatically: the same attempt would fail the same way.
    Stop,
}

macro_rules! close_codes {
    ($( $const:ident = $num:literal, $name:literal, $advice:ident, $doc:literal; )*) => {
        /// WebSocket close codes the server sends, and what they mean.
        pub mod close {
            $( #[doc = $doc] pub const $const: u16 = $num; )*

            /// `(code, name, advice, meaning)` for every close code the server sends.
            pub const TABLE: &[(u16, &str, super::CloseAdvice, &str)] = &[
                $( ($num, $name, super::CloseAdvice::$advice, $doc), )*
            ];
        }
    };
}

close_codes! {
    NORMAL = 1000, "normal", Stop,
        "The server ended the session on purpose (for example an application kick).";
    GOING_AWAY = 1001, "going_away", Reconnect,
        "The server is going away.";
    PROTOCOL_ERROR = 1002, "protocol_error", Reconnect,
        "The peer broke the WebSocket protocol (RFC 6455).";
    INVALID_PAYLOAD = 1007, "invalid_payload", Reconnect,
        "A text message was not valid UTF-8.";
    MESSAGE_TOO_BIG = 1009, "message_too_big", Reconnect,
        "A message exceeded `maxMessageBytes`; the message was dropped unprocessed.";
    INTERNAL_ERROR = 1011, "internal_error", Reconnect,
        "The server hit an unexpected condition.";
    SERVICE_RESTART = 1012, "service_restart", Reconnect,
        "The server is shutting down or restarting (graceful shutdown).";
    TRY_AGAIN_LATER = 1013, "try_again_later", Reconnect,
        "The server is at its connection limit, or authentication timed out.";
    BAD_REQUEST = 4400, "bad_request", Stop,
        "The handshake lacked what the auth mode needs (for example `userId` in dev mode) or was invalid.";
    UNAUTHORIZED = 4401, "unauthorized", Stop,
        "The credentials were refused.";
    FORBIDDEN = 4403, "forbidden", Stop,
        "`verify_client` rejected the connection; the reason is the close reason.";
    TOO_MANY_ERRORS = 4429, "too_many_errors", Stop,
        "The client sent too many invalid frames in a short time.";
    HEARTBEAT_TIMEOUT = 4504, "heartbeat_timeout", Reconnect,
        "Nothing arrived from the client within the heartbeat bound.";
    SLOW_CONSUMER = 4507, "slow_consumer", Reconnect,
        "The client did not read fast enough and its outbound queue overflowed.";
}

/// What a client should do after the server closed with `code`. Codes not in
/// the table follow the range rule: 4400–4499 stop, 1000 stops, all else reconnects.
pub fn close_advice(code: u16) -> CloseAdvice {
    if let Some((_, _, advice, _)) = close::TABLE.iter().find(|(c, ..)| *c == code) {
        return *advice;
    }
    if (4400..4500).contains(&code) {
        CloseAdvice::Stop
    } else {
        CloseAdvice::Reconnect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.code()), "duplicate {}", code.code());
            assert_eq!(ErrorCode::from_code(code.code()), Some(*code));
        }
    }

    #[test]
    fn close_advice_follows_table_then_ranges() {
        assert_eq!(close_advice(close::SERVICE_RESTART), CloseAdvice::Reconnect);
        assert_eq!(close_advice(close::UNAUTHORIZED), CloseAdvice::Stop);
        assert_eq!(
            close_advice(close::HEARTBEAT_TIMEOUT),
            CloseAdvice::Reconnect
        );
        assert_eq!(close_advice(4499), CloseAdvice::Stop);
        assert_eq!(close_advice(4999), CloseAdvice::Reconnect);
        assert_eq!(close_advice(1006), CloseAdvice::Reconnect);
    }
}
