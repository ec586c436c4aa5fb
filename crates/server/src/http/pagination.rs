//! The one pagination rule of every list (users, keys, audit events): `limit` (1 to `max_page_size`,
//! 50 when left out) and `cursor` in; the items and `next_cursor` out, `next_cursor` present only when
//! there is more. Lists are read one row past the page, so "more" is known, never guessed.

use std::marker::PhantomData;

use portcullis_core::ids::{ClientId, EventId, KeyId, SignatureKeyId, UserId};
use serde::Deserialize;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::{ObjectBuilder, Required, Type};

use crate::error::{Error, Result};

/// The ids a list pages by: its cursor is the id of the last item of the previous page.
pub trait Cursor: Sized {
    const PREFIX: &'static str;
    fn parse_cursor(raw: &str) -> Option<Self>;
}

macro_rules! cursor {
    ($($id:ty),*) => {$(
        impl Cursor for $id {
            const PREFIX: &'static str = <$id>::PREFIX;
            fn parse_cursor(raw: &str) -> Option<Self> {
                <$id>::parse(raw).ok()
            }
        }
    )*};
}
cursor!(UserId, KeyId, EventId, ClientId, SignatureKeyId);

/// `?limit=&cursor=` of a list of `C`s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, bound = "")]
pub struct PageQuery<C> {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    #[serde(skip)]
    of: PhantomData<C>,
}

impl<C> PageQuery<C> {
    /// The page part of a list's own query (one with filters besides).
    pub fn new(limit: Option<u32>, cursor: Option<String>) -> Self {
        Self {
            limit,
            cursor,
            of: PhantomData,
        }
    }
}

impl<C: Cursor> utoipa::IntoParams for PageQuery<C> {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let limit = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1));
        let cursor = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(format!("^{}[0-9a-f]{{32}}$", C::PREFIX)));
        vec![
            ParameterBuilder::new()
                .name("limit")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(
                    "At most this many items (1 to the server's `max_page_size`, default 50).",
                ))
                .schema(Some(limit))
                .build(),
            ParameterBuilder::new()
                .name("cursor")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some("The `next_cursor` of the previous page."))
                .schema(Some(cursor))
                .build(),
        ]
    }
}

/// A checked page request: its cursor one of the list's ids.
#[derive(Debug, Clone)]
pub struct PageRequest<C> {
    pub limit: u32,
    pub cursor: Option<C>,
}

impl<C: Cursor> PageRequest<C> {
    /// Checks `limit` against `max`, and that a cursor is one of this list's ids.
    pub fn parse(q: PageQuery<C>, max: u32) -> Result<Self> {
        let limit = q.limit.unwrap_or(50.min(max));
        if !(1..=max).contains(&limit) {
            return Err(Error::field(
                "limit",
                "out_of_range",
                format!("limit must be between 1 and {max}"),
            ));
        }
        let cursor = match q.cursor.as_deref().map(C::parse_cursor) {
            None => None,
            Some(Some(c)) => Some(c),
            Some(None) => {
                return Err(Error::field(
                    "cursor",
                    "invalid_cursor",
                    "cursor must be the next_cursor of a previous page",
                ));
            }
        };
        Ok(Self { limit, cursor })
    }

    /// What to ask the store for: one row more than the page ([`portcullis_core::page`]).
    pub fn fetch(&self) -> u32 {
        portcullis_core::page::fetch(self.limit)
    }

    /// Cuts `rows` (fetched with [`Self::fetch`]) to the page; the cursor of the next page when there
    /// is one.
    pub fn cut<T>(&self, rows: &mut Vec<T>, cursor_of: impl Fn(&T) -> String) -> Option<String> {
        portcullis_core::page::cut(rows, self.limit, cursor_of)
    }
}
