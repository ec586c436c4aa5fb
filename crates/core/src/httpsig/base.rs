//! The signature base (RFC 9421 §2.5): one line `"<component id>": <value>` per covered component, in
//! the order covered, then `"@signature-params": <inner list>`, lines joined by `\n` with none after
//! the last. Byte for byte what the signer signed, or no match.

use super::Reason;
use super::components::{ComponentId, Message};
use super::fields::Signed;

/// The base of `components` with `signature_params` over `msg`.
pub fn signature_base(
    components: &[ComponentId],
    signature_params: &str,
    msg: &Message<'_>,
) -> Result<String, Reason> {
    let mut base = String::with_capacity(256);
    for id in components {
        for value in id.values(msg)? {
            base.push_str(&id.serialized);
            base.push_str(": ");
            base.push_str(&value);
            base.push('\n');
        }
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(signature_params);
    Ok(base)
}

/// The base of one parsed signature.
pub fn of(signed: &Signed, msg: &Message<'_>) -> Result<String, Reason> {
    signature_base(&signed.components, &signed.signature_params, msg)
}
