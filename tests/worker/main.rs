//! End-to-end tests of the worker: the real RabbitMQ on 127.0.0.1:5672, Graph and the token
//! endpoint stood in by wiremock (or graph-sim) over real HTTP, fresh queue and exchange names
//! per test.

mod helpers;
mod proxy;

mod attribution;
mod behaviours;
mod check;
mod cli;
mod contract;
mod credentials;
mod dead_letters;
mod deploy;
mod graph_replies;
mod invalid_commands;
mod lifecycle;
mod monitoring;
mod operations;
mod resilience;
mod routing;
mod simulator;
mod topology;
mod universal_print;
