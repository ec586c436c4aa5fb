//! Covered components (RFC 9421 §2): HTTP fields, with the `sf`, `key` and `bs` parameters of §2.1, and
//! the derived components of §2.2 for requests. A [`ComponentId`] is parsed from one item of a
//! `Signature-Input` inner list; [`ComponentId::values`] gives its value(s) in a [`Message`].

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use sfv::{BareItem, Dictionary, FieldType, Item, List, ListEntry, Parser};

use super::Reason;

/// The request as the signer saw it: method, target URI in parts, header fields.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `host[:port]` as the client addressed it.
    pub authority: &'a str,
    /// The absolute path, percent-encoded as sent.
    pub path: &'a str,
    /// The query without `?`, percent-encoded as sent.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl Message<'_> {
    /// `@authority` (§2.2.3): lowercased, the scheme's default port removed.
    pub fn normalized_authority(&self) -> String {
        let lower = self.authority.to_ascii_lowercase();
        let default = match self.scheme.to_ascii_lowercase().as_str() {
            "http" => Some(":80"),
            "https" => Some(":443"),
            _ => None,
        };
        match default.and_then(|d| lower.strip_suffix(d)) {
            Some(bare) if !bare.ends_with(':') => bare.to_owned(),
            _ => lower,
        }
    }

    fn path_or_root(&self) -> &str {
        if self.path.is_empty() { "/" } else { self.path }
    }

    /// `@target-uri` (§2.2.2): scheme, normalized authority, path and query.
    pub fn target_uri(&self) -> String {
        let mut uri = format!(
            "{}://{}{}",
            self.scheme.to_ascii_lowercase(),
            self.normalized_authority(),
            self.path_or_root()
        );
        if let Some(q) = self.query {
            uri.push('?');
            uri.push_str(q);
        }
        uri
    }
}

/// The derived components of a request this version knows (§2.2); `@status` is a response's.
pub const DERIVED: &[&str] = &[
    "@method",
    "@target-uri",
    "@authority",
    "@scheme",
    "@request-target",
    "@path",
    "@query",
    "@query-param",
];

/// Fields whose structured type we know, for the `sf` parameter (§2.1.1): a field is re-serialized
/// only when its type is known, because the same text parses differently as a list or a dictionary.
const DICTIONARY_FIELDS: &[&str] = &[
    "signature-input",
    "signature",
    "content-digest",
    "repr-digest",
    "want-content-digest",
    "want-repr-digest",
    "accept-signature",
    "priority",
];
const LIST_FIELDS: &[&str] = &["cache-status", "proxy-status", "accept-ch"];

/// One covered component: its name and parameters as the signer listed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentId {
    /// The lowercase field name, or the derived component's `@name`.
    pub name: String,
    /// `sf`: re-serialize the structured field (§2.1.1).
    pub sf: bool,
    /// `key`: the one dictionary member (§2.1.2).
    pub key: Option<String>,
    /// `bs`: each field line as a byte sequence (§2.1.3).
    pub bs: bool,
    /// `name` of `@query-param` (§2.2.8), percent-encoded.
    pub query_name: Option<String>,
    /// The identifier as it appears in the signature base: the item re-serialized.
    pub serialized: String,
}

