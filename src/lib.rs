//! print-abort-worker: turns abort commands from RabbitMQ into Microsoft Graph
//! `POST /print/printers/{printerId}/jobs/{printJobId}/abort` calls and publishes one
//! outcome event per command.
//!
//! The parts, by file:
//! - [`config`] holds the layered settings;
//! - [`command`] parses abort commands;
//! - [`auth`] issues app-only tokens and [`graph`] is the Graph client;
//! - [`retry`] decides which failures are retried, how long to wait, and, once a command
//!   has its outcome, whether it retries later through the broker or is dead-lettered;
//!   [`throttle`] holds every tenant's requests at one gate while Graph throttles it;
//! - [`breaker`] tells a bad command from a sick service and pauses the worker only for
//!   the second; [`health`] reports state, and [`http`] serves it with the metrics;
//! - [`handler`] takes one command from start to its disposition (an
//!   [`outcome::Outcome`], or back to the queue);
//! - [`outcome`] builds the outcome events, and [`remote`] bounds the text taken from
//!   replies into them;
//! - [`amqp`] declares the topology and publishes; [`worker`] runs the sessions, the
//!   consuming phases and the settlement of each delivery;
//! - [`telemetry`] sets up logging, metrics and trace context;
//! - [`cli`] holds the command-line tools: `enqueue`, `demo`, `check` and `dlq`.
//!
//! The Graph stand-in is the `graph-sim` crate (crates/graph-sim), the benchmark the
//! `bench` crate (crates/bench); docs/ARCHITECTURE.md shows how they fit.

pub mod amqp;
pub mod auth;
pub mod breaker;
pub mod cli;
pub mod command;
pub mod config;
pub mod graph;
pub mod handler;
pub mod health;
pub mod http;
pub mod outcome;
pub mod remote;
pub mod retry;
pub mod telemetry;
pub mod throttle;
pub mod worker;

pub use config::Settings;
pub use worker::{RunError, run, run_with_health};
