//! A TCP proxy in front of the broker whose link one test can cut without disturbing the
//! other tests that share the broker.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct LinkProxy {
    pub addr: SocketAddr,
    /// Bumped on every cut; each connection drops when it changes.
    generation: watch::Sender<u64>,
    /// While `true`, new connections are refused (closed at once).
    down: watch::Sender<bool>,
}

impl LinkProxy {
    pub async fn start(target: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (generation, _) = watch::channel(0u64);
        let (down, _) = watch::channel(false);
        let generations = generation.clone();
        let downs = down.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *downs.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut cut = generations.subscribe();
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
        Self {
            addr,
            generation,
            down,
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Drops every open connection through the proxy.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Refuses new connections (and cuts open ones) until [`LinkProxy::restore`].
    pub fn take_down(&self) {
        self.down.send_replace(true);
        self.cut();
    }

    pub fn restore(&self) {
        self.down.send_replace(false);
    }
}
