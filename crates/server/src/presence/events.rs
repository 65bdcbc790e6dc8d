//! Encoding a presence transition into the system events it causes, each
//! encoded once and shared by all its recipients.

use pubsub_protocol::events::{
    ACTIVE_CLIENT_CHANGE, CLIENT_CONNECTED, CLIENT_DISCONNECTED, PRESENCE_CHANGE, STATUS_CHANGE,
};
use pubsub_protocol::server_frame::encode_event;
use pubsub_protocol::{ClientId, Presence, UserId};
use serde::Serialize;

use super::state::Transition;
use crate::connection::Frame;

#[derive(Serialize)]
struct PresenceEvent<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(flatten)]
    presence: &'a Presence,
}

#[derive(Serialize)]
struct ClientEvent<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    user: &'a UserId,
    client: &'a ClientId,
    clients: usize,
    version: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ActiveClientEvent<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    user: &'a UserId,
    active_client: Option<&'a ClientId>,
    previous_active_client: Option<&'a ClientId>,
    version: u64,
}

/// The frames one transition sends.
pub(crate) struct TransitionEvents {
    /// For the user's own clients, in order.
    pub(crate) own: Vec<Frame>,
    /// A client of the user that must not get `own` (the one that just
    /// connected learns everything from its `welcome`).
    pub(crate) skip: Option<ClientId>,
    /// For connections watching the user (status changes only).
    pub(crate) watchers: Option<Frame>,
}

impl TransitionEvents {
    pub(crate) fn encode(t: &Transition, after: &Presence) -> Self {
        let mut own = Vec::new();
        if let Some(client) = &t.connected {
            own.push(client_event(CLIENT_CONNECTED, after, client));
        }
        if let Some(client) = &t.disconnected {
            own.push(client_event(CLIENT_DISCONNECTED, after, client));
        }
        if let Some(previous) = &t.active_from {
            own.push(Frame::from(encode_event(&ActiveClientEvent {
                ty: ACTIVE_CLIENT_CHANGE,
                user: &after.user,
                active_client: after.active_client.as_ref(),
                previous_active_client: previous.as_ref(),
                version: after.version,
            })));
        }
        let mut watchers = None;
        if t.status_from.is_some() {
            own.push(presence_event(STATUS_CHANGE, after));
            watchers = Some(presence_event(PRESENCE_CHANGE, after));
        }
        Self {
            own,
            skip: t.connected.clone(),
            watchers,
        }
    }
}

fn client_event(ty: &'static str, after: &Presence, client: &ClientId) -> Frame {
    Frame::from(encode_event(&ClientEvent {
        ty,
        user: &after.user,
        client,
        clients: after.clients,
        version: after.version,
    }))
}

fn presence_event(ty: &'static str, presence: &Presence) -> Frame {
    Frame::from(encode_event(&PresenceEvent { ty, presence }))
}
