//! `Signature-Input` and `Signature` (RFC 9421 §4.1, §4.2): RFC 8941 dictionaries keyed by label, the
//! first of inner lists of component identifiers with the signature parameters, the second of byte
//! sequences. Parsed with `sfv`; every limit ([`MAX_FIELD_BYTES`], [`MAX_SIGNATURES`],
//! [`MAX_COMPONENTS`]) is checked before anything else is done with them.

use http::HeaderMap;
use sfv::{BareItem, Dictionary, FieldType, InnerList, List, ListEntry, Parser};

use super::components::ComponentId;
use super::{MAX_COMPONENTS, MAX_FIELD_BYTES, MAX_SIGNATURES, Reason};

/// The signature parameters (§2.3) we act on; others are kept in the serialization and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pub created: Option<i64>,
    pub expires: Option<i64>,
    pub nonce: Option<String>,
    pub alg: Option<String>,
    pub keyid: Option<String>,
    pub tag: Option<String>,
}

/// One signature of a request: its label, what it covers, its parameters and its bytes.
#[derive(Debug, Clone)]
pub struct Signed {
    pub label: String,
    pub components: Vec<ComponentId>,
    pub params: Params,
    /// The value of `@signature-params`: the inner list with its parameters, re-serialized (§2.3).
    pub signature_params: String,
    pub signature: Vec<u8>,
}

/// The field's lines joined as one value (RFC 9110 §5.3), refused when over the limit.
fn joined(headers: &HeaderMap, name: &'static str) -> Result<Option<String>, Reason> {
    let mut out = String::new();
    for line in headers.get_all(name) {
        if out.len() + line.len() + 2 > MAX_FIELD_BYTES {
            return Err(Reason::FieldTooLarge(name));
        }
        let text = line.to_str().map_err(|_| match name {
            "signature-input" => Reason::MalformedSignatureInput,
            _ => Reason::MalformedSignature,
        })?;
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(text);
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Every signature of the request, in `Signature-Input` order, each with its bytes from `Signature`.
/// Labels of one field without a member in the other are skipped (§3.2 step 1 picks by label); a
/// request with none left is [`Reason::MissingSignature`].
pub fn signatures(headers: &HeaderMap) -> Result<Vec<Signed>, Reason> {
    let input = joined(headers, "signature-input")?;
    let signature = joined(headers, "signature")?;
    let (Some(input), Some(signature)) = (input, signature) else {
        return Err(Reason::MissingSignature);
    };
    parse(&input, &signature)
}

/// [`signatures`] over the two field values.
pub fn parse(input: &str, signature: &str) -> Result<Vec<Signed>, Reason> {
    if input.len() > MAX_FIELD_BYTES {
        return Err(Reason::FieldTooLarge("signature-input"));
    }
    if signature.len() > MAX_FIELD_BYTES {
        return Err(Reason::FieldTooLarge("signature"));
    }
    let inputs: Dictionary = Parser::new(input)
        .parse()
        .map_err(|_| Reason::MalformedSignatureInput)?;
    let signatures: Dictionary = Parser::new(signature)
        .parse()
        .map_err(|_| Reason::MalformedSignature)?;
    if inputs.len() > MAX_SIGNATURES {
        return Err(Reason::MalformedSignatureInput);
    }
    if signatures.len() > MAX_SIGNATURES {
        return Err(Reason::MalformedSignature);
    }
    let mut out = Vec::new();
    for (label, entry) in &inputs {
        let ListEntry::InnerList(list) = entry else {
            return Err(Reason::MalformedSignatureInput);
        };
        let Some(sig) = signatures.get(label) else {
            continue;
        };
        let ListEntry::Item(sig) = sig else {
            return Err(Reason::MalformedSignature);
        };
        let BareItem::ByteSequence(bytes) = &sig.bare_item else {
            return Err(Reason::MalformedSignature);
        };
        out.push(Signed {
            label: label.as_str().to_owned(),
            components: components(list)?,
            params: params(list)?,
            signature_params: serialize_inner_list(list)?,
            signature: bytes.clone(),
        });
    }
    if out.is_empty() {
        return Err(Reason::MissingSignature);
    }
    Ok(out)
}

fn components(list: &InnerList) -> Result<Vec<ComponentId>, Reason> {
    if list.items.len() > MAX_COMPONENTS {
        return Err(Reason::MalformedSignatureInput);
    }
    let mut out: Vec<ComponentId> = Vec::with_capacity(list.items.len());
    for item in &list.items {
        let id = ComponentId::from_item(item)?;
        if out.iter().any(|seen| seen.same_as(&id)) {
            return Err(Reason::DuplicateComponent(id.serialized));
        }
        out.push(id);
    }
    Ok(out)
}

fn params(list: &InnerList) -> Result<Params, Reason> {
    let mut p = Params::default();
    for (name, value) in &list.params {
        let name = name.as_str();
        let int = |n: &'static str| match value {
            BareItem::Integer(i) => Ok(i64::from(*i)),
            _ => Err(Reason::InvalidParam(n)),
        };
        let string = |n: &'static str| match value {
            BareItem::String(s) => Ok(s.as_str().to_owned()),
            _ => Err(Reason::InvalidParam(n)),
        };
        match name {
            "created" => p.created = Some(int("created")?),
            "expires" => p.expires = Some(int("expires")?),
            "nonce" => p.nonce = Some(string("nonce")?),
            "alg" => p.alg = Some(string("alg")?),
            "keyid" => p.keyid = Some(string("keyid")?),
            "tag" => p.tag = Some(string("tag")?),
            _ => {}
        }
    }
    Ok(p)
}