impl ComponentId {
    /// Reads one item of a covered-components inner list.
    pub fn from_item(item: &Item) -> Result<Self, Reason> {
        let BareItem::String(name) = &item.bare_item else {
            return Err(Reason::MalformedSignatureInput);
        };
        let name = name.as_str().to_owned();
        let serialized = item.serialize();
        let invalid = || Reason::InvalidComponent(serialized.clone());
        // §2.1: field names in component identifiers are lowercase; anything else cannot match.
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid());
        }
        let mut id = Self {
            name,
            sf: false,
            key: None,
            bs: false,
            query_name: None,
            serialized: serialized.clone(),
        };
        let derived = id.name.starts_with('@');
        if derived && !DERIVED.contains(&id.name.as_str()) {
            return Err(Reason::UnknownComponent(id.name));
        }
        for (param, value) in &item.params {
            match (param.as_str(), value, derived) {
                ("sf", BareItem::Boolean(true), false) => id.sf = true,
                ("bs", BareItem::Boolean(true), false) => id.bs = true,
                ("key", BareItem::String(k), false) => id.key = Some(k.as_str().to_owned()),
                ("name", BareItem::String(n), true) if id.name == "@query-param" => {
                    id.query_name = Some(n.as_str().to_owned());
                }
                // `req` (a request's component in a response's signature) and `tr` (trailers) do not
                // apply to a request we verify; anything else is unknown. Guessing would sign
                // something other than what the signer meant.
                _ => return Err(invalid()),
            }
        }
        // §2.1.3: `bs` cannot be combined with `sf` or `key`.
        let shapes = usize::from(id.sf) + usize::from(id.key.is_some()) + usize::from(id.bs);
        if shapes > 1 || (id.name == "@query-param" && id.query_name.is_none()) {
            return Err(invalid());
        }
        Ok(id)
    }

    /// Two identifiers that name the same thing (parameters in any order): §2.5 forbids covering one
    /// twice.
    pub fn same_as(&self, other: &Self) -> bool {
        self.name == other.name
            && self.sf == other.sf
            && self.key == other.key
            && self.bs == other.bs
            && self.query_name == other.query_name
    }

    /// The component's value(s) in `msg`: one, except `@query-param` whose name occurs several times.
    pub fn values(&self, msg: &Message<'_>) -> Result<Vec<String>, Reason> {
        let value = match self.name.as_str() {
            "@method" => msg.method.to_owned(),
            "@target-uri" => msg.target_uri(),
            "@authority" => msg.normalized_authority(),
            "@scheme" => msg.scheme.to_ascii_lowercase(),
            "@request-target" => match msg.query {
                Some(q) => format!("{}?{q}", msg.path_or_root()),
                None => msg.path_or_root().to_owned(),
            },
            "@path" => msg.path_or_root().to_owned(),
            "@query" => format!("?{}", msg.query.unwrap_or("")),
            "@query-param" => return self.query_param(msg),
            _ => self.field(msg.headers)?,
        };
        Ok(vec![value])
    }

    fn missing(&self) -> Reason {
        Reason::MissingComponent(self.name.clone())
    }

    /// §2.2.8: every occurrence of the named parameter, names and values decoded as
    /// `application/x-www-form-urlencoded` and re-encoded with spaces as `%20`.
    fn query_param(&self, msg: &Message<'_>) -> Result<Vec<String>, Reason> {
        let wanted = self.query_name.as_deref().unwrap_or_default();
        let values: Vec<String> = url::form_urlencoded::parse(msg.query.unwrap_or("").as_bytes())
            .filter(|(name, _)| encode(name) == wanted)
            .map(|(_, value)| encode(&value))
            .collect();
        if values.is_empty() {
            return Err(Reason::MissingComponent(self.serialized.clone()));
        }
        Ok(values)
    }

    /// §2.1: the field's lines, each trimmed, joined with `", "`; then shaped by `sf`, `key` or `bs`.
    fn field(&self, headers: &HeaderMap) -> Result<String, Reason> {
        let lines: Vec<&[u8]> = headers
            .get_all(self.name.as_str())
            .iter()
            .map(|v| v.as_bytes().trim_ascii())
            .collect();
        if lines.is_empty() {
            return Err(self.missing());
        }
        let invalid = || Reason::InvalidComponent(self.serialized.clone());
        if self.bs {
            let encoded: Vec<String> = lines
                .iter()
                .map(|line| format!(":{}:", STANDARD.encode(line)))
                .collect();
            return Ok(encoded.join(", "));
        }
        // Values outside visible ASCII (obs-text) are not signed as text: the signer must use `bs`.
        let text: Vec<&str> = lines
            .iter()
            .map(|line| {
                std::str::from_utf8(line)
                    .ok()
                    .filter(|s| s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
            })
            .collect::<Option<_>>()
            .ok_or_else(invalid)?;
        let joined = text.join(", ");
        if let Some(key) = &self.key {
            let dict: Dictionary = Parser::new(&joined).parse().map_err(|_| invalid())?;
            let member = dict
                .iter()
                .rev()
                .find(|(k, _)| k.as_str() == key)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| Reason::MissingComponent(self.serialized.clone()))?;
            return serialize_member(member).ok_or_else(invalid);
        }
        if self.sf {
            let name = self.name.as_str();
            let reserialized = if DICTIONARY_FIELDS.contains(&name) {
                let dict: Dictionary = Parser::new(&joined).parse().map_err(|_| invalid())?;
                dict.serialize()
            } else if LIST_FIELDS.contains(&name) {
                let list: List = Parser::new(&joined).parse().map_err(|_| invalid())?;
                list.serialize()
            } else {
                None
            };
            return reserialized.ok_or_else(invalid);
        }
        Ok(joined)
    }
}

/// One dictionary member's value, serialized on its own (an item or an inner list, with parameters).
fn serialize_member(member: ListEntry) -> Option<String> {
    let list: List = vec![member];
    list.serialize()
}

