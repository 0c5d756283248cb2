//! A switchboard server on a free loopback port, plain or TLS.

use crate::RawClient;
use crate::TIMEOUT;
use std::net::SocketAddr;
use std::time::Duration;

use switchboard_server::{Server, ServerBuilder, ServerConfig};
use tokio::task::JoinHandle;

/// A server listening on a free loopback port.
pub struct TestServer {
    /// The server handle.
    pub server: Server,
    /// Where it listens.
    pub addr: SocketAddr,
    task: Option<JoinHandle<()>>,
    tls: bool,
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, and a client TLS
/// configuration that trusts it (and nothing else).
pub struct TestCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// A client configuration that trusts only this certificate.
    pub client: std::sync::Arc<rustls::ClientConfig>,
}

impl TestCert {
    /// Generates a fresh one.
    pub fn generate() -> TestCert {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("self-signed certificate");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ck.cert.der().clone())
            .expect("trust the test certificate");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TestCert {
            cert_pem: ck.cert.pem(),
            key_pem: ck.key_pair.serialize_pem(),
            client: std::sync::Arc::new(client),
        }
    }
}

impl TestServer {
    /// Builds and serves on 127.0.0.1:0; returns once it is running (listening, its
    /// backplane started), or its start failed (the test sees why at `stop`).
    pub async fn start(builder: ServerBuilder) -> TestServer {
        TestServer::start_on("127.0.0.1:0".parse().expect("an address"), builder).await
    }

    /// Builds and serves on `addr` (to restart a server where its clients expect it).
    pub async fn start_on(addr: SocketAddr, builder: ServerBuilder) -> TestServer {
        log_if_asked();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the address");
        let addr = listener.local_addr().expect("local addr");
        let server = builder.build();
        let s = server.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = s.serve(listener).await {
                failed(&e);
            }
        });
        until_running(&server, &task).await;
        TestServer {
            server,
            addr,
            task: Some(task),
            tls: false,
        }
    }

    /// Builds and serves `wss://` on 127.0.0.1:0 with `cert`.
    pub async fn start_tls(builder: ServerBuilder, cert: &TestCert) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("local addr");
        let tls = switchboard_server::TlsConfig::from_pem(
            cert.cert_pem.as_bytes(),
            cert.key_pem.as_bytes(),
        )
        .expect("TLS config");
        let server = builder.build();
        let s = server.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = s.serve_tls(listener, tls).await {
                failed(&e);
            }
        });
        until_running(&server, &task).await;
        TestServer {
            server,
            addr,
            task: Some(task),
            tls: true,
        }
    }

    /// A server with default settings and the given handlers.
    pub async fn with(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> TestServer {
        TestServer::start(configure(Server::builder())).await
    }

    /// The request/response handlers the client tests call: `add` (`{a, b}` -> their
    /// sum) and `divide` (`{a, b}` -> `a / b`; `b == 0` is the typed error
    /// `DIVIDE_BY_ZERO` with `details: {b}`).
    ///
    /// ```no_run
    /// # async fn demo() {
    /// use switchboard_test::TestServer;
    /// let s = TestServer::with(TestServer::arithmetic).await;
    /// # }
    /// ```
    pub fn arithmetic(builder: ServerBuilder) -> ServerBuilder {
        use serde_json::Value;
        use switchboard_server::{HandlerError, Json};
        let operand = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        builder
            .on("add", move |Json(v): Json<Value>| async move {
                Json(operand(&v, "a") + operand(&v, "b"))
            })
            .on("divide", move |Json(v): Json<Value>| async move {
                let b = operand(&v, "b");
                if b == 0.0 {
                    return Err(HandlerError::new("DIVIDE_BY_ZERO", "Cannot divide by zero")
                        .with_details(serde_json::json!({ "b": b })));
                }
                Ok(Json(operand(&v, "a") / b))
            })
    }

    /// A server with these settings and the built-in handlers only.
    ///
    /// ```no_run
    /// # async fn demo() {
    /// use switchboard_server::ServerConfig;
    /// use switchboard_test::TestServer;
    /// let s = TestServer::with_config(ServerConfig {
    ///     max_connections: 2,
    ///     ..TestServer::config()
    /// })
    /// .await;
    /// # }
    /// ```
    pub async fn with_config(config: ServerConfig) -> TestServer {
        TestServer::start(Server::builder().config(config)).await
    }

    /// Test defaults: port 0, a short shutdown grace and close timeout.
    pub fn config() -> ServerConfig {
        ServerConfig {
            port: 0,
            shutdown_grace: Duration::from_secs(5),
            // Test clients often hold a socket they no longer read: do not wait long for
            // their close answer.
            close_timeout: Duration::from_millis(250),
            ..ServerConfig::default()
        }
    }

    /// The WebSocket URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.addr, self.server.config().path)
    }

    /// An HTTP URL on the server.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connects a raw client and reads its `connected` frame.
    pub async fn raw(&self) -> RawClient {
        let mut c = RawClient::connect(&self.url()).await;
        let hello = c.recv().await;
        assert_eq!(hello["type"], "connected", "first frame: {hello}");
        c.id = hello["payload"]["client_id"]
            .as_str()
            .expect("client_id")
            .to_owned();
        c
    }

    /// Shuts the server down and waits for `serve` to return.
    pub async fn stop(mut self) {
        self.server.shutdown().await;
        if let Some(task) = self.task.take() {
            tokio::time::timeout(TIMEOUT, task)
                .await
                .expect("serve returns after shutdown")
                .expect("serve task");
        }
    }
}

/// Waits (at most [`TIMEOUT`]) until `server` runs, its backplane started, or its
/// task ended. A test that cut a node's link at once could otherwise cut it in the
/// middle of that start, and fail the server instead of testing an outage.
async fn until_running(server: &Server, task: &JoinHandle<()>) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !server.is_running() && !task.is_finished() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Panics with a server's error and every cause under it.
fn failed(e: &dyn std::error::Error) -> ! {
    let mut why = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        why = format!("{why}: {c}");
        cause = c.source();
    }
    panic!("server failed: {why}");
}

/// With `RUST_LOG` set (`RUST_LOG=switchboard_redis=debug`), what the servers and
/// clients of a test log is printed with the test's output (shown when it fails), to
/// follow a failure the stress runs of a chaos test found.
fn log_if_asked() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
