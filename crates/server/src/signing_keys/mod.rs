//! JWT signing keys: the ring that signs and verifies, its rotation, the JWKS.

pub mod handlers;
mod ring;

pub use ring::{KeyError, KeyRing, RingState, ring_algs};
