//! HTTP message signatures (RFC 9421) as a credential: the keys people sign with (`/v1/signing-keys`),
//! the verification of a signed request into a `Principal` (on `/v1/*` and `/admin/v1/*`, at
//! `/v1/authorize`, and for services at `/v1/signatures/verify`), and replay protection.

pub mod handlers;
pub mod replay;
mod service;

pub use replay::{FirstUse, MemoryNonces, NonceCache, RedisNonces, StoreNonces, replay_cache};
pub use service::{NewSignatureKey, SignatureAuth, SignatureSettings, Signatures, SignedRequest};
