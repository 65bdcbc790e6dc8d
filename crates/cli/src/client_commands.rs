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
    /// Also trust the certificates in this file for `wss://` (PEM, one or
    /// more certificates, or a single DER certificate): a private CA or a
    /// self-signed server. The Mozilla roots are trusted either way.
    #[arg(long, env = "PUBSUB_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
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

fn config(args: &ConnectionArgs) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::new(&args.url);
    if let Some(user) = &args.user {
        config = config.user(user);
    }
    if let Some(token) = &args.token {
        config = config.token(token);
    }
    if let Some(path) = &args.ca_cert {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
        for der in certificates(&bytes).with_context(|| format!("--ca-cert {}", path.display()))? {
            config = config.tls_root_certificate(der);
        }
    }
    Ok(config)
}

/// The certificates in a PEM file, or the file itself if it is DER.
fn certificates(bytes: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    // DER is an ASN.1 SEQUENCE; PEM is text.
    if bytes.first() == Some(&0x30) {
        return Ok(vec![bytes.to_vec()]);
    }
    let certs = CertificateDer::pem_slice_iter(bytes)
        .map(|cert| cert.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        bail!("no CERTIFICATE in the file");
    }
    Ok(certs)
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
    let client = Client::connect(config(args)?)
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
    let client = Client::connect(config(args)?)
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

#[cfg(test)]
mod tests {
    use super::certificates;

    fn cert() -> (String, Vec<u8>) {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a self-signed certificate");
        (key.cert.pem(), key.cert.der().to_vec())
    }

    #[test]
    fn reads_every_certificate_of_a_pem_file_and_a_der_file() {
        let (pem_a, der_a) = cert();
        let (pem_b, der_b) = cert();
        let both = format!("# a comment\n{pem_a}\n{pem_b}");
        assert_eq!(
            certificates(both.as_bytes()).unwrap(),
            vec![der_a.clone(), der_b]
        );
        assert_eq!(certificates(&der_a).unwrap(), vec![der_a]);
    }

    #[test]
    fn refuses_a_file_without_a_certificate() {
        let e = certificates(b"not a certificate").unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        let e = certificates(b"-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(e.to_string().contains("not a PEM"), "{e}");
    }
}
