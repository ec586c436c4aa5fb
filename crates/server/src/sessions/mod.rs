//! Browser sessions (API.md "Sessions and CSRF").

mod activity;
pub mod handlers;
pub mod service;

pub use service::{
    CookieSession, SessionSettings, Sessions, SiteHints, StartedSession, TOKEN_PREFIX,
};
