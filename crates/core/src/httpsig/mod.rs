//! HTTP Message Signatures (RFC 9421) with `hmac-sha256` and `ed25519`, and `Content-Digest` (RFC 9530):
//! the fifth credential. The secret never travels; each request is verified on its own, and a tampered
//! or replayed one is refused with a [`Reason`] that says exactly what went wrong.
//!
//! - [`fields`] reads `Signature-Input` and `Signature` as RFC 8941 dictionaries (with the `sfv` crate).
//! - [`components`] names the covered components (§2.1 fields with `sf`/`key`/`bs`, §2.2 derived
//!   components) and derives their values from a [`Message`].
//! - [`base`] builds the signature base byte for byte (§2.5).
//! - [`keys`] is the algorithms: the key decides, never the `alg` parameter (§3.2 step 6, §7.3.6).
//! - [`digest`] is `Content-Digest` sha-256 and sha-512 (RFC 9530 §2).
//! - [`verify`] is the whole check of one request (§3.2): required components and parameters, the time
//!   window, the signature, the digest against the body received.
//! - [`sign`] is the other side, for `portcullis-client` and the tests.
//!
//! Nothing here keeps state: replay protection (a nonce is good once per key within the window) needs
//! memory shared by every node, so the server does it with what [`verify::Verified::replay_key`] returns.

pub mod base;
pub mod components;
pub mod digest;
pub mod fields;
pub mod keys;
pub mod sign;
pub mod verify;

use std::fmt;

pub use components::Message;
pub use keys::{Algorithm, VerifyingKey};
pub use verify::{Policy, Verified};

/// The longest `Signature-Input` or `Signature` field (all lines together) we read. RFC 9421 sets no
/// limit; a real one is a few hundred bytes, so 8 KiB is generous and keeps parsing cheap.
pub const MAX_FIELD_BYTES: usize = 8 * 1024;
/// Most signatures (labels) one request may carry.
pub const MAX_SIGNATURES: usize = 8;
/// Most components one signature may cover.
pub const MAX_COMPONENTS: usize = 32;
/// How old `created` may be (seconds).
pub const MAX_AGE_S: i64 = 300;
/// How far ahead of our clock `created` may be (seconds), for clock skew.
pub const MAX_SKEW_S: i64 = 30;

/// Why a signed request was refused. [`fmt::Display`] gives the stable `reason` string of API.md
/// (`missing_component:@method`, `bad_signature`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Neither `Signature-Input` nor `Signature` (or one without the other).
    MissingSignature,
    /// `Signature-Input` is not an RFC 8941 dictionary of inner lists, or has too many members.
    MalformedSignatureInput,
    /// `Signature` is not an RFC 8941 dictionary of byte sequences, or no label of it has an input.
    MalformedSignature,
    /// A signature field is longer than [`MAX_FIELD_BYTES`].
    FieldTooLarge(&'static str),
    /// A required signature parameter (`created`, `keyid`) is absent.
    MissingParam(&'static str),
    /// A signature parameter has the wrong type (`created` not an integer, `keyid` not a string…).
    InvalidParam(&'static str),
    /// A component the policy requires is not covered, or a covered field is absent from the message.
    MissingComponent(String),
    /// A derived component this version does not know (`@foo`), or `@status` on a request.
    UnknownComponent(String),
    /// The same component (with the same parameters) is covered twice (§2.5).
    DuplicateComponent(String),
    /// A component that cannot be put in the signature base: non-ASCII value without `bs`, `sf` on a
    /// field that is not structured, a `key` that is not in the dictionary, unknown parameters.
    InvalidComponent(String),
    /// No key with this `keyid`, or a revoked one.
    UnknownKey,
    /// The `alg` parameter names another algorithm than the key's.
    AlgMismatch,
    /// The signature does not verify.
    BadSignature,
    /// `created` more than [`MAX_AGE_S`] ago, or `expires` passed.
    Expired,
    /// `created` more than [`MAX_SKEW_S`] ahead.
    Future,
    /// The same nonce (or, without a nonce, the same signature) was seen within the window.
    Replayed,
    /// `Content-Digest` does not match the body received.
    DigestMismatch,
    /// `Content-Digest` is not a dictionary of byte sequences.
    MalformedDigest,
    /// `Content-Digest` names no algorithm we check (sha-256, sha-512).
    UnsupportedDigest,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingSignature => f.write_str("missing_signature"),
            Self::MalformedSignatureInput => f.write_str("malformed_signature_input"),
            Self::MalformedSignature => f.write_str("malformed_signature"),
            Self::FieldTooLarge(field) => write!(f, "too_large:{field}"),
            Self::MissingParam(p) => write!(f, "missing_param:{p}"),
            Self::InvalidParam(p) => write!(f, "invalid_param:{p}"),
            Self::MissingComponent(c) => write!(f, "missing_component:{c}"),
            Self::UnknownComponent(c) => write!(f, "unknown_component:{c}"),
            Self::DuplicateComponent(c) => write!(f, "duplicate_component:{c}"),
            Self::InvalidComponent(c) => write!(f, "invalid_component:{c}"),
            Self::UnknownKey => f.write_str("unknown_key"),
            Self::AlgMismatch => f.write_str("alg_mismatch"),
            Self::BadSignature => f.write_str("bad_signature"),
            Self::Expired => f.write_str("expired"),
            Self::Future => f.write_str("future"),
            Self::Replayed => f.write_str("replayed"),
            Self::DigestMismatch => f.write_str("digest_mismatch"),
            Self::MalformedDigest => f.write_str("malformed_digest"),
            Self::UnsupportedDigest => f.write_str("unsupported_digest"),
        }
    }
}

