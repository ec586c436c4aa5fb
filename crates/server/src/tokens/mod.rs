//! Token login (API.md "Token login"): access JWTs and rotating refresh tokens.

pub mod access;
pub mod dpop;
pub mod handlers;
pub mod service;

pub use service::{AccessGrant, REFRESH_PREFIX, Rotated, TokenPair, TokenSettings, Tokens};
