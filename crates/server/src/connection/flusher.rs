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
//!
//! With several worker threads (`bind_threads`) each connection has a home:
//! the flusher of the thread its task runs on. A delivery is listed on the
//! sender's thread, so a few frames leave without waking another thread;
//! but a flusher with more listed than one batch (a publication to a large
//! topic) hands the members homed elsewhere to their own threads' flushers,
//! batch by batch, so every worker writes its share of the sweep alongside
//! it instead of the publisher's thread writing all of it (a publication to
//! 10,000 members reached the last of them in about half the time with two
//! workers: docs/benchmarks.md, *fanout*).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::ClientHandle;

/// Outboxes written per turn before yielding to other tasks.
const BATCH: usize = 64;

/// Worker threads whose flusher is their connections' home ([`start_here`]).
/// With one there is nobody to share a sweep with, and the look at each
/// member's home is skipped.
static HOMES: AtomicUsize = AtomicUsize::new(0);

type Listed = VecDeque<Arc<ClientHandle>>;

struct Flusher {
    dirty: Mutex<Listed>,
    wake: Notify,
    /// False once the task is gone (its runtime shut down); a new one is then
    /// started on the next use of this thread.
    alive: AtomicBool,
    /// Whether it is counted in [`HOMES`].
    home: AtomicBool,
    /// Outboxes this flusher's task wrote, for tests to see who wrote what.
    #[cfg(test)]
    written: AtomicUsize,
}

impl Flusher {
    /// Lists `client` for this flusher's task; false if the task is gone.
    fn list(&self, client: &Arc<ClientHandle>) -> bool {
        if !self.alive.load(Ordering::Acquire) {
            return false;
        }
        let first = {
            let mut dirty = self.dirty.lock();
            dirty.push_back(client.clone());
            dirty.len() == 1
        };
        self.listed(first);
        true
    }

    /// [`Flusher::list`] for several clients at once, taking them out of
    /// `clients`; false (and `clients` untouched) if the task is gone.
    fn list_all(&self, clients: &mut Vec<Arc<ClientHandle>>) -> bool {
        if !self.alive.load(Ordering::Acquire) {
            return false;
        }
        let first = {
            let mut dirty = self.dirty.lock();
            let first = dirty.is_empty();
            dirty.extend(clients.drain(..));
            first
        };
        self.listed(first);
        true
    }

    fn listed(&self, first: bool) {
        if first {
            self.wake.notify_one();
        }
        // The task ended while the clients were listed, after it wrote out
        // what it held: nobody else will write them.
        if !self.alive.load(Ordering::Acquire) {
            // Taken in a statement of its own: the lock is not held while
            // writing.
            let left = std::mem::take(&mut *self.dirty.lock());
            write_all(left);
        }
    }
}

fn write_all(clients: impl IntoIterator<Item = Arc<ClientHandle>>) {
    for client in clients {
        client.outbox().write_queued();
    }
}

/// The flusher of the thread a connection runs on; see the module's doc.
pub(crate) struct Home(Arc<Flusher>);

impl Home {
    /// This thread's flusher, if it has one running: a worker thread starts
    /// its own first ([`start_here`]). Connections made elsewhere (a
    /// multi-threaded runtime, whose tasks move between threads) have none.
    pub(crate) fn current() -> Option<Self> {
        FLUSHER.with(|slot| {
            slot.borrow()
                .as_ref()
                .filter(|flusher| flusher.home.load(Ordering::Relaxed))
                .filter(|flusher| flusher.alive.load(Ordering::Acquire))
                .map(|flusher| Home(flusher.clone()))
        })
    }
}

/// Starts this thread's flusher now rather than at its first delivery, and
/// makes it the home of the connections made on this thread. Call it inside
/// the runtime that the thread runs.
pub(crate) fn start_here() {
    with_current(|flusher| {
        if !flusher.home.swap(true, Ordering::Relaxed) {
            HOMES.fetch_add(1, Ordering::Relaxed);
        }
    });
}

thread_local! {
    static FLUSHER: RefCell<Option<Arc<Flusher>>> = const { RefCell::new(None) };
}

