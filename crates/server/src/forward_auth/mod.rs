//! Forward auth (API.md "Forward auth for gateways"): nginx `auth_request`, Caddy `forward_auth`,
//! Traefik ForwardAuth and Envoy ext_authz ask `/v1/authorize` about each request; the credential it
//! carried goes through the one pipeline (`auth`), the route rules of the config file add scopes,
//! credential kinds, audiences and anonymous or login-redirect routes, and RFC 9728 metadata tells
//! clients which authorization server guards each protected resource.

pub mod handlers;
pub mod service;

pub use portcullis_core::routes::{DefaultPolicy, RouteRule, Rules};
pub use service::ForwardAuth;
