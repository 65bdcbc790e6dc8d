//! The codec against docs/protocol-vectors.json, and the code tables against
//! docs/protocol.md.
#![allow(clippy::unwrap_used)]

use pubsub_protocol::client_frame::OutgoingFrame;
use pubsub_protocol::server_frame::encode_server_frame;
use pubsub_protocol::{
    ClientFrame, DecodeLimits, ErrorCode, Request, ServerFrame, close, decode_client_frame,
    decode_server_frame,
};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol-vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn text_of(v: &Value) -> String {
    match v.get("text") {
        Some(Value::String(text)) => text.clone(),
        _ => serde_json::to_string(&v["frame"]).unwrap(),
    }
}

/// What a decoded client frame says, in the vectors' `expect` vocabulary.
fn describe(frame: &ClientFrame<'_>) -> Value {
    let mut out = serde_json::json!({ "kind": frame.kind() });
    if let Some(id) = frame.id() {
        out["id"] = id.as_str().into();
    }
    match frame {
        ClientFrame::Request(request, received) => {
            if !received.is_empty() {
                out["received"] = received.iter().collect::<Vec<_>>().into();
            }
            describe_request(request, &mut out);
        }
        ClientFrame::Activity { active, .. } => out["active"] = (*active).into(),
        ClientFrame::Ping { .. } | ClientFrame::Pong => {}
    }
    out
}

fn describe_request(request: &Request<'_>, out: &mut Value) {
    match request {
        Request::Broadcast { action, .. } | Request::SendToServer { action, .. } => {
            out["actionType"] = action.action_type().into();
        }
        Request::SendToUser { to, action, .. } => {
            out["to"] = serde_json::to_value(to).unwrap();
            out["actionType"] = action.action_type().into();
        }
        Request::Publish {
            topic,
            action,
            echo,
            ..
        } => {
            out["topic"] = topic.as_str().into();
            out["echo"] = (*echo).into();
            out["actionType"] = action.action_type().into();
        }
        Request::Join { topic, .. } | Request::Leave { topic, .. } => {
            out["topic"] = topic.as_str().into();
        }
        Request::Presence { users, .. }
        | Request::Watch { users, .. }
        | Request::Unwatch { users, .. } => {
            out["users"] = serde_json::to_value(users).unwrap();
        }
    }
}

/// The action's JSON as the client-side encoder takes it.
fn raw<'a>(action: &pubsub_protocol::ActionRef<'a>) -> &'a serde_json::value::RawValue {
    serde_json::from_str(action.json()).unwrap()
}

/// Re-encodes a decoded frame with the client-side encoder.
fn encode(frame: &ClientFrame<'_>) -> String {
    let mut out = OutgoingFrame {
        kind: frame.kind(),
        id: frame.id(),
        ..OutgoingFrame::default()
    };
    match frame {
        ClientFrame::Request(request, _) => match request {
            Request::Broadcast { action, .. } | Request::SendToServer { action, .. } => {
                out.action = Some(raw(action));
            }
            Request::SendToUser { to, action, .. } => {
                out.to = Some(to);
                out.action = Some(raw(action));
            }
            Request::Publish {
                topic,
                action,
                echo,
                ..
            } => {
                out.topic = Some(topic);
                out.echo = Some(*echo);
                out.action = Some(raw(action));
            }
            Request::Join { topic, .. } | Request::Leave { topic, .. } => out.topic = Some(topic),
            Request::Presence { users, .. }
            | Request::Watch { users, .. }
            | Request::Unwatch { users, .. } => out.users = Some(users),
        },
        ClientFrame::Activity { active, .. } => out.active = Some(*active),
        ClientFrame::Ping { .. } | ClientFrame::Pong => {}
    }
    out.encode()
}

#[test]
fn client_frames_decode_as_the_vectors_say() {
    let vectors = vectors();
    let list = vectors["clientToServer"].as_array().unwrap();
    assert!(list.len() >= 30);
    let limits = DecodeLimits::default();
    for v in list {
        let name = v["name"].as_str().unwrap();
        let text = text_of(v);
        let expect = &v["expect"];
        match decode_client_frame(&text, &limits) {
            Ok(frame) => {
                assert!(
                    expect.get("error").is_none(),
                    "{name}: decoded but expected {expect}"
                );
                assert_eq!(&describe(&frame), expect, "{name}");
                if v["canonical"] == Value::Bool(true) {
                    let encoded: Value = serde_json::from_str(&encode(&frame)).unwrap();
                    assert_eq!(encoded, v["frame"], "{name}: encoder output differs");
                }
            }
            Err(e) => {
                let code = expect["error"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{name}: {e}"));
                assert_eq!(u64::from(e.code.code()), code, "{name}: {e}");
                assert_eq!(
                    e.id.as_ref()
                        .map(|id| Value::from(id.as_str()))
                        .unwrap_or(Value::Null),
                    expect["id"],
                    "{name}: id in the error"
                );
            }
        }
    }
}

#[test]
fn server_frames_decode_and_reencode_identically() {
    let vectors = vectors();
    let list = vectors["serverToClient"].as_array().unwrap();
    assert!(list.len() >= 20);
    for v in list {
        let name = v["name"].as_str().unwrap();
        let text = text_of(v);
        let frame = decode_server_frame(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        if v["unknown"] == Value::Bool(true) {
            assert_eq!(frame, ServerFrame::Unknown, "{name}");
            continue;
        }
        assert_ne!(frame, ServerFrame::Unknown, "{name}");
        let encoded =
            encode_server_frame(&frame).unwrap_or_else(|| panic!("{name}: not encodable"));
        let encoded: Value = serde_json::from_str(&encoded).unwrap();
        assert_eq!(encoded, v["frame"], "{name}");
    }
}

#[test]
fn protocol_doc_lists_every_error_and_close_code() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .unwrap();
    for code in ErrorCode::ALL {
        let row = format!(
            "| {} | {} | {} | {} |",
            code.code(),
            code.name(),
            if code.retryable() { "yes" } else { "no" },
            code.description()
        );
        assert!(doc.contains(&row), "docs/protocol.md lacks the row:\n{row}");
    }
    for (code, name, advice, meaning) in close::TABLE {
        let advice = match advice {
            pubsub_protocol::CloseAdvice::Reconnect => "reconnect",
            pubsub_protocol::CloseAdvice::Stop => "stop",
        };
        let row = format!("| {code} | {name} | {advice} | {meaning} |");
        assert!(doc.contains(&row), "docs/protocol.md lacks the row:\n{row}");
    }
}
