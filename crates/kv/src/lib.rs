//! Shared short-lived state for several nodes: one trait per kind, each with an in-process
//! implementation (one node, and the fallback while Redis is away) and a Redis one.
//!
//! * [`limiter`]: rate limits and login backoff (GCRA, atomically in one Lua script);
//! * [`nonces`]: replay caches (`SET NX PX`);
//! * [`bus`]: the invalidation bus (pub/sub).

pub mod bus;
pub mod limiter;
pub mod nonces;
pub mod redis;
