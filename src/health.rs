//! What the worker reports about itself: alive, connected, consuming, paused.
//!
//! Shared by the consume loop, which sets it, and the operations endpoints, which read it,
//! with every tenant's throttling gate.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::throttle::{GateReport, Throttle};

#[derive(Debug, Default)]
pub struct Health {
    /// Broker sessions set up so far; more than one means the worker reconnected.
    sessions: AtomicU64,
    connected: AtomicBool,
    consuming: AtomicBool,
    paused: AtomicBool,
    /// Pauses so far, so a test or an operator can tell "never paused" from "resumed".
    pauses: AtomicU64,
    /// Where the operations endpoints listen, once they do.
    http_address: OnceLock<SocketAddr>,
    /// The tenants' throttling gates, for `/readyz`'s body.
    throttle: OnceLock<Arc<Throttle>>,
    /// The broker node (`host:port`) of the current or latest session.
    broker_node: Mutex<Option<String>>,
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
        let was = self.paused.swap(value, Ordering::Relaxed);
        if value && !was {
            self.pauses.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Times the worker paused since it started.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    pub fn set_throttle(&self, throttle: Arc<Throttle>) {
        let _ = self.throttle.set(throttle);
    }

    /// Every tenant's throttling gate; empty before the worker sent a request.
    pub fn tenants(&self) -> Vec<GateReport> {
        self.throttle
            .get()
            .map(|throttle| throttle.report())
            .unwrap_or_default()
    }

    pub fn set_broker_node(&self, node: String) {
        *self
            .broker_node
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(node);
    }

    /// The broker node (`host:port`) the worker is, or was last, connected to.
    pub fn broker_node(&self) -> Option<String> {
        self.broker_node
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