/// Lists `client`, whose outbox just went from empty to holding frames, for
/// the current thread's flusher.
pub(crate) fn schedule(client: &Arc<ClientHandle>) {
    let listed = with_current(|flusher| flusher.list(client));
    if listed != Some(true) {
        // Outside a runtime there is no task to hand the write to.
        client.outbox().write_queued();
    }
}

/// Runs `f` on this thread's flusher, starting one if there is none (or
/// its task is gone); `None` outside a runtime. Lent rather than cloned: a
/// fan-out schedules thousands of members per publication.
fn with_current<R>(f: impl FnOnce(&Arc<Flusher>) -> R) -> Option<R> {
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
                home: AtomicBool::new(false),
                #[cfg(test)]
                written: AtomicUsize::new(0),
            });
            runtime.spawn(run(Alive(flusher.clone())));
            *slot = Some(flusher);
        }
        slot.as_ref().map(f)
    })
}

/// Held by a flusher's task: marks the flusher gone when the task is.
struct Alive(Arc<Flusher>);

impl Drop for Alive {
    fn drop(&mut self) {
        let flusher = &self.0;
        flusher.alive.store(false, Ordering::Release);
        if flusher.home.load(Ordering::Relaxed) {
            HOMES.fetch_sub(1, Ordering::Relaxed);
        }
        // Whatever is still listed is written now rather than stranded.
        let left = std::mem::take(&mut *flusher.dirty.lock());
        write_all(left);
    }
}

async fn run(alive: Alive) {
    let flusher = &alive.0;
    let mut batch = Listed::with_capacity(BATCH);
    let mut here = Listed::with_capacity(BATCH);
    let mut away = Vec::new();
    loop {
        flusher.wake.notified().await;
        loop {
            let backlog = {
                let mut dirty = flusher.dirty.lock();
                let n = dirty.len().min(BATCH);
                batch.extend(dirty.drain(..n));
                dirty.len()
            };
            if batch.is_empty() {
                break;
            }
            // More than a batch listed is a sweep: share it batch by batch,
            // so the other threads write at this one's pace rather than
            // all at once (where they share cores with other work, a burst
            // of a whole sweep's writes starves it).
            if backlog > 0 && HOMES.load(Ordering::Relaxed) > 1 {
                share(flusher, &mut batch, &mut here, &mut away);
            } else {
                std::mem::swap(&mut batch, &mut here);
            }
            #[cfg(test)]
            flusher.written.fetch_add(here.len(), Ordering::Relaxed);
            write_all(here.drain(..));
            tokio::task::yield_now().await;
        }
    }
}