/// `application/x-www-form-urlencoded` percent-encoding with spaces as `%20` (§2.2.8).
fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(text: &str) -> Item {
        Parser::new(text).parse().unwrap()
    }

    #[test]
    fn query_params_follow_the_rfc_example() {
        // RFC 9421 §2.2.8's second example.
        let headers = HeaderMap::new();
        let msg = Message {
            method: "GET",
            scheme: "https",
            authority: "example.com",
            path: "/parameters",
            query: Some(
                "var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something",
            ),
            headers: &headers,
        };
        let value = |id: &str| {
            ComponentId::from_item(&item(id))
                .unwrap()
                .values(&msg)
                .unwrap()
        };
        assert_eq!(
            value(r#""@query-param";name="var""#),
            ["this%20is%20a%20big%0Amultiline%20value"]
        );
        assert_eq!(
            value(r#""@query-param";name="bar""#),
            ["with%20plus%20whitespace"]
        );
        assert_eq!(
            value(r#""@query-param";name="fa%C3%A7ade%22%3A%20""#),
            ["something"]
        );
    }

    #[test]
    fn derived_components_of_a_request() {
        let headers = HeaderMap::new();
        let msg = Message {
            method: "POST",
            scheme: "HTTPS",
            authority: "WWW.Example.com:443",
            path: "/path",
            query: Some("param=value"),
            headers: &headers,
        };
        let value = |id: &str| {
            ComponentId::from_item(&item(id))
                .unwrap()
                .values(&msg)
                .unwrap()
        };
        assert_eq!(
            value(r#""@target-uri""#),
            ["https://www.example.com/path?param=value"]
        );
        assert_eq!(value(r#""@authority""#), ["www.example.com"]);
        assert_eq!(value(r#""@scheme""#), ["https"]);
        assert_eq!(value(r#""@request-target""#), ["/path?param=value"]);
        assert_eq!(value(r#""@query""#), ["?param=value"]);
        let none = Message {
            query: None,
            path: "",
            ..msg
        };
        assert_eq!(
            ComponentId::from_item(&item(r#""@query""#))
                .unwrap()
                .values(&none)
                .unwrap(),
            ["?"]
        );
        assert_eq!(
            ComponentId::from_item(&item(r#""@path""#))
                .unwrap()
                .values(&none)
                .unwrap(),
            ["/"]
        );
    }

    #[test]
    fn fields_with_sf_key_and_bs() {
        let mut headers = HeaderMap::new();
        headers.append(
            "example-dict",
            " a=1,    b=2;x=1;y=2,   c=(a   b   c)".parse().unwrap(),
        );
        headers.append("example-header", "value, with, lots".parse().unwrap());
        headers.append("example-header", "of, commas".parse().unwrap());
        let msg = Message {
            method: "GET",
            scheme: "https",
            authority: "example.com",
            path: "/",
            query: None,
            headers: &headers,
        };
        let value = |id: &str| ComponentId::from_item(&item(id)).unwrap().values(&msg);
        // RFC 9421 §2.1.2 and §2.1.3.
        assert_eq!(value(r#""example-dict";key="a""#).unwrap(), ["1"]);
        assert_eq!(value(r#""example-dict";key="b""#).unwrap(), ["2;x=1;y=2"]);
        assert_eq!(value(r#""example-dict";key="c""#).unwrap(), ["(a b c)"]);
        assert_eq!(
            value(r#""example-dict""#).unwrap(),
            ["a=1,    b=2;x=1;y=2,   c=(a   b   c)"]
        );
        assert_eq!(
            value(r#""example-header""#).unwrap(),
            ["value, with, lots, of, commas"]
        );
        assert_eq!(
            value(r#""example-header";bs"#).unwrap(),
            [":dmFsdWUsIHdpdGgsIGxvdHM=:, :b2YsIGNvbW1hcw==:"]
        );
        // `sf` on a field whose type we do not know is refused rather than guessed.
        assert!(matches!(
            value(r#""example-dict";sf"#),
            Err(Reason::InvalidComponent(_))
        ));
        assert!(matches!(
            value(r#""example-dict";key="z""#),
            Err(Reason::MissingComponent(_))
        ));
        assert!(matches!(value(r#""absent""#), Err(Reason::MissingComponent(n)) if n == "absent"));
    }

    #[test]
    fn bad_identifiers_are_named() {
        for (id, reason) in [
            (r#""@foo""#, "unknown_component:@foo"),
            (r#""@status""#, "unknown_component:@status"),
            (r#""Content-Type""#, r#"invalid_component:"Content-Type""#),
            (r#""date";req"#, r#"invalid_component:"date";req"#),
            (r#""date";tr"#, r#"invalid_component:"date";tr"#),
            (r#""date";sf;bs"#, r#"invalid_component:"date";sf;bs"#),
            (r#""@query-param""#, r#"invalid_component:"@query-param""#),
            (
                r#""@method";name="x""#,
                r#"invalid_component:"@method";name="x""#,
            ),
            ("date", "malformed_signature_input"),
        ] {
            assert_eq!(
                ComponentId::from_item(&item(id)).unwrap_err().to_string(),
                reason,
                "{id}"
            );
        }
    }

    #[test]
    fn non_ascii_values_need_bs() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-name",
            http::HeaderValue::from_bytes("Grüße".as_bytes()).unwrap(),
        );
        let msg = Message {
            method: "GET",
            scheme: "https",
            authority: "example.com",
            path: "/",
            query: None,
            headers: &headers,
        };
        let plain = ComponentId::from_item(&item(r#""x-name""#)).unwrap();
        assert_eq!(
            plain.values(&msg).unwrap_err().to_string(),
            r#"invalid_component:"x-name""#
        );
        let bs = ComponentId::from_item(&item(r#""x-name";bs"#)).unwrap();
        assert_eq!(bs.values(&msg).unwrap(), [":R3LDvMOfZQ==:"]);
    }
}