impl Reason {
    /// A sentence for the problem's `detail`.
    pub fn describe(&self) -> String {
        match self {
            Self::MissingSignature => "the request carries no Signature-Input and Signature pair".into(),
            Self::MalformedSignatureInput => {
                "Signature-Input is not an RFC 8941 dictionary of inner lists (RFC 9421 §4.1)".into()
            }
            Self::MalformedSignature => {
                "Signature is not an RFC 8941 dictionary of byte sequences matching Signature-Input's labels (RFC 9421 §4.2)".into()
            }
            Self::FieldTooLarge(field) => format!("the {field} field is over {MAX_FIELD_BYTES} bytes"),
            Self::MissingParam(p) => format!("the signature parameter `{p}` is required"),
            Self::InvalidParam(p) => format!("the signature parameter `{p}` has the wrong type"),
            Self::MissingComponent(c) => format!("the component {c} must be covered and present"),
            Self::UnknownComponent(c) => format!("{c} is not a derived component of a request"),
            Self::DuplicateComponent(c) => format!("{c} is covered twice"),
            Self::InvalidComponent(c) => format!("{c} cannot be put in the signature base as covered"),
            Self::UnknownKey => "no active signing key has this keyid".into(),
            Self::AlgMismatch => "the alg parameter differs from the key's algorithm".into(),
            Self::BadSignature => "the signature does not verify over the signature base".into(),
            Self::Expired => format!("the signature was created over {MAX_AGE_S} s ago or is past its expires"),
            Self::Future => format!("the signature was created over {MAX_SKEW_S} s in the future"),
            Self::Replayed => "this nonce or signature was already used".into(),
            Self::DigestMismatch => "Content-Digest does not match the body".into(),
            Self::MalformedDigest => "Content-Digest is not a dictionary of byte sequences (RFC 9530 §2)".into(),
            Self::UnsupportedDigest => "Content-Digest carries neither sha-256 nor sha-512".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! RFC 9421 Appendix B.2.5 and B.2.6, byte for byte: the `test-request` message, its signature
    //! base and the signatures of the RFC's keys.

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use http::HeaderMap;

    use super::keys::SigningKey;
    use super::*;

    /// RFC 9421 B.1.5 `test-shared-secret`.
    const SHARED_SECRET: &str =
        "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
    /// RFC 9421 B.1.4 `test-key-ed25519`, PKCS#8 and SPKI.
    const ED25519_PRIVATE: &str =
        "MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF";
    const ED25519_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----";

    /// RFC 9421 B.2's `test-request`.
    fn test_request() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("host", "example.com"),
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("content-type", "application/json"),
            (
                "content-digest",
                "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
            ),
            ("content-length", "18"),
        ] {
            h.insert(name, value.parse().unwrap());
        }
        h
    }

