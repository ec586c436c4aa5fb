//! The HTTP kit: problem JSON, extractors, cookies, pagination, middleware, the listener and the
//! OpenAPI base. It knows axum and names no capability; capabilities' handlers use it.

pub mod cookies;
pub mod error;
pub mod extract;
pub mod listener;
pub mod middleware;
pub mod openapi;
pub mod pagination;

pub use error::{ApiError, ApiResult, Problem};
