//! Signing (RFC 9421 §3.1), for `portcullis-client` and the tests: the same components, parameters and
//! base as verification, so what we sign is what we verify.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sfv::{Dictionary, Parser};

use super::components::Message;
use super::keys::SigningKey;
use super::{Reason, base, fields};

/// What to sign and with which parameters.
#[derive(Debug, Clone)]
pub struct Signing<'a> {
    /// The dictionary label, e.g. `sig1`.
    pub label: &'a str,
    /// Component identifiers: plain names (`@method`, `content-digest`) or full serialized items
    /// (`"@query-param";name="id"`).
    pub components: &'a [&'a str],
    pub keyid: &'a str,
    /// Unix seconds.
    pub created: i64,
    pub expires: Option<i64>,
    pub nonce: Option<&'a str>,
    /// Also send the `alg` parameter (optional in RFC 9421; the verifier's key decides anyway).
    pub with_alg: bool,
}

/// The `Signature-Input` and `Signature` field values for `msg`.
pub fn sign(
    key: &SigningKey,
    signing: &Signing<'_>,
    msg: &Message<'_>,
) -> Result<(String, String), Reason> {
    let items: Vec<String> = signing
        .components
        .iter()
        .map(|c| {
            if c.starts_with('"') {
                (*c).to_owned()
            } else {
                format!("\"{c}\"")
            }
        })
        .collect();
    let mut input = format!(
        "{}=({});created={};keyid={}",
        signing.label,
        items.join(" "),
        signing.created,
        quoted(signing.keyid)
    );
    if let Some(expires) = signing.expires {
        input.push_str(&format!(";expires={expires}"));
    }
    if let Some(nonce) = signing.nonce {
        input.push_str(&format!(";nonce={}", quoted(nonce)));
    }
    if signing.with_alg {
        input.push_str(&format!(";alg=\"{}\"", key.algorithm().as_str()));
    }
    // Parse what we wrote, so that the base is built from exactly what the verifier will read.
    let _: Dictionary = Parser::new(&input)
        .parse()
        .map_err(|_| Reason::MalformedSignatureInput)?;
    let placeholder = format!("{}=:AA==:", signing.label);
    let parsed = fields::parse(&input, &placeholder)?;
    let signed = parsed.first().ok_or(Reason::MalformedSignatureInput)?;
    let base = base::of(signed, msg)?;
    let signature = key.sign(base.as_bytes());
    Ok((
        input,
        format!("{}=:{}:", signing.label, STANDARD.encode(signature)),
    ))
}

/// An RFC 8941 string (quotes and backslashes escaped).
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}
