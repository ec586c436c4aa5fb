//! `Signature-Input` and `Signature` (RFC 9421 §4), the two fields a signer controls entirely: parsed
//! together (the first NUL splits the input), then, when they parse, the signature base built over a
//! fixed request. Neither may panic, loop or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::httpsig::{Message, base, fields};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (input, signature) = text.split_once('\0').unwrap_or((text, ""));
    let Ok(signed) = fields::parse(input, signature) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", http::HeaderValue::from_static("application/json"));
    headers.insert("example-dict", http::HeaderValue::from_static("a=1, b=2;x=1, c=(a b)"));
    let msg = Message {
        method: "POST",
        scheme: "https",
        authority: "example.com",
        path: "/foo",
        query: Some("param=Value&Pet=dog"),
        headers: &headers,
    };
    for s in &signed {
        let _ = base::of(s, &msg);
    }
});
