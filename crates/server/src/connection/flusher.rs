//! Write-behind for every delivery.
//!
//! A delivery (a publish to a topic's members, a `sendToUser` to a user's
//! tabs, a presence event) only queues the frame in each recipient's outbox
//! and lists the recipient here; one flusher task per thread then writes each
//! listed outbox out — everything it holds, in one vectored write — a batch
//! at a time, yielding between batches. The senders' tasks and the flusher
//! take turns: at a low rate a delivery leaves in the same turn of the
//! scheduler, and under load the flusher falls behind just enough for
//! several frames to share each system call (here and at the receiver), so
//! the cost per delivery falls as the rate rises instead of the backlog
//! growing in the kernel. No recipient's task is woken unless its socket is
//! full.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::ClientHandle;

/// Outboxes written per turn before yielding to other tasks.
const BATCH: usize = 64;

struct Flusher {
    dirty: Mutex<VecDeque<Arc<ClientHandle>>>,
    wake: Notify,
    /// False once the task is gone (its runtime shut down); a new one is then
    /// started on the next use of this thread.
    alive: AtomicBool,
}

thread_local! {
    static FLUSHER: RefCell<Option<Arc<Flusher>>> = const { RefCell::new(None) };
}

/// Lists `client`, whose outbox just went from empty to holding frames, for
/// the current thread's flusher.
pub(crate) fn schedule(client: &Arc<ClientHandle>) {
    let listed = with_current(|flusher| {
        let first = {
            let mut dirty = flusher.dirty.lock();
            dirty.push_back(client.clone());
            dirty.len() == 1
        };
        if first {
            flusher.wake.notify_one();
        }
    });
    if listed.is_none() {
        // Outside a runtime there is no task to hand the write to.
        client.outbox().write_queued();
    }
}

/// Runs `f` on this thread's flusher, starting one if there is none (or
/// its task is gone); `None` outside a runtime. Lent rather than cloned: a
/// fan-out schedules thousands of members per publication.
fn with_current<R>(f: impl FnOnce(&Flusher) -> R) -> Option<R> {
    FLUSHER.with(|slot| {
        let mut slot = slot.borrow_mut();
        if !slot
            .as_ref()
            .is_some_and(|flusher| flusher.alive.load(Ordering::Acquire))
        {
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let flusher = Arc::new(Flusher {
                dirty: Mutex::new(VecDeque::new()),
                wake: Notify::new(),
                alive: AtomicBool::new(true),
            });
            runtime.spawn(run(flusher.clone()));
            *slot = Some(flusher);
        }
        slot.as_deref().map(f)
    })
}

struct Alive(Arc<Flusher>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
        // Whatever is still listed is written now rather than stranded.
        let left: Vec<_> = self.0.dirty.lock().drain(..).collect();
        for client in left {
            client.outbox().write_queued();
        }
    }
}

async fn run(flusher: Arc<Flusher>) {
    let alive = Alive(flusher);
    let flusher = &alive.0;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        flusher.wake.notified().await;
        loop {
            {
                let mut dirty = flusher.dirty.lock();
                let n = dirty.len().min(BATCH);
                batch.extend(dirty.drain(..n));
            }
            if batch.is_empty() {
                break;
            }
            for client in batch.drain(..) {
                client.outbox().write_queued();
            }
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::{Ipv4Addr, SocketAddr};

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    use super::*;
    use crate::connection::{ClientInfo, Frame};

    /// A released client handle on one end of a real TCP pair, and the other end.
    async fn client(n: u32) -> (Arc<ClientHandle>, TcpStream) {
        client_with_budget(n, 1 << 20).await
    }

    async fn client_with_budget(n: u32, budget: usize) -> (Arc<ClientHandle>, TcpStream) {
        let (server, peer) = super::super::outbox::tests::pair().await;
        let info = ClientInfo {
            id: pubsub_protocol::ClientId::new(format!("c{n}")).unwrap(),
            user: pubsub_protocol::UserId::new(format!("u{n}")).unwrap(),
            remote_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
            connected_at: 0,
            node: "test".into(),
        };
        let handle = Arc::new(ClientHandle::new(info, server, budget));
        handle.outbox().release();
        (handle, peer)
    }

    /// Lets the runtime's driver see freshly accepted sockets writable, as
    /// it has long before any delivery in a server (until then a write
    /// through tokio is refused as would-block without being tried).
    async fn settle_readiness() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    fn nothing_to_read(peer: &TcpStream) -> bool {
        let mut probe = [0u8; 1];
        matches!(peer.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    #[tokio::test]
    async fn deliveries_leave_once_the_sender_yields_each_clients_in_order() {
        let (a, mut peer_a) = client(1).await;
        let (b, mut peer_b) = client(2).await;
        settle_readiness().await;
        // One turn of a sender: nothing is written while it runs...
        assert!(a.deliver(&Frame::from("a1")));
        assert!(b.deliver(&Frame::from("b1")));
        assert!(a.deliver(&Frame::from("a2")));
        assert!(a.deliver(&Frame::from("a3")));
        assert!(nothing_to_read(&peer_a) && nothing_to_read(&peer_b));
        assert_eq!(a.outbox().queued_frames(), 3);
        // ...and everything is once it yields, without the clients' own tasks
        // (there are none here) doing anything.
        let mut got_a = [0u8; 12];
        let mut got_b = [0u8; 4];
        let read = async {
            peer_a.read_exact(&mut got_a).await.unwrap();
            peer_b.read_exact(&mut got_b).await.unwrap();
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .expect("the flusher wrote the deliveries");
        assert_eq!(&got_a, b"\x81\x02a1\x81\x02a2\x81\x02a3");
        assert_eq!(&got_b, b"\x81\x02b1");
        assert_eq!(a.outbox().queued_frames(), 0);
    }

    #[tokio::test]
    async fn a_burst_within_one_turn_is_not_held_against_a_client_that_reads() {
        // Twice its outbound budget reaches a client before the sender
        // yields. The socket has room for all of it, so the client is no
        // slow consumer: the outbox must hand the burst to the socket as it
        // grows rather than hold it all for the flusher's turn.
        let budget = 64 * 1024;
        let (a, mut peer_a) = client_with_budget(4, budget).await;
        settle_readiness().await;
        let chunk = "d".repeat(1024);
        let frames = 2 * budget / 1024;
        for _ in 0..frames {
            assert!(
                a.deliver(&Frame::from(chunk.clone())),
                "kicked as a slow consumer"
            );
        }
        assert!(!a.is_closed());
        let mut got = vec![0u8; frames * (4 + 1024)];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            peer_a.read_exact(&mut got),
        )
        .await
        .expect("every delivery arrived")
        .unwrap();
        assert!(
            got.chunks(4 + 1024)
                .all(|f| f[..4] == [0x81, 126, 4, 0] && f[4..].iter().all(|&b| b == b'd'))
        );
    }

    #[test]
    fn outside_a_runtime_a_delivery_is_written_at_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (a, peer_a) = rt.block_on(async {
            let pair = client(3).await;
            settle_readiness().await;
            pair
        });
        let peer_a = peer_a.into_std().unwrap();
        peer_a.set_nonblocking(false).unwrap();
        peer_a
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        // No runtime on this thread, so no flusher: the write happens here.
        assert!(a.deliver(&Frame::from("x")));
        let mut got = [0u8; 3];
        std::io::Read::read_exact(&mut &peer_a, &mut got).unwrap();
        assert_eq!(&got, b"\x81\x01x");
        drop(rt);
    }
}
