//! `pubsub listen` and `pubsub send`.

use anyhow::{Context, bail};
use pubsub_client::{Client, ClientConfig, Incoming, STATUS_CHANGE};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct ConnectionArgs {
    /// Server endpoint.
    #[arg(long, env = "PUBSUB_URL", default_value = "ws://127.0.0.1:4001")]
    url: String,
    /// User id to connect as (dev auth mode).
    #[arg(long, short)]
    user: Option<String>,
    /// Token to authenticate with.
    #[arg(long, env = "PUBSUB_TOKEN")]
    token: Option<String>,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// Send to every client of these users (comma-separated ids).
    #[arg(long, value_delimiter = ',')]
    to: Vec<String>,
    /// Send to this user's other clients.
    #[arg(long)]
    broadcast: bool,
    /// Send to the server's handler and print its response.
    #[arg(long)]
    server: bool,
}

fn config(args: &ConnectionArgs) -> ClientConfig {
    let mut config = ClientConfig::new(&args.url);
    if let Some(user) = &args.user {
        config = config.user(user);
    }
    if let Some(token) = &args.token {
        config = config.token(token);
    }
    config
}

fn line(incoming: &Incoming) -> Value {
    json!({
        "id": incoming.id,
        "via": incoming.via,
        "from": incoming.from,
        "action": incoming.action,
    })
}

pub async fn listen(args: &ConnectionArgs, action_type: Option<&str>) -> anyhow::Result<()> {
    let client = Client::connect(config(args))
        .await
        .with_context(|| format!("cannot connect to {}", args.url))?;
    if let Some(session) = client.session() {
        eprintln!(
            "connected as user {} (client {}); waiting for actions, Ctrl-C to stop",
            session.user, session.client
        );
    }
    let (_subscription, mut incoming) = client.subscribe_channel(action_type.unwrap_or("*"));
    client.subscribe(STATUS_CHANGE, |event| {
        eprintln!("status: {}", event.action["status"]);
    });
    loop {
        tokio::select! {
            message = incoming.recv() => match message {
                Some(message) if message.id.is_some() => println!("{}", line(&message)),
                Some(_) => {}
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => {
                client.close();
                return Ok(());
            }
        }
        if client.status() == pubsub_client::Status::Offline {
            bail!(
                "the server closed the connection: {:?}",
                client.last_close()
            );
        }
    }
}

pub async fn send(args: &ConnectionArgs, target: &Target, action: &str) -> anyhow::Result<()> {
    let action: Value = serde_json::from_str(action).context("the action is not valid JSON")?;
    let client = Client::connect(config(args))
        .await
        .with_context(|| format!("cannot connect to {}", args.url))?;
    let result = if target.broadcast {
        client.broadcast(&action).await.map(|ack| json!(ack))
    } else if target.server {
        client.send_to_server(&action).await
    } else {
        client
            .send_to_user(&action, target.to.clone())
            .await
            .map(|ack| json!(ack))
    };
    client.close();
    match result {
        Ok(value) => {
            println!("{value}");
            Ok(())
        }
        Err(e) => {
            eprintln!(
                "{}",
                json!({ "code": e.code, "name": e.name, "message": e.message, "retryable": e.retryable, "data": e.data })
            );
            bail!("the send failed: {e}")
        }
    }
}
