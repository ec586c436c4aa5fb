//! Replay protection lives in `portcullis_kv` (in-process, or shared on Redis); the signature, DPoP and
//! client-assertion checks use it through these names.

pub use portcullis_kv::nonces::{FirstUse, FirstUseFuture, MemoryNonces, NonceCache, RedisNonces};
