//! `Content-Digest` (RFC 9530 §2): a dictionary of algorithm → byte sequence, the digest of the content
//! as sent. We check `sha-256` and `sha-512` (the two of §5 that are not deprecated) and ignore
//! others; a field with neither is refused, since it would prove nothing.

use aws_lc_rs::digest::{SHA256, SHA512, digest};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sfv::{BareItem, Dictionary, ListEntry, Parser};
use subtle::ConstantTimeEq;

use super::{MAX_FIELD_BYTES, Reason};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlg {
    Sha256,
    Sha512,
}

impl DigestAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha-256",
            Self::Sha512 => "sha-512",
        }
    }

    fn digest(self, body: &[u8]) -> Vec<u8> {
        let alg = match self {
            Self::Sha256 => &SHA256,
            Self::Sha512 => &SHA512,
        };
        digest(alg, body).as_ref().to_vec()
    }
}

/// The `Content-Digest` value for `body`: `sha-256=:…:`.
pub fn content_digest(alg: DigestAlg, body: &[u8]) -> String {
    format!("{}=:{}:", alg.as_str(), STANDARD.encode(alg.digest(body)))
}

/// The digests a field claims, in order; algorithms we do not check are left out.
pub fn parse(field: &str) -> Result<Vec<(DigestAlg, Vec<u8>)>, Reason> {
    if field.len() > MAX_FIELD_BYTES {
        return Err(Reason::FieldTooLarge("content-digest"));
    }
    let dict: Dictionary = Parser::new(field)
        .parse()
        .map_err(|_| Reason::MalformedDigest)?;
    let mut out = Vec::new();
    for (name, entry) in &dict {
        let ListEntry::Item(item) = entry else {
            return Err(Reason::MalformedDigest);
        };
        let BareItem::ByteSequence(bytes) = &item.bare_item else {
            return Err(Reason::MalformedDigest);
        };
        let alg = match name.as_str() {
            "sha-256" => DigestAlg::Sha256,
            "sha-512" => DigestAlg::Sha512,
            _ => continue,
        };
        out.push((alg, bytes.clone()));
    }
    if out.is_empty() {
        return Err(Reason::UnsupportedDigest);
    }
    Ok(out)
}

/// Does `field` match `body`? Every digest we check must match (one wrong digest beside a right one
/// is a tampered message, not a choice).
pub fn verify(field: &str, body: &[u8]) -> Result<(), Reason> {
    for (alg, claimed) in parse(field)? {
        if !bool::from(alg.digest(body).ct_eq(&claimed)) {
            return Err(Reason::DigestMismatch);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BODY: &[u8] = b"{\"hello\": \"world\"}\n";

    #[test]
    fn rfc_9530_examples() {
        // RFC 9530 §2 and Appendix B.1: the content `{"hello": "world"}` followed by a newline.
        let sha256 = "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:";
        let sha512 = "sha-512=:YMAam51Jz/jOATT6/zvHrLVgOYTGFy1d6GJiOHTohq4yP+pgk4vf2aCsyRZOtw8MjkM7iw7yZ/WkppmM44T3qg==:";
        assert_eq!(content_digest(DigestAlg::Sha256, BODY), sha256);
        assert_eq!(content_digest(DigestAlg::Sha512, BODY), sha512);
        verify(sha256, BODY).unwrap();
        verify(&format!("{sha256}, {sha512}"), BODY).unwrap();
        assert_eq!(
            verify(sha256, b"{\"hello\": \"world\"}"),
            Err(Reason::DigestMismatch)
        );
    }

    #[test]
    fn fields_that_prove_nothing_are_refused() {
        assert_eq!(verify("md5=:AAAA:", BODY), Err(Reason::UnsupportedDigest));
        assert_eq!(verify("sha-256=abc", BODY), Err(Reason::MalformedDigest));
        assert_eq!(verify("sha-256=:", BODY), Err(Reason::MalformedDigest));
        let right = content_digest(DigestAlg::Sha256, BODY);
        let wrong = content_digest(DigestAlg::Sha512, b"other");
        assert_eq!(
            verify(&format!("{right}, {wrong}"), BODY),
            Err(Reason::DigestMismatch)
        );
    }

    proptest! {
        #[test]
        fn any_field_is_answered(field in "\\PC{0,200}", body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = verify(&field, &body);
        }

        #[test]
        fn a_digest_of_the_body_verifies(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            prop_assert!(verify(&content_digest(DigestAlg::Sha256, &body), &body).is_ok());
            prop_assert!(verify(&content_digest(DigestAlg::Sha512, &body), &body).is_ok());
        }
    }
}
