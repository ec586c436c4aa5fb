//! Portcullis domain types and rules. No I/O lives here: newtypes that carry the proof that input was
//! parsed ([`email::Email`], [`apikeys::ApiKey`]), password policy and hashing, JWT signing and
//! verification, the rate-limit algorithm, and the sealing of secrets under the master key. Everything
//! is a pure function of its inputs so that it can be unit-, property- and fuzz-tested.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::await_holding_lock,
    clippy::todo
)]

pub mod apikeys;
pub mod bearer;
pub mod clock;
pub mod csrf;
pub mod devices;
pub mod email;
pub mod httpsig;
pub mod ids;
pub mod jwt;
pub mod links;
pub mod oauth;
pub mod page;
#[cfg(feature = "passwords")]
pub mod passwords;
pub mod principal;
pub mod ratelimit;
pub mod routes;
pub mod scopes;
pub mod seal;
pub mod secrets;
pub mod text;
