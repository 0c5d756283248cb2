//! A TCP proxy between clients and a server that tests can cut and restore.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A TCP proxy in front of a server, to break the network on purpose: [`cut`](Proxy::cut)
/// drops every connection through it (no close frame: what a client sees when the
/// network fails), and [`block`](Proxy::block) also refuses new ones until
/// [`unblock`](Proxy::unblock).
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    state: std::sync::Arc<ProxyState>,
    task: JoinHandle<()>,
}

struct ProxyState {
    blocked: std::sync::atomic::AtomicBool,
    cut: tokio::sync::watch::Sender<u64>,
    accepted: std::sync::atomic::AtomicUsize,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        Proxy::round_robin(vec![target]).await
    }

    /// Listens on a free loopback port and forwards each new connection to the next of
    /// `targets` in turn: a load balancer without sticky sessions.
    pub async fn round_robin(targets: Vec<SocketAddr>) -> Proxy {
        assert!(!targets.is_empty(), "a proxy needs a target");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("local addr");
        let state = std::sync::Arc::new(ProxyState {
            blocked: std::sync::atomic::AtomicBool::new(false),
            cut: tokio::sync::watch::channel(0).0,
            accepted: std::sync::atomic::AtomicUsize::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if st.blocked.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let n = st
                    .accepted
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let target = targets[n % targets.len()];
                let mut cut = st.cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, state, task }
    }

    /// The WebSocket URL through the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Drops every connection through the proxy now.
    pub fn cut(&self) {
        self.state.cut.send_modify(|n| *n += 1);
    }

    /// Drops every connection and refuses new ones.
    pub fn block(&self) {
        self.state
            .blocked
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut();
    }

    /// Lets connections through again.
    pub fn unblock(&self) {
        self.state
            .blocked
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many connections it has let through so far.
    pub fn accepted(&self) -> usize {
        self.state
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
