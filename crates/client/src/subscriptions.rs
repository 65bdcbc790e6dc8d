//! `subscribe(type, callback)`: callbacks by action type, for delivered
//! actions and system events alike (the original's listener pool).

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use pubsub_protocol::{MessageId, Sender, Via};
use serde_json::Value;

/// Subscribing to this type receives every action and event.
pub const ANY_TYPE: &str = "*";

/// An action or system event as subscribers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub action: Value,
    /// The sender's message id (absent for system events).
    pub id: Option<MessageId>,
    /// How it arrived (absent for system events).
    pub via: Option<Via>,
    /// Stamped by the server; absent for server-sent actions and system events.
    pub from: Option<Sender>,
}

impl Incoming {
    pub fn action_type(&self) -> &str {
        self.action
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

type Callback = Arc<dyn Fn(&Incoming) + Send + Sync>;

#[derive(Default)]
pub(crate) struct Registry {
    next: u64,
    by_type: HashMap<String, Vec<(u64, Callback)>>,
}

pub(crate) type SharedRegistry = Arc<Mutex<Registry>>;

impl Registry {
    pub(crate) fn add(registry: &SharedRegistry, ty: &str, callback: Callback) -> Subscription {
        let mut r = registry.lock();
        r.next += 1;
        let id = r.next;
        r.by_type
            .entry(ty.to_owned())
            .or_default()
            .push((id, callback));
        Subscription {
            registry: Arc::downgrade(registry),
            ty: ty.to_owned(),
            id,
        }
    }

    fn remove(&mut self, ty: &str, id: u64) {
        if let Some(list) = self.by_type.get_mut(ty) {
            list.retain(|(i, _)| *i != id);
            if list.is_empty() {
                self.by_type.remove(ty);
            }
        }
    }

    fn matching(&self, ty: &str) -> Vec<Callback> {
        let exact = self.by_type.get(ty).into_iter().flatten();
        let any = self.by_type.get(ANY_TYPE).into_iter().flatten();
        exact.chain(any).map(|(_, cb)| cb.clone()).collect()
    }
}

/// Calls every callback subscribed to the incoming type, outside the lock so
/// callbacks may subscribe or unsubscribe. A panicking callback is logged and
/// does not stop the others or the client.
pub(crate) fn dispatch(registry: &SharedRegistry, incoming: &Incoming) {
    let callbacks = registry.lock().matching(incoming.action_type());
    for callback in callbacks {
        if catch_unwind(AssertUnwindSafe(|| callback(incoming))).is_err() {
            tracing::error!(
                action_type = incoming.action_type(),
                "a subscriber callback panicked"
            );
        }
    }
}

/// A subscription; [`Subscription::unsubscribe`] removes it. Dropping the
/// handle keeps the callback subscribed, as ignoring the original's
/// unsubscribe function did.
#[derive(Debug)]
pub struct Subscription {
    registry: Weak<Mutex<Registry>>,
    ty: String,
    id: u64,
}

impl Subscription {
    pub fn unsubscribe(self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.lock().remove(&self.ty, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn incoming(ty: &str) -> Incoming {
        Incoming {
            action: serde_json::json!({ "type": ty }),
            id: None,
            via: None,
            from: None,
        }
    }

    #[test]
    fn exact_and_wildcard_subscribers_are_called_until_unsubscribed() {
        let registry: SharedRegistry = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let exact = Registry::add(
            &registry,
            "A",
            Arc::new(move |_| {
                h.fetch_add(1, Ordering::SeqCst);
            }),
        );
        let h = hits.clone();
        let any = Registry::add(
            &registry,
            ANY_TYPE,
            Arc::new(move |_| {
                h.fetch_add(10, Ordering::SeqCst);
            }),
        );
        dispatch(&registry, &incoming("A"));
        dispatch(&registry, &incoming("B"));
        assert_eq!(hits.load(Ordering::SeqCst), 21);
        exact.unsubscribe();
        any.unsubscribe();
        dispatch(&registry, &incoming("A"));
        assert_eq!(hits.load(Ordering::SeqCst), 21);
    }

    #[test]
    fn a_panicking_callback_does_not_stop_the_others() {
        let registry: SharedRegistry = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        Registry::add(&registry, "A", Arc::new(|_| panic!("boom")));
        let h = hits.clone();
        Registry::add(
            &registry,
            "A",
            Arc::new(move |_| {
                h.fetch_add(1, Ordering::SeqCst);
            }),
        );
        dispatch(&registry, &incoming("A"));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