    fn message(headers: &HeaderMap) -> Message<'_> {
        Message {
            method: "POST",
            scheme: "https",
            authority: "example.com",
            path: "/foo",
            query: Some("param=Value&Pet=dog"),
            headers,
        }
    }

    #[test]
    fn b_2_5_hmac_sha256() {
        let headers = test_request();
        let msg = message(&headers);
        let input = r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#;
        let signature = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:";
        let signed = fields::parse(input, signature).unwrap().remove(0);
        let base = base::of(&signed, &msg).unwrap();
        assert_eq!(
            base,
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@authority\": example.com\n\"content-type\": application/json\n\"@signature-params\": (\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\""
        );
        let secret = STANDARD.decode(SHARED_SECRET).unwrap();
        let key = VerifyingKey::hmac(&secret).unwrap();
        assert!(key.verify(base.as_bytes(), &signed.signature));
        assert_eq!(
            SigningKey::hmac(secret).unwrap().sign(base.as_bytes()),
            signed.signature
        );
        let mut tampered = base.into_bytes();
        tampered[10] ^= 1;
        assert!(!key.verify(&tampered, &signed.signature));
    }

    #[test]
    fn b_2_6_ed25519() {
        let headers = test_request();
        let msg = message(&headers);
        let input = r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
        let signature = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";
        let signed = fields::parse(input, signature).unwrap().remove(0);
        let base = base::of(&signed, &msg).unwrap();
        assert_eq!(
            base,
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@authority\": example.com\n\"content-type\": application/json\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
        );
        let public = keys::parse_ed25519_public_key(ED25519_PUBLIC_PEM).unwrap();
        assert!(VerifyingKey::ed25519(public).verify(base.as_bytes(), &signed.signature));
        // Ed25519 is deterministic: our signer reproduces the RFC's bytes.
        let private = SigningKey::ed25519(&STANDARD.decode(ED25519_PRIVATE).unwrap()).unwrap();
        assert_eq!(private.ed25519_public_key(), Some(public));
        assert_eq!(private.sign(base.as_bytes()), signed.signature);
    }

    #[test]
    fn the_test_request_digest_matches_its_body() {
        let headers = test_request();
        let field = headers["content-digest"].to_str().unwrap();
        digest::verify(field, br#"{"hello": "world"}"#).unwrap();
    }

    fn policy(now: i64, body: &[u8]) -> Policy<'_> {
        Policy {
            now,
            body: verify::Body::Received(body),
        }
    }

    /// What we sign, we verify; and each way of breaking it has its own reason.
    #[test]
    fn signed_requests_verify_and_each_fault_is_named() {
        let mut headers = test_request();
        let body = br#"{"hello": "world"}"#;
        let secret = STANDARD.decode(SHARED_SECRET).unwrap();
        let key = VerifyingKey::hmac(&secret).unwrap();
        let signer = SigningKey::hmac(secret).unwrap();
        let now = 1_618_884_473;
        let full = ["@method", "@target-uri", "content-digest", "content-type"];
        let sign_with =
            |headers: &HeaderMap, components: &[&str], nonce: Option<&str>, created: i64| {
                let signing = sign::Signing {
                    label: "sig1",
                    components,
                    keyid: "sig_test",
                    created,
                    expires: None,
                    nonce,
                    with_alg: true,
                };
                sign::sign(&signer, &signing, &message(headers)).unwrap()
            };
        let check = |headers: &HeaderMap, input: &str, sig: &str, now: i64, body: &[u8]| {
            let signed = fields::parse(input, sig)?.remove(0);
            verify::verify(&signed, &key, &message(headers), &policy(now, body)).map(|v| v.keyid)
        };
        let (input, sig) = sign_with(&headers, &full, Some("n1"), now);
        assert_eq!(
            check(&headers, &input, &sig, now, body).unwrap(),
            "sig_test"
        );
        assert_eq!(
            check(&headers, &input, &sig, now + 301, body),
            Err(Reason::Expired)
        );
        assert_eq!(
            check(&headers, &input, &sig, now - 31, body),
            Err(Reason::Future)
        );
        assert_eq!(
            check(&headers, &input, &sig, now, b"{}"),
            Err(Reason::DigestMismatch)
        );
        let other = message(&headers);
        let moved = Message {
            path: "/bar",
            ..other
        };
        let signed = fields::parse(&input, &sig).unwrap().remove(0);
        assert_eq!(
            verify::verify(&signed, &key, &moved, &policy(now, body)).unwrap_err(),
            Reason::BadSignature
        );
        let (input, sig) = sign_with(&headers, &["@method", "@target-uri"], None, now);
        assert_eq!(
            check(&headers, &input, &sig, now, body),
            Err(Reason::MissingComponent("content-digest".into()))
        );
        let (input, sig) = sign_with(&headers, &["@target-uri"], None, now);
        assert_eq!(
            check(&headers, &input, &sig, now, b""),
            Err(Reason::MissingComponent("@method".into()))
        );
        let (input, sig) = sign_with(&headers, &["@method", "@authority", "@path"], None, now);
        assert_eq!(
            check(&headers, &input, &sig, now, b""),
            Err(Reason::MissingComponent("@query".into()))
        );
        let (input, sig) = sign_with(
            &headers,
            &["@method", "@authority", "@path", "@query"],
            None,
            now,
        );
        check(&headers, &input, &sig, now, b"").unwrap();
        let ed = VerifyingKey::ed25519(keys::parse_ed25519_public_key(ED25519_PUBLIC_PEM).unwrap());
        let (input, sig) = sign_with(&headers, &full, None, now);
        let signed = fields::parse(&input, &sig).unwrap().remove(0);
        assert_eq!(
            verify::verify(&signed, &ed, &message(&headers), &policy(now, body)).unwrap_err(),
            Reason::AlgMismatch
        );
        headers.insert("content-type", "text/plain".parse().unwrap());
        let signed = fields::parse(&input, &sig).unwrap().remove(0);
        assert_eq!(
            verify::verify(&signed, &key, &message(&headers), &policy(now, body)).unwrap_err(),
            Reason::BadSignature
        );
    }

    #[test]
    fn missing_parameters_are_named() {
        let headers = test_request();
        for (input, reason) in [
            (
                r#"s=("@method" "@target-uri");keyid="k""#,
                "missing_param:created",
            ),
            (
                r#"s=("@method" "@target-uri");created=1618884473"#,
                "missing_param:keyid",
            ),
        ] {
            let signed = fields::parse(input, "s=:AA==:").unwrap().remove(0);
            let key = VerifyingKey::hmac(&[7; 32]).unwrap();
            let got = verify::verify(
                &signed,
                &key,
                &message(&headers),
                &policy(1_618_884_473, b""),
            );
            assert_eq!(got.unwrap_err().to_string(), reason);
        }
    }
}

