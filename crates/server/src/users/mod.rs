//! Users and passwords (API.md "Users and passwords").

pub mod handlers;
pub mod hashing;
pub mod service;
pub mod throttle;

pub use service::{PasswordLogin, Users, UsersSettings, insert_user, parse_email};
