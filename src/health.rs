//! What the worker reports about itself: alive, connected, consuming, paused.
//!
//! Shared by the consume loop, which sets it, and the operations endpoints, which read it.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    /// Broker sessions set up so far; more than one means the worker reconnected.
    sessions: AtomicU64,
    connected: AtomicBool,
    consuming: AtomicBool,
    paused: AtomicBool,
    /// Where the operations endpoints listen, once they do.
    http_address: OnceLock<SocketAddr>,
}

impl Health {
    pub fn set_connected(&self, value: bool) {
        if value {
            self.sessions.fetch_add(1, Ordering::Relaxed);
        }
        self.connected.store(value, Ordering::Relaxed);
        if !value {
            self.consuming.store(false, Ordering::Relaxed);
        }
    }

    pub fn set_consuming(&self, value: bool) {
        self.consuming.store(value, Ordering::Relaxed);
    }

    pub fn set_paused(&self, value: bool) {
        self.paused.store(value, Ordering::Relaxed);
    }

    pub fn set_http_address(&self, address: SocketAddr) {
        let _ = self.http_address.set(address);
    }

    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http_address.get().copied()
    }

    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Ready to take commands: connected, consuming and not paused.
    pub fn ready(&self) -> bool {
        self.connected() && self.consuming() && !self.paused()
    }
}