fn serialize_inner_list(list: &InnerList) -> Result<String, Reason> {
    let one: List = vec![ListEntry::InnerList(list.clone())];
    one.serialize().ok_or(Reason::MalformedSignatureInput)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_signature_is_read_with_its_parameters() {
        let sigs = parse(
            r#"sig1=("@method" "@authority" "content-digest";sf);created=1618884473;keyid="k1";nonce="n";alg="ed25519";expires=1618884773;x=1"#,
            "sig1=:AAEC:",
        )
        .unwrap();
        let s = &sigs[0];
        assert_eq!(s.label, "sig1");
        assert_eq!(s.components.len(), 3);
        assert_eq!(s.params.created, Some(1_618_884_473));
        assert_eq!(s.params.expires, Some(1_618_884_773));
        assert_eq!(s.params.keyid.as_deref(), Some("k1"));
        assert_eq!(s.params.nonce.as_deref(), Some("n"));
        assert_eq!(s.params.alg.as_deref(), Some("ed25519"));
        assert_eq!(s.signature, [0, 1, 2]);
        assert_eq!(
            s.signature_params,
            r#"("@method" "@authority" "content-digest";sf);created=1618884473;keyid="k1";nonce="n";alg="ed25519";expires=1618884773;x=1"#
        );
    }

    #[test]
    fn malformed_fields_are_named() {
        for (input, sig, reason) in [
            ("sig1=(", "sig1=:AA==:", "malformed_signature_input"),
            ("sig1=\"x\"", "sig1=:AA==:", "malformed_signature_input"),
            ("sig1=(\"@method\")", "sig1=(a)", "malformed_signature"),
            ("sig1=(\"@method\")", "sig1=abc", "malformed_signature"),
            ("sig1=(\"@method\")", "sig2=:AA==:", "missing_signature"),
            (
                "sig1=(\"@method\" \"@method\")",
                "sig1=:AA==:",
                "duplicate_component:\"@method\"",
            ),
            (
                "sig1=(\"a\";sf \"a\";sf)",
                "sig1=:AA==:",
                "duplicate_component:\"a\";sf",
            ),
            (
                "sig1=(\"@method\");created=\"now\"",
                "sig1=:AA==:",
                "invalid_param:created",
            ),
            (
                "sig1=(\"@method\");keyid=k",
                "sig1=:AA==:",
                "invalid_param:keyid",
            ),
            ("sig1=(\"@nope\")", "sig1=:AA==:", "unknown_component:@nope"),
        ] {
            assert_eq!(
                parse(input, sig).unwrap_err().to_string(),
                reason,
                "{input} / {sig}"
            );
        }
        let big = format!("sig1=(\"@method\");keyid=\"{}\"", "a".repeat(10 * 1024));
        assert_eq!(
            parse(&big, "sig1=:AA==:").unwrap_err().to_string(),
            "too_large:signature-input"
        );
    }

    proptest! {
        /// Whatever the two fields hold, parsing answers without panicking.
        #[test]
        fn any_field_values_are_answered(input in "\\PC{0,200}", sig in "\\PC{0,120}") {
            let _ = parse(&input, &sig);
        }

        /// Structured-looking input (the alphabet of the grammar) reaches deeper paths, still without
        /// panicking.
        #[test]
        fn structured_looking_values_are_answered(
            input in "[a-z0-9@\";=(): ,*.\\-]{0,160}",
            sig in "[a-z0-9=:;, +/]{0,80}",
        ) {
            let _ = parse(&input, &sig);
        }
    }
}
