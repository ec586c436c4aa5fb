//! `portcullis-client`: verify Portcullis access tokens inside a Rust service.
//!
//! * [`Verifier`] keeps the issuer's JWKS (honouring `Cache-Control`, refetching on an unknown `kid`
//!   at most once per interval, serving the keys it has while the issuer is down) and verifies RFC
//!   9068 access tokens locally with the server's own rules (`portcullis-core`): algorithm pinned to
//!   the key, `typ` `at+jwt`, `iss`, `aud`, `exp`/`nbf` with bounded leeway. Verified tokens are
//!   cached until they expire. Opaque tokens (`pat_…`) go to RFC 7662 introspection when configured,
//!   with a short cache.
//! * [`RequireAuth`] is a `tower::Layer` that puts the caller's [`Principal`] in the request's
//!   extensions, or answers 401 / 403 with an RFC 6750 challenge.
//! * [`RequestSigner`] signs outgoing requests (RFC 9421, hmac-sha256 or ed25519, with
//!   `Content-Digest` and a nonce); [`check_content_digest`] checks a body against the digest forward
//!   auth verified.
//!
//! See the crate's README for the ten lines that protect an axum app.

mod error;
mod jwks;
mod layer;
mod signer;
mod verifier;

pub use error::Error;
pub use layer::{RequireAuth, RequireAuthService, refusal};
pub use portcullis_core::principal::{AuthMethod, Principal};
pub use portcullis_core::scopes::Scopes;
pub use signer::{RequestSigner, check_content_digest, generate_ed25519};
pub use verifier::{Config, Introspection, Verifier};
