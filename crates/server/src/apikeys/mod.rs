//! API keys (API.md "API keys").

pub mod handlers;
pub mod service;
pub mod verify;

pub use service::{
    ApiKeys, KeyChanges, KeyDraft, KeySettings, check_name, check_scopes, key_id, parse_owner,
};
pub use verify::KeyCheck;
