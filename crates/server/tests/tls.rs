//! `wss://` from the Rust client: the server speaks plain WebSocket behind a
//! TLS-terminating proxy (as in production), and the client encrypts.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{TestServer, WAIT, client_config, inbox, recv};
use pubsub_client::{Client, ConnectError, ReconnectPolicy};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

/// A self-signed certificate for `localhost`: (certificate DER, PKCS#8 key DER).
fn self_signed() -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (key.cert.der().to_vec(), key.signing_key.serialize_der())
}

/// Accepts TLS with `cert` and forwards the plain bytes to `upstream`.
async fn tls_proxy(cert: Vec<u8>, key: Vec<u8>, upstream: SocketAddr) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_wss_client_talks_to_a_ws_client_through_tls() {
    let server = TestServer::start(|b| b).await;
    let (cert, key) = self_signed();
    let proxy = tls_proxy(cert.clone(), key, server.running.local_addr()).await;

    let alice = Client::connect(
        client_config(&format!("wss://localhost:{}", proxy.port()), "alice")
            .tls_root_certificate(cert),
    )
    .await
    .unwrap();
    let bob = server.client("bob").await;
    let mut bob_inbox = inbox(&bob, "CHAT");
    let mut alice_inbox = inbox(&alice, "CHAT");

    let ack = alice
        .send_to_user(&json!({"type": "CHAT", "text": "over tls"}), ["bob"])
        .await
        .unwrap();
    assert_eq!(
        ack.get("bob").map(|r| (r.online, r.clients)),
        Some((true, 1))
    );
    let got = recv(&mut bob_inbox).await;
    assert_eq!(got.action["text"], "over tls");
    assert_eq!(got.from.as_ref().unwrap().user.as_str(), "alice");

    bob.send_to_user(&json!({"type": "CHAT", "text": "back"}), ["alice"])
        .await
        .unwrap();
    let got = recv(&mut alice_inbox).await;
    assert_eq!(got.action["text"], "back");
}

#[tokio::test]
async fn a_certificate_the_client_does_not_trust_is_refused() {
    let server = TestServer::start(|b| b).await;
    let (cert, key) = self_signed();
    let proxy = tls_proxy(cert, key, server.running.local_addr()).await;
    let config = client_config(&format!("wss://localhost:{}", proxy.port()), "mallory").reconnect(
        ReconnectPolicy {
            enabled: false,
            ..ReconnectPolicy::default()
        },
    );
    let result = tokio::time::timeout(WAIT, Client::connect(config))
        .await
        .unwrap();
    match result {
        Err(ConnectError::Transport(message)) => {
            assert!(message.contains("certificate"), "{message}");
        }
        Err(other) => panic!("expected a certificate error, got {other}"),
        Ok(_) => panic!("connected through an untrusted certificate"),
    }
}

#[tokio::test]
async fn an_invalid_root_certificate_is_a_setup_error() {
    let config = client_config("wss://localhost:1", "a").tls_root_certificate(vec![1, 2, 3]);
    assert!(matches!(
        Client::connect(config).await,
        Err(ConnectError::Tls(_))
    ));
}
