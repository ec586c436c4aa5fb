//! OAuth 2.0 and OpenID Connect (API.md "OAuth 2.0 and OpenID Connect"): clients ([`clients`]), the
//! authorization server ([`service`]), its parameters ([`params`]) and its error edge ([`error`]).
//! The browser half of `/oauth2/authorize` (login, consent, the redirect back) is in
//! `pages::authorize`, which renders HTML; the JSON endpoints are in [`handlers`].

pub mod backchannel;
pub mod clients;
pub mod error;
pub mod fetch;
pub mod handlers;
pub mod metadata_documents;
pub mod params;
pub mod service;

pub use clients::{Client, ClientSettings, Clients};
pub use error::{OAuthError, OAuthResult};
pub use service::OAuth;
