//! Building and running a server (the original's `createServer`), and
//! graceful shutdown (the original's `disconnect`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;

use crate::auth::{Authenticator, VerifyClient};
use crate::config::{ConfigError, ServerConfig};
use crate::engine::{Engine, MemoryEngine};
use crate::handle::ServerHandle;
use crate::handler::{DynHandler, Handler};
use crate::http;
use crate::hub::{Hub, HubParts};
use crate::presence::{PresenceHooks, PresencePolicy, SeeEveryone};
use crate::topics::{OpenTopics, TopicPolicy};

/// Extra time shutdown allows beyond `shutdown_timeout` for close handshakes.
const CLOSE_ALLOWANCE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "no authenticator configured: choose one explicitly (DevAuth trusts the `userId` query parameter)"
    )]
    NoAuthenticator,
    #[error("invalid node id {0:?}: use 1 to 32 characters from A-Z, a-z, 0-9, '_' and '-'")]
    NodeId(String),
}

/// Why a built server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen: {0}")]
    Listen(#[from] io::Error),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

/// Configures a server. Only the authenticator is required: the engine
/// defaults to in-memory, and without a handler `sendToServer` answers
/// `no_handler`.
#[must_use]
pub struct ServerBuilder {
    config: ServerConfig,
    node: Option<String>,
    engine: Option<Arc<dyn Engine>>,
    handler: Option<Arc<dyn DynHandler>>,
    auth: Option<Arc<dyn Authenticator>>,
    verify: Option<Arc<dyn VerifyClient>>,
    presence_policy: Option<Arc<dyn PresencePolicy>>,
    topic_policy: Option<Arc<dyn TopicPolicy>>,
    hooks: Option<Arc<dyn PresenceHooks>>,
    routes: Router,
}

impl ServerBuilder {
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// This node's id, used in client ids (default: random).
    pub fn node_id(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    pub fn engine(mut self, engine: impl Engine) -> Self {
        self.engine = Some(Arc::new(engine));
        self
    }

    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    pub fn authenticator(mut self, auth: impl Authenticator) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }

    pub fn verify_client(mut self, verify: impl VerifyClient) -> Self {
        self.verify = Some(Arc::new(verify));
        self
    }

    /// Who may query and watch whose presence (default: everyone everyone).
    pub fn presence_policy(mut self, policy: impl PresencePolicy) -> Self {
        self.presence_policy = Some(Arc::new(policy));
        self
    }

    /// Who may join and publish to which topic (default: open).
    pub fn topic_policy(mut self, policy: impl TopicPolicy) -> Self {
        self.topic_policy = Some(Arc::new(policy));
        self
    }

    /// Callbacks on connect, disconnect and status change.
    pub fn presence_hooks(mut self, hooks: impl PresenceHooks) -> Self {
        self.hooks = Some(Arc::new(hooks));
        self
    }

    /// HTTP routes served next to the WebSocket endpoint (the original's `expressUse`).
    pub fn routes(mut self, routes: Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    pub fn build(self) -> Result<Server, BuildError> {
        self.config.validate()?;
        let auth = self.auth.ok_or(BuildError::NoAuthenticator)?;
        let node = match self.node {
            Some(node) if valid_node_id(&node) => node,
            Some(node) => return Err(BuildError::NodeId(node)),
            None => random_node_id(),
        };
        let hub = Arc::new(Hub::new(HubParts {
            config: self.config,
            node: node.into(),
            engine: self.engine.unwrap_or_else(|| Arc::new(MemoryEngine::new())),
            handler: self.handler,
            auth,
            verify: self.verify,
            presence_policy: self
                .presence_policy
                .unwrap_or_else(|| Arc::new(SeeEveryone)),
            topic_policy: self.topic_policy.unwrap_or_else(|| Arc::new(OpenTopics)),
            hooks: self.hooks,
        }));
        Ok(Server {
            hub,
            routes: self.routes,
        })
    }
}

fn valid_node_id(node: &str) -> bool {
    (1..=32).contains(&node.len())
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn random_node_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..6)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

/// A configured server, not yet listening.
pub struct Server {
    hub: Arc<Hub>,
    routes: Router,
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            config: ServerConfig::default(),
            node: None,
            engine: None,
            handler: None,
            auth: None,
            verify: None,
            presence_policy: None,
            topic_policy: None,
            hooks: None,
            routes: Router::new(),
        }
    }

    /// A handle for sending and reading, usable before the server listens
    /// (for example inside routes passed to [`Server::routes`]).
    pub fn handle(&self) -> ServerHandle {
        ServerHandle::new(self.hub.clone())
    }

    /// Adds HTTP routes next to the WebSocket endpoint.
    #[must_use]
    pub fn routes(mut self, routes: Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    /// Binds `addr` and starts serving.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> Result<RunningServer, StartError> {
        let mut last_error = None;
        for addr in tokio::net::lookup_host(addr).await? {
            match listen(addr, self.hub.config.listen_backlog) {
                Ok(listener) => return self.serve(listener).await,
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))
            .into())
    }

    /// Starts serving on an already bound listener, on the current runtime.
    pub async fn serve(self, listener: TcpListener) -> Result<RunningServer, StartError> {
        let local_addr = listener.local_addr()?;
        let router = self.start().await?;
        let accept = tokio::spawn(http::accept_loop(listener, router, self.hub.clone()));
        Ok(RunningServer {
            local_addr,
            hub: self.hub,
            accept: vec![accept],
            workers: Vec::new(),
        })
    }

    /// Binds `addr` `workers` times (SO_REUSEPORT) and serves each listener
    /// from its own thread running a single-threaded runtime: thread per
    /// core. The kernel spreads new connections over the listeners; a
    /// connection then lives on one thread, and every thread reaches every
    /// other's connections through the shared engine. Call from a runtime,
    /// which runs the engine's and the hooks' own tasks.
    ///
    /// Compared with one work-stealing runtime, nothing migrates between
    /// threads and no connection waits behind a full run queue: under
    /// saturation every connection keeps its turn (see docs/benchmarks.md).
    pub async fn bind_threads(
        self,
        addr: SocketAddr,
        workers: usize,
    ) -> Result<RunningServer, StartError> {
        let listeners = reuseport_listeners(addr, workers.max(1), self.hub.config.listen_backlog)?;
        let local_addr = listeners[0].local_addr()?;
        let router = self.start().await?;
        let mut threads = Vec::with_capacity(listeners.len());
        for (i, listener) in listeners.into_iter().enumerate() {
            let (hub, router) = (self.hub.clone(), router.clone());
            let thread = std::thread::Builder::new()
                .name(format!("pubsub-worker-{i}"))
                .spawn(move || worker(hub, router, listener))?;
            threads.push(thread);
        }
        Ok(RunningServer {
            local_addr,
            hub: self.hub,
            accept: Vec::new(),
            workers: threads,
        })
    }

    /// Starts the engine and the server's own background tasks; returns the
    /// router every accept loop serves.
    async fn start(&self) -> Result<axum::Router, StartError> {
        self.hub
            .engine
            .start(self.hub.config.engine_settings())
            .await?;
        tokio::spawn(crate::hub::run_hooks(self.hub.clone()));
        tokio::spawn(sweep_retry_window(self.hub.clone()));
        tracing::info!(
            node = %self.hub.node,
            engine = self.hub.engine.name(),
            auth = self.hub.auth.mode(),
            "pubsub starting"
        );
        Ok(http::router(self.hub.clone(), self.routes.clone()))
    }
}

