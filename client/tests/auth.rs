//! The handshake against fake servers: challenge-response with the right and a wrong
//! secret, the role asked for, reconnects redoing the proof, and TLS with and without the
//! server's CA.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use qd_client::{Client, Error, ErrorCode, Role, TlsOptions};
use qd_protocol::codec::{Incoming, ServerCodec};
use qd_protocol::{ClientFrame, Response, ServerFrame, DEFAULT_MAX_FRAME};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;

use crate::fake::{accept, answer, challenge, listen, next_request};

/// A server with a secret: the right secret is welcomed as a worker, and the connection
/// works.
#[tokio::test]
async fn right_secret_is_welcomed() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut wire = accept(&listener).await;
        assert_eq!(challenge(&mut wire, b"s3cret", b"adm1n").await, Some(Role::Worker));
        let (id, _) = next_request(&mut wire).await;
        answer(&mut wire, id, Ok(Response::Pong)).await;
    });
    let client = Client::builder(addr).secret("s3cret").connect().await.unwrap();
    assert_eq!(client.server_info().unwrap().role, Role::Worker);
    client.ping().await.unwrap();
    server.await.unwrap();
}

/// The admin role is proved with the admin secret, not the worker's.
#[tokio::test]
async fn admin_role_needs_the_admin_secret() {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        for _ in 0..2 {
            let mut wire = accept(&listener).await;
            challenge(&mut wire, b"s3cret", b"adm1n").await;
        }
    });
    let err = Client::builder(addr.clone()).secret("s3cret").admin().connect().await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    let client = Client::builder(addr).secret("adm1n").admin().connect().await.unwrap();
    assert_eq!(client.server_info().unwrap().role, Role::Admin);
}

/// A wrong secret fails at once (no reconnect loop) with an error that says what to check.
#[tokio::test]
async fn wrong_secret_fails_clearly() {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let mut wire = accept(&listener).await;
        challenge(&mut wire, b"s3cret", b"adm1n").await;
    });
    let err = Client::builder(addr).secret("guess").connect().await.unwrap_err();
    assert!(matches!(&err, Error::Auth { .. }), "{err:?}");
    assert_eq!(err.code(), Some(ErrorCode::AuthFailed));
    assert!(err.is_auth() && !err.is_transient());
    let text = err.to_string();
    assert!(text.contains("QD_SECRET") && text.contains("wrong secret"), "{text}");
}

/// No secret configured, but the server asks for one: refused locally, clearly.
#[tokio::test]
async fn missing_secret_fails_clearly() {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let mut wire = accept(&listener).await;
        let nonce = [1; 32];
        wire.send(&ServerFrame::Challenge { nonce }).await.unwrap();
        let _ = wire.next().await;
    });
    let err = Client::connect(addr).await.unwrap_err();
    assert!(matches!(&err, Error::Auth { message, .. } if message.contains("has none")), "{err:?}");
}

/// After the connection drops, the next request reconnects and proves the secret again.
#[tokio::test]
async fn reconnect_redoes_the_handshake() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut first = accept(&listener).await;
        assert!(challenge(&mut first, b"s3cret", b"s3cret").await.is_some());
        drop(first);
        let mut second = accept(&listener).await;
        assert!(challenge(&mut second, b"s3cret", b"s3cret").await.is_some());
        let (id, _) = next_request(&mut second).await;
        answer(&mut second, id, Ok(Response::Pong)).await;
    });
    let client = Client::builder(addr).secret("s3cret").connect().await.unwrap();
    // The first socket may still look alive when the ping goes out: then the ping fails
    // as Disconnected and the next one reconnects.
    let mut result = client.ping().await;
    if matches!(result, Err(Error::Disconnected { .. })) {
        result = client.ping().await;
    }
    result.unwrap();
    server.await.unwrap();
}

/// An idle client pings (and drops the answers without fuss); a short interval so the
/// test polls only briefly.
#[tokio::test]
async fn idle_connection_pings() {
    let fake = crate::fake::FakeQueue::start(vec![]).await;
    let client = Client::builder(fake.addr.clone())
        .idle_ping(Some(Duration::from_millis(20)))
        .connect()
        .await
        .unwrap();
    crate::fake::eventually("two idle pings", || fake.with(|r| r.pings) >= 2).await;
    // Still usable: the pings' answers did not confuse the connection.
    assert_eq!(client.stats().await.unwrap().len(), 2);
}

fn self_signed() -> (String, TlsAcceptor) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let pem = cert.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    (pem, TlsAcceptor::from(Arc::new(config)))
}

/// Serves TLS connections: Hello, Welcome, then answers every request Pong.
async fn tls_server(acceptor: TlsAcceptor) -> String {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let mut wire = Framed::new(tls, ServerCodec::new(DEFAULT_MAX_FRAME));
                let Some(Ok(Incoming::Frame(ClientFrame::Hello(_)))) = wire.next().await else {
                    return;
                };
                wire.send(&crate::fake::welcome(100)).await.unwrap();
                while let Some(Ok(Incoming::Frame(ClientFrame::Request { id, .. }))) =
                    wire.next().await
                {
                    let pong = ServerFrame::Response { id, result: Ok(Response::Pong) };
                    wire.send(&pong).await.unwrap();
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn tls_with_the_servers_ca_connects() {
    let (pem, acceptor) = self_signed();
    let addr = tls_server(acceptor).await;
    let tls = TlsOptions::new().ca_pem(pem).server_name("localhost");
    let client = Client::builder(addr).tls(tls).connect().await.unwrap();
    client.ping().await.unwrap();
}

#[tokio::test]
async fn tls_without_the_servers_ca_fails() {
    let (_, acceptor) = self_signed();
    let addr = tls_server(acceptor).await;
    // Trust another self-signed certificate: the server's is then unknown.
    let (other, _) = self_signed();
    let tls = TlsOptions::new().ca_pem(other).server_name("localhost");
    let err = Client::builder(addr.clone()).tls(tls).connect().await.unwrap_err();
    assert!(matches!(&err, Error::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("CA"), "{err}");
    // No CA at all is refused before dialing.
    let err = Client::builder(addr).tls(TlsOptions::new()).connect().await.unwrap_err();
    assert!(matches!(&err, Error::Invalid { .. }), "{err:?}");
}

/// The CA can come from a PEM file.
#[tokio::test]
async fn tls_ca_from_a_file() {
    let (pem, acceptor) = self_signed();
    let addr = tls_server(acceptor).await;
    let dir = std::env::temp_dir().join(format!("qd-client-ca-{}", std::process::id()));
    std::fs::write(&dir, pem).unwrap();
    let tls = TlsOptions::new().ca_pem_file(&dir).unwrap().server_name("localhost");
    let result = Client::builder(addr).tls(tls).connect().await;
    let _ = std::fs::remove_file(&dir);
    result.unwrap().ping().await.unwrap();
}
