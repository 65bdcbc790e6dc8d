//! `pubsub serve`: load settings, build the server, run until Ctrl-C or
//! SIGTERM, then shut down gracefully.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use pubsub_server::{DEV_AUTH_WARNING, DevAuth, EchoHandler, SeeOnlySelf, Server, TopicPatterns};
use tracing_subscriber::EnvFilter;

use crate::settings::{self, AuthMode, BuiltinHandler, Overrides, PresenceVisibility};

pub async fn run(config: Option<&Path>, overrides: &Overrides) -> anyhow::Result<()> {
    let settings = settings::load(config, overrides).context("invalid settings")?;
    // Logs go to stderr; stdout carries only the "listening on" line, which
    // scripts (and the browser tests) read to learn the port.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&settings.log).context("invalid log filter")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let mut builder = Server::builder().config(settings.server.clone());
    match settings.auth {
        Some(AuthMode::Dev) => {
            tracing::warn!("{DEV_AUTH_WARNING}");
            builder = builder.authenticator(DevAuth);
        }
        None => bail!(
            "no auth mode chosen. Pass --auth dev (or auth = \"dev\" in pubsub.toml, or \
             PUBSUB_AUTH=dev) to trust the userId query parameter; it lets anyone claim \
             any user id, so use it for development only"
        ),
    }
    if let Some(node) = &settings.node_id {
        builder = builder.node_id(node.clone());
    }
    if settings.handler == BuiltinHandler::Echo {
        builder = builder.handler(EchoHandler);
    }
    builder = builder.topic_policy(TopicPatterns {
        join: settings.topics.join.clone(),
        publish: settings.topics.publish.clone(),
    });
    if settings.presence_visibility == PresenceVisibility::OnlySelf {
        builder = builder.presence_policy(SeeOnlySelf);
    }
    let mut routes = pubsub_server::axum::Router::new();
    for (prefix, dir) in &settings.static_dirs {
        if !dir.is_dir() {
            bail!(
                "static directory {} (for {prefix}) does not exist",
                dir.display()
            );
        }
        routes = routes.nest_service(prefix, tower_http::services::ServeDir::new(dir));
    }
    let server = builder.routes(routes).build()?;
    let addr = SocketAddr::new(settings.bind, settings.port);
    let workers = match settings.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let running = server
        .bind_threads(addr, workers)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(workers, "serving");
    println!(
        "pubsub listening on ws://{}{} (stats: http://{}/stats)",
        running.local_addr(),
        settings.server.path,
        running.local_addr()
    );

    shutdown_signal().await;
    tracing::info!("shutting down");
    let report = running.shutdown().await;
    if !report.clean {
        tracing::warn!(
            remaining = report.remaining,
            "some connections did not finish in time"
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
