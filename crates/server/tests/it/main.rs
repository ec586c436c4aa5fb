//! The server's integration tests: one binary (link time matters on two cores), talking HTTP to the
//! real router over real SQLite and, when configured, real PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

mod accounts;
mod apikeys;
mod architecture;
mod binary;
mod browser;
mod connections;
mod contract;
mod forward_auth;
mod gateways;
mod hardening;
mod http;
mod interop;
mod jwt;
mod mail;
mod nodes;
mod oauth;
mod oauth_cimd;
mod oauth_device;
mod oauth_dpop;
mod oauth_exchange;
mod oauth_par;
mod oauth_private_key_jwt;
mod oauth_registration;
mod oidc_rp;
mod pages;
mod sessions;
mod shapes;
mod signatures;
mod signing_keys;
mod tokens;
mod upstream;
mod users;