#[cfg(test)]
mod readme {
    //! The worked example of README.md "Signing requests", byte for byte.

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use http::HeaderMap;

    use super::keys::SigningKey;
    use super::*;

    #[test]
    fn the_readme_example_is_exact() {
        let body = br#"{"item":"book","qty":1}"#;
        let digest = digest::content_digest(digest::DigestAlg::Sha256, body);
        assert_eq!(
            digest,
            "sha-256=:SqTsJBvyNh+ArgZhJK4lNXo+XGqb5zDvy9gHJLvgICE=:"
        );
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("content-digest", digest.parse().unwrap());
        let msg = Message {
            method: "POST",
            scheme: "https",
            authority: "api.example.com",
            path: "/v1/orders",
            query: Some("dry_run=1"),
            headers: &headers,
        };
        let secret = STANDARD
            .decode("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
            .unwrap();
        let key = SigningKey::hmac(secret.clone()).unwrap();
        let (input, signature) = sign::sign(
            &key,
            &sign::Signing {
                label: "sig1",
                components: &["@method", "@target-uri", "content-digest", "content-type"],
                keyid: "sig_0193c1a2b3c4d5e6f708192a3b4c5d6e",
                created: 1_767_225_600,
                expires: None,
                nonce: Some("6bU0tq2YkLzE8Q1wJ3aN0g"),
                with_alg: true,
            },
            &msg,
        )
        .unwrap();
        assert_eq!(
            input,
            r#"sig1=("@method" "@target-uri" "content-digest" "content-type");created=1767225600;keyid="sig_0193c1a2b3c4d5e6f708192a3b4c5d6e";nonce="6bU0tq2YkLzE8Q1wJ3aN0g";alg="hmac-sha256""#
        );
        assert_eq!(
            signature,
            "sig1=:BqJlHY2+uYOOkIMgH9jX7Cflo/nt8SbXw+7ala0Iku4=:"
        );
        let signed = fields::parse(&input, &signature).unwrap().remove(0);
        assert_eq!(
            base::of(&signed, &msg).unwrap(),
            "\"@method\": POST\n\"@target-uri\": https://api.example.com/v1/orders?dry_run=1\n\"content-digest\": sha-256=:SqTsJBvyNh+ArgZhJK4lNXo+XGqb5zDvy9gHJLvgICE=:\n\"content-type\": application/json\n\"@signature-params\": (\"@method\" \"@target-uri\" \"content-digest\" \"content-type\");created=1767225600;keyid=\"sig_0193c1a2b3c4d5e6f708192a3b4c5d6e\";nonce=\"6bU0tq2YkLzE8Q1wJ3aN0g\";alg=\"hmac-sha256\""
        );
        let policy = Policy {
            now: 1_767_225_600,
            body: verify::Body::Received(body),
        };
        verify::verify(
            &signed,
            &VerifyingKey::hmac(&secret).unwrap(),
            &msg,
            &policy,
        )
        .unwrap();
    }
}
