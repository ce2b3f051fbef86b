//! print-abort-worker: turns abort commands from RabbitMQ into Microsoft Graph
//! `POST /print/printers/{printerId}/jobs/{printJobId}/abort` calls and publishes one
//! outcome event per command.
//!
//! The parts, by file:
//! - [`config`]: layered settings;
//! - [`command`]: parsing abort commands;
//! - [`auth`]: app-only tokens; [`graph`]: the Graph client;
//! - [`retry`]: which failures are retried and how long to wait;
//! - [`handler`]: one command from start to [`outcome::Outcome`];
//! - [`outcome`]: outcome events;
//! - [`amqp`]: topology and publishing; [`worker`]: the consume loop;
//! - [`telemetry`]: logging.

pub mod amqp;
pub mod auth;
pub mod command;
pub mod config;
pub mod graph;
pub mod handler;
pub mod outcome;
pub mod retry;
pub mod sim;
pub mod telemetry;
pub mod worker;

pub use config::Settings;
pub use worker::run;
