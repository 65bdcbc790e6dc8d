//! The `pubsub` binary.
//!
//! - `pubsub serve`: a single node with in-memory state (serve.rs, settings.rs).
//! - `pubsub listen` / `pubsub send`: a command-line client for trying a
//!   server from two terminals (client_commands.rs).

mod client_commands;
mod serve;
mod settings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use settings::{AuthMode, BuiltinHandler, Overrides};

// The server allocates a few small buffers per message (frames, ids, JSON);
// mimalloc's thread-local free lists make those cheaper than glibc's malloc
// on the request path (callgrind: 17.1k -> 15.2k user-space instructions per
// rpc round trip). Version 2 without transparent huge pages keeps idle
// memory where glibc had it (3.4 KiB per connection at 19k; v3 was 3.6-3.7).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pubsub",
    version,
    about = "Real-time messaging between browser tabs, users and backends"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a PubSub node (WebSocket endpoint, /stats, /health).
    Serve {
        /// TOML settings file (default: ./pubsub.toml if it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on [default: 0.0.0.0].
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
        /// Port to listen on [default: 4001].
        #[arg(long, short)]
        port: Option<u16>,
        /// How clients authenticate. Required; `dev` trusts ?userId= and is for development only.
        #[arg(long, value_enum)]
        auth: Option<AuthMode>,
        /// Built-in handler for sendToServer [default: none].
        #[arg(long, value_enum)]
        handler: Option<BuiltinHandler>,
        /// Node id used in client ids [default: random].
        #[arg(long)]
        node_id: Option<String>,
        /// Log filter [default: info].
        #[arg(long)]
        log: Option<String>,
        /// Worker threads (one listener and single-threaded runtime each) [default: one per core].
        #[arg(long)]
        workers: Option<usize>,
        /// Serve a directory over HTTP: --static /demo=clients/js/demo (repeatable).
        #[arg(long = "static", value_name = "PREFIX=DIR", value_parser = parse_static)]
        static_dirs: Vec<(String, PathBuf)>,
    },
    /// Connect as a user and print every action received, one JSON line each.
    Listen {
        #[command(flatten)]
        connection: client_commands::ConnectionArgs,
        /// Only print actions of this type [default: all].
        #[arg(long = "type", short = 't')]
        action_type: Option<String>,
    },
    /// Connect as a user, send one action, print the acknowledgement or response.
    Send {
        #[command(flatten)]
        connection: client_commands::ConnectionArgs,
        #[command(flatten)]
        target: client_commands::Target,
        /// The action, a JSON object with a string "type".
        action: String,
    },
}

fn parse_static(value: &str) -> Result<(String, PathBuf), String> {
    let (prefix, dir) = value
        .split_once('=')
        .ok_or_else(|| "expected PREFIX=DIR, for example /demo=clients/js/demo".to_owned())?;
    if !prefix.starts_with('/') || prefix.len() < 2 {
        return Err("the prefix must start with '/' and name a path, for example /demo".into());
    }
    Ok((prefix.to_owned(), PathBuf::from(dir)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The connections run on `serve`'s worker threads (thread per core);
    // this runtime only drives the CLI, the engine's timers and signals.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pubsub: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                config,
                bind,
                port,
                auth,
                handler,
                node_id,
                log,
                workers,
                static_dirs,
            } => {
                let overrides = Overrides {
                    bind,
                    port,
                    auth,
                    handler,
                    node_id,
                    log,
                    workers,
                    static_dirs: (!static_dirs.is_empty())
                        .then(|| static_dirs.into_iter().collect()),
                };
                serve::run(config.as_deref(), &overrides).await
            }
            Command::Listen {
                connection,
                action_type,
            } => client_commands::listen(&connection, action_type.as_deref()).await,
            Command::Send {
                connection,
                target,
                action,
            } => client_commands::send(&connection, &target, &action).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pubsub: {e:#}");
            ExitCode::FAILURE
        }
    }
}
