//! Portcullis server: one folder per capability (`users`, `tokens`, `signing_keys`, `sessions`,
//! `apikeys`, `audit`, `pages`), each a service that speaks the domain and handlers that speak HTTP;
//! the HTTP kit (`http`), the one credential → principal pipeline (`auth`), and `app`, which builds
//! the services in order and serves them. See LAYOUT of the project for the rule.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::await_holding_lock,
    clippy::todo
)]

pub mod accounts;
pub mod apikeys;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod error;
pub mod forward_auth;
pub mod http;
pub mod invalidation;
pub mod oauth;
pub mod ops;
pub mod pages;
pub mod ratelimit;
pub mod sessions;
pub mod signatures;
pub mod signing_keys;
pub mod telemetry;
pub mod tokens;
pub mod upstream;
pub mod users;

pub use app::{AppState, Running, StartError, create_root_key, start, store_is_empty};
pub use config::Config;
