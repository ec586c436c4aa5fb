//! The rules of OAuth 2.0 / OpenID Connect that need no I/O (API.md "OAuth 2.0 and OpenID Connect"):
//! PKCE ([`pkce`], RFC 7636, S256 only), redirect URIs ([`redirect`]: what may be registered, and
//! when a presented one matches, RFC 6749 §3.1.2, RFC 8252, RFC 9700 §4.1), and what a client may be
//! ([`client`]: type, token-endpoint authentication, grants, and the rules that make them coherent).
//! For devices and high-security clients: [`device`] (RFC 8628 user codes) and [`dpop`]
//! (RFC 9449 proofs).
//! The server's `oauth` capability calls these; they decide, it answers.

pub mod client;
pub mod device;
pub mod dpop;
pub mod id_token;
pub mod pkce;
pub mod redirect;