/// One thread of `bind_threads`: a single-threaded runtime accepting on its
/// own listener and running the connections it accepted until shutdown.
fn worker(hub: Arc<Hub>, router: axum::Router, listener: std::net::TcpListener) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        // Before any connection: the connections made here have this
        // thread's flusher as their home (connection/flusher.rs).
        crate::connection::start_flusher();
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "cannot use a listener");
                return;
            }
        };
        http::accept_loop(listener, router, hub.clone()).await;
        // Keep running this thread's connections through the drain; the
        // shutdown that stopped the accept loop closes the tracker.
        let limit = hub.config.shutdown_timeout() + CLOSE_ALLOWANCE;
        let _ = tokio::time::timeout(limit, hub.tasks.wait()).await;
    });
}

/// `count` listeners on one address (the first one picks the port when it
/// is 0), each with SO_REUSEPORT and a large backlog.
fn reuseport_listeners(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> io::Result<Vec<std::net::TcpListener>> {
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// A listener with a backlog sized for connect storms: the default of 128
/// overflows while a busy node works through thousands of handshakes, and
/// each overflow costs the client a one-second SYN retransmit.
fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

async fn sweep_retry_window(hub: Arc<Hub>) {
    let period =
        (hub.config.retry_window() / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = hub.shutdown_started() => return,
            _ = tick.tick() => hub.retry_window.sweep(),
        }
    }
}

/// A listening server.
pub struct RunningServer {
    local_addr: SocketAddr,
    hub: Arc<Hub>,
    /// Accept loops on the caller's runtime (`bind`, `serve`).
    accept: Vec<JoinHandle<()>>,
    /// Worker threads (`bind_threads`).
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// How a graceful shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every connection finished within the shutdown timeout.
    pub clean: bool,
    /// Connection tasks still running when shutdown gave up waiting.
    pub remaining: usize,
}

impl RunningServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle::new(self.hub.clone())
    }

    /// Graceful shutdown: stop accepting, let in-flight handler calls answer,
    /// close every client with 1012 ("reconnect"), and return within
    /// `shutdown_timeout` plus a few seconds for close handshakes.
    pub async fn shutdown(self) -> ShutdownReport {
        self.hub.begin_shutdown();
        self.stopped().await
    }

    /// Waits for a shutdown started elsewhere (`ServerHandle::shutdown`) to finish.
    pub async fn stopped(self) -> ShutdownReport {
        self.hub.shutdown_started().await;
        for accept in self.accept {
            let _ = accept.await;
        }
        self.hub.tasks.close();
        let limit = self.hub.config.shutdown_timeout() + CLOSE_ALLOWANCE;
        let clean = tokio::time::timeout(limit, self.hub.tasks.wait())
            .await
            .is_ok();
        let report = ShutdownReport {
            clean,
            remaining: self.hub.tasks.len(),
        };
        // Each worker thread ends once its accept loop stopped and the
        // tracker emptied (or its own bounded wait ran out).
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        })
        .await;
        tracing::info!(
            clean = report.clean,
            remaining = report.remaining,
            "pubsub stopped"
        );
        report
    }
}
