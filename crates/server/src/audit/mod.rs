//! The audit log (OWASP ASVS 5.0 V16): every authentication decision and every change to credentials,
//! written off the request path in batches, floods of cheap refusals counted rather than written, and
//! read back by administrators.

mod counts;
pub mod handlers;
mod writer;

pub use counts::AuditCounts;
pub use writer::{Audit, AuditContext};
