//! The one pagination rule of every list: read one row past the page, so that "there is more" is
//! known, never guessed, and hand out the next page's cursor (the last item's id) only then.

/// The rows to ask the store for, for a page of `limit`.
pub fn fetch(limit: u32) -> u32 {
    limit.saturating_add(1)
}

/// Cuts `rows` (read with [`fetch`]) to `limit`; the cursor of the next page when there is one.
pub fn cut<T>(rows: &mut Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> String) -> Option<String> {
    let limit = limit as usize;
    let more = rows.len() > limit;
    rows.truncate(limit);
    if more {
        rows.last().map(cursor_of)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_only_when_there_is_more() {
        let mut rows: Vec<u32> = (1..=fetch(3)).collect();
        assert_eq!(cut(&mut rows, 3, u32::to_string), Some("3".into()));
        assert_eq!(rows, [1, 2, 3]);
        let mut last: Vec<u32> = vec![4, 5, 6];
        assert_eq!(cut(&mut last, 3, u32::to_string), None);
        assert_eq!(last, [4, 5, 6]);
        let mut none: Vec<u32> = Vec::new();
        assert_eq!(cut(&mut none, 3, u32::to_string), None);
    }
}
