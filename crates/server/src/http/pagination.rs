//! The one pagination rule of every list (users, keys, audit events): `limit` (1 to `max_page_size`,
//! 50 when left out) and `cursor` in; the items and `next_cursor` out, `next_cursor` present only when
//! there is more. Lists are read one row past the page, so "more" is known, never guessed.

use serde::Deserialize;

use crate::error::{Error, Result};

/// `?limit=&cursor=`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// At most this many items (1 to the server's `max_page_size`, default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A checked page request.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub limit: u32,
    pub cursor: Option<String>,
}

impl PageRequest {
    /// Checks `limit` against `max`; `cursor_ok` says whether a cursor is one of this list's ids.
    pub fn parse(q: PageQuery, max: u32, cursor_ok: impl Fn(&str) -> bool) -> Result<Self> {
        let limit = q.limit.unwrap_or(50.min(max));
        if !(1..=max).contains(&limit) {
            return Err(Error::field(
                "limit",
                "out_of_range",
                format!("limit must be between 1 and {max}"),
            ));
        }
        if let Some(c) = &q.cursor
            && !cursor_ok(c)
        {
            return Err(Error::field(
                "cursor",
                "invalid_cursor",
                "cursor must be the next_cursor of a previous page",
            ));
        }
        Ok(Self {
            limit,
            cursor: q.cursor,
        })
    }

    /// What to ask the store for: one row more than the page.
    pub fn fetch(&self) -> u32 {
        self.limit + 1
    }

    /// Cuts `rows` (fetched with [`Self::fetch`]) to the page; the cursor of the next page when there
    /// is one.
    pub fn cut<T>(&self, rows: &mut Vec<T>, cursor_of: impl Fn(&T) -> String) -> Option<String> {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        if more {
            rows.last().map(cursor_of)
        } else {
            None
        }
    }
}
