//! Running the application's presence hooks on a task of their own, so a
//! slow hook never holds up a connection or a presence transition.

use std::sync::Arc;

use parking_lot::Mutex;
use pubsub_protocol::Presence;
use tokio::sync::{broadcast, mpsc};

use super::Hub;
use crate::connection::ClientInfo;

/// Events waiting for the hooks. Bounded: if the application's hooks fall
/// this far behind, further events are dropped with a warning.
const HOOK_QUEUE: usize = 10_000;

pub(crate) enum HookEvent {
    Connect(ClientInfo, Presence),
    Disconnect(ClientInfo, Presence),
}

pub(crate) struct HookQueue {
    tx: mpsc::Sender<HookEvent>,
    rx: Mutex<Option<mpsc::Receiver<HookEvent>>>,
}

impl HookQueue {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::channel(HOOK_QUEUE);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl Hub {
    pub(crate) fn hook(&self, event: HookEvent) {
        if let Some(queue) = &self.hook_queue
            && queue.tx.try_send(event).is_err()
        {
            tracing::warn!("presence hooks are falling behind; an event was dropped");
        }
    }
}

/// Delivers connect/disconnect events and the engine's status changes to the
/// hooks until shutdown.
pub(crate) async fn run_hooks(hub: Arc<Hub>) {
    let (Some(hooks), Some(queue)) = (hub.hooks.clone(), hub.hook_queue.as_ref()) else {
        return;
    };
    let Some(mut events) = queue.rx.lock().take() else {
        return;
    };
    let mut changes = hub.engine.status_changes();
    loop {
        tokio::select! {
            () = hub.shutdown_started() => return,
            event = events.recv() => match event {
                Some(HookEvent::Connect(client, presence)) => hooks.on_connect(&client, &presence).await,
                Some(HookEvent::Disconnect(client, presence)) => hooks.on_disconnect(&client, &presence).await,
                None => return,
            },
            change = changes.recv() => match change {
                Ok(change) => hooks.on_status_change(&change).await,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "presence hooks fell behind; status changes were dropped");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
