//! Integration tests of `portcullis-store`: every test runs on SQLite (a fresh file) and, when
//! `PORTCULLIS_TEST_DATABASE_URL` is set, on PostgreSQL (a fresh schema per test).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

mod api_keys;
mod audit;
mod bulk;
mod concurrency;
mod device;
mod maintenance;
mod oauth;
mod refresh;
mod sessions;
mod signature_keys;
mod signing_keys;
mod users;
