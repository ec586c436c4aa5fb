//! `Content-Digest` (RFC 9530): any field value against any body, without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::httpsig::digest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (field, body) = text.split_once('\0').unwrap_or((text, ""));
    let _ = digest::verify(field, body.as_bytes());
});
