//! API keys (API.md "API keys").

pub mod handlers;
pub mod service;
pub mod verify;

pub use service::{ApiKeys, KeyChanges, KeyDraft, KeySettings, key_id};
pub use verify::KeyCheck;