/// Hands the clients in `fresh` whose connections run on other threads to
/// those threads' flushers, one list operation (and at most one wake-up)
/// per thread, and moves the rest to `here`. `away` keeps, from one call to
/// the next, each other thread's flusher met so far with an emptied list.
fn share(
    flusher: &Arc<Flusher>,
    fresh: &mut Listed,
    here: &mut Listed,
    away: &mut Vec<(Arc<Flusher>, Vec<Arc<ClientHandle>>)>,
) {
    for client in fresh.drain(..) {
        let elsewhere = match client.home() {
            Some(Home(home)) if !Arc::ptr_eq(home, flusher) => Some(
                away.iter()
                    .position(|(other, _)| Arc::ptr_eq(other, home))
                    .unwrap_or_else(|| {
                        away.push((home.clone(), Vec::new()));
                        away.len() - 1
                    }),
            ),
            _ => None,
        };
        match elsewhere {
            Some(i) => away[i].1.push(client),
            None => here.push_back(client),
        }
    }
    for (home, clients) in away.iter_mut() {
        if !clients.is_empty() && !home.list_all(clients) {
            here.extend(clients.drain(..));
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

    /// A single-threaded runtime on a thread of its own, as `bind_threads`
    /// runs each worker.
    struct Worker {
        runtime: tokio::runtime::Handle,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Worker {
        fn start() -> Self {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let runtime = rt.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::spawn(move || {
                let _ = rt.block_on(async {
                    start_here();
                    stopped.await
                });
            });
            Worker {
                runtime,
                stop: Some(stop),
                thread: Some(thread),
            }
        }

        /// Runs `work` on this worker's thread and waits for its result.
        fn run<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> T {
            let (tx, rx) = std::sync::mpsc::channel();
            self.runtime.spawn(async move {
                let _ = tx.send(work.await);
            });
            rx.recv_timeout(std::time::Duration::from_secs(10))
                .expect("the worker ran the task")
        }

        fn written(&self) -> usize {
            let Home(flusher) = self.run(async { Home::current() }).unwrap();
            flusher.written.load(Ordering::Relaxed)
        }
    }

    impl Drop for Worker {
        fn drop(&mut self) {
            drop(self.stop.take());
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// Clients made on `worker` (so homed there), with blocking reading ends.
    fn clients_on(
        worker: &Worker,
        from: u32,
        n: u32,
    ) -> Vec<(Arc<ClientHandle>, std::net::TcpStream)> {
        worker.run(async move {
            let mut made = Vec::new();
            for i in from..from + n {
                let (handle, peer) = client(i).await;
                made.push((handle, peer.into_std().unwrap()));
            }
            made
        })
    }

    #[test]
    fn a_sweep_is_shared_with_the_threads_the_members_run_on() {
        let publisher = Worker::start();
        let other = Worker::start();
        let per_worker = 300;
        let mut members = clients_on(&publisher, 0, per_worker);
        members.extend(clients_on(&other, per_worker, per_worker));
        // Interleaved, as a topic's members are.
        let (evens, odds): (Vec<_>, Vec<_>) = members
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % 2 == 0);
        let (handles, peers): (Vec<_>, Vec<_>) = evens
            .into_iter()
            .zip(odds)
            .flat_map(|((_, a), (_, b))| [a, b])
            .unzip();
        // Both runtimes see the new sockets writable.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let rounds = 5u8;
        let publish = |round: u8| {
            let sent = handles.clone();
            publisher.run(async move {
                // One publication in one turn of the publisher's task.
                for member in &sent {
                    let frame = Frame::raw(bytes::Bytes::from(vec![0x81, 1, b'0' + round]));
                    assert!(member.deliver(&frame));
                }
                tokio::task::yield_now().await;
            })
        };
        let read = |peers: &mut [std::net::TcpStream], rounds: std::ops::Range<u8>| {
            for peer in peers.iter_mut() {
                let mut got = vec![0u8; 3 * rounds.len()];
                std::io::Read::read_exact(peer, &mut got).unwrap();
                let expected: Vec<u8> = rounds.clone().flat_map(|r| [0x81, 1, b'0' + r]).collect();
                assert_eq!(got, expected, "every publication, in order");
            }
        };
        let mut peers = peers;
        for peer in &mut peers {
            peer.set_nonblocking(false).unwrap();
            peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
        }

        // Publications back to back, sweeps overlapping: every member gets
        // each one, in order, whichever thread writes it.
        for round in 0..rounds {
            publish(round);
        }
        read(&mut peers, 0..rounds);

        // One sweep on its own: the members homed on the other thread are
        // written there, all of them or all but what the publisher's thread
        // took while no more than a batch waited.
        let before = (publisher.written(), other.written());
        publish(rounds);
        read(&mut peers, rounds..rounds + 1);
        let by_publisher = publisher.written() - before.0;
        let by_other = other.written() - before.1;
        let members = 2 * per_worker as usize;
        assert_eq!(by_publisher + by_other, members);
        assert!(
            by_other >= per_worker as usize - BATCH,
            "the other thread wrote {by_other} of {members} outboxes"
        );
        drop(handles);
    }

    #[test]
    fn a_few_deliveries_are_written_by_the_senders_thread() {
        let sender = Worker::start();
        let other = Worker::start();
        let mut members = clients_on(&other, 0, 3);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let before = (sender.written(), other.written());
        let sent: Vec<_> = members.iter().map(|(h, _)| h.clone()).collect();
        sender.run(async move {
            for member in &sent {
                assert!(member.deliver(&Frame::from("hi")));
            }
        });
        for (_, peer) in &mut members {
            peer.set_nonblocking(false).unwrap();
            peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut got = [0u8; 4];
            std::io::Read::read_exact(peer, &mut got).unwrap();
            assert_eq!(&got, b"\x81\x02hi");
        }
        // No other thread is woken for a batch's worth.
        assert_eq!(sender.written() - before.0, 3);
        assert_eq!(other.written() - before.1, 0);
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
