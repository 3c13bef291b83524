//! A gRPC echo server, as small as the project's fixed packages allow: any
//! method path, each request message answered as it comes (unary or
//! streaming), over h2c and,
//! with the `tls` feature, over TLS (rustls, ring, ALPN h2). A size floor,
//! not a server to run: see Cargo.toml.
//!
//! usage: size-floor H2C_PORT [TLS_PORT CERT.pem KEY.pem]

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, HeaderValue, Response};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

#[derive(Clone, PartialEq, prost::Message)]
struct Echo {
    #[prost(string, tag = "1")]
    text: String,
}

/// The length of the gRPC message `buf` starts with, once its prefix is in.
fn framed_len(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = buf.get(1..5)?.try_into().ok()?;
    Some(5 + u32::from_be_bytes(prefix) as usize)
}

async fn serve<T: AsyncRead + AsyncWrite + Unpin>(io: T) {
    let Ok(mut connection) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        tokio::spawn(async move {
            let response = Response::builder()
                .header("content-type", "application/grpc")
                .body(())
                .expect("a valid response");
            let Ok(mut send) = respond.send_response(response, false) else {
                return;
            };
            // Every message of the request is answered as it comes, for as
            // long as the request is open (unary or streaming alike).
            let mut body = request.into_body();
            let mut buf = BytesMut::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
                while let Some(len) = framed_len(&buf).filter(|len| buf.len() >= *len) {
                    let frame = buf.split_to(len);
                    let message = Echo::decode(&frame[5..]).unwrap_or_default();
                    let mut out = BytesMut::with_capacity(5 + message.encoded_len());
                    out.put_u8(0);
                    out.put_u32(message.encoded_len() as u32);
                    message.encode(&mut out).expect("room reserved");
                    let _ = send.send_data(out.freeze(), false);
                }
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let _ = send.send_trailers(trailers);
        });
    }
}

async fn listen(port: &str) -> TcpListener {
    let port: u16 = port.parse().expect("a port");
    TcpListener::bind(("127.0.0.1", port)).await.expect("bind")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let plain = listen(args.get(1).expect("usage: size-floor H2C_PORT ...")).await;
    tokio::spawn(async move {
        loop {
            if let Ok((socket, _)) = plain.accept().await {
                tokio::spawn(serve(socket));
            }
        }
    });
    #[cfg(feature = "tls")]
    if let [_, _, port, cert, key] = &args[..] {
        use std::io::BufReader;
        use std::sync::Arc;
        use tokio_rustls::rustls;
        let open = |path: &str| BufReader::new(std::fs::File::open(path).expect("readable"));
        let certs = rustls_pemfile::certs(&mut open(cert))
            .collect::<Result<Vec<_>, _>>()
            .expect("certificates");
        let key = rustls_pemfile::private_key(&mut open(key))
            .expect("a key file")
            .expect("a key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("a usable certificate");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let tls = listen(port).await;
        tokio::spawn(async move {
            loop {
                if let Ok((socket, _)) = tls.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if let Ok(stream) = acceptor.accept(socket).await {
                            serve(stream).await;
                        }
                    });
                }
            }
        });
    }
    let _ = tokio::signal::ctrl_c().await;
}
