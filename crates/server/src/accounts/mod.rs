//! Accounts people can trust: outgoing mail, verified emails and password reset by email.

pub mod handlers;
pub mod mailer;
pub mod service;

pub use service::{AccountSettings, Accounts};
