//! OAuth request parameters (RFC 6749 §3.1, §3.2): form-encoded pairs in which a parameter may appear
//! once (a repeated one is refused, never resolved by taking the first or the last), a parameter sent
//! without a value counts as omitted, and only `resource` (RFC 8707) may repeat.

use super::error::{OAuthError, OAuthResult};

/// Parameters that may be repeated.
const REPEATABLE: &[&str] = &["resource"];
/// The most pairs a request may carry.
pub const MAX_PARAMS: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Decodes `application/x-www-form-urlencoded` bytes (a query string or a form body).
    pub fn parse(raw: &[u8]) -> OAuthResult<Self> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(raw)
            .map_err(|_| OAuthError::invalid_request("the parameters are not form-encoded"))?;
        if pairs.len() > MAX_PARAMS {
            return Err(OAuthError::invalid_request(format!(
                "at most {MAX_PARAMS} parameters"
            )));
        }
        Ok(Self { pairs })
    }

    /// The first parameter that appears twice (other than those that may repeat).
    pub fn duplicated(&self) -> Option<&str> {
        self.pairs.iter().enumerate().find_map(|(i, (k, _))| {
            let repeated = !REPEATABLE.contains(&k.as_str())
                && self.pairs.iter().skip(i + 1).any(|(k2, _)| k2 == k);
            repeated.then_some(k.as_str())
        })
    }

    /// Refuses a request in which a parameter appears twice (RFC 6749 §3.1, §3.2).
    pub fn once(&self) -> OAuthResult<()> {
        match self.duplicated() {
            Some(name) => Err(OAuthError::invalid_request(format!(
                "{name} is given more than once"
            ))),
            None => Ok(()),
        }
    }

    /// Whether `name` appears more than once.
    pub fn repeats(&self, name: &str) -> bool {
        self.pairs.iter().filter(|(k, _)| k == name).count() > 1
    }

    /// The value of `name`, `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every non-empty value of a repeatable parameter.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `name`, at most `max` bytes.
    pub fn bounded(&self, name: &str, max: usize) -> OAuthResult<Option<&str>> {
        match self.get(name) {
            Some(v) if v.len() > max => Err(OAuthError::invalid_request(format!(
                "{name} is at most {max} bytes"
            ))),
            other => Ok(other),
        }
    }

    /// Encodes the pairs but those named in `drop`, with `extra` appended.
    pub fn encode_without(&self, drop: &[&str], extra: &[(&str, String)]) -> String {
        let mut out: Vec<(&str, &str)> = self
            .pairs
            .iter()
            .filter(|(k, _)| !drop.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        out.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        serde_urlencoded::to_string(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_are_found_empty_ones_are_absent_and_resource_may_repeat() {
        let p = Params::parse(b"a=1&b=&resource=x&resource=y&c=3").unwrap();
        assert_eq!(p.duplicated(), None);
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), None, "a parameter without a value is omitted");
        assert_eq!(p.all("resource"), ["x", "y"]);
        let p = Params::parse(b"a=1&c=3&a=2").unwrap();
        assert_eq!(p.duplicated(), Some("a"));
        assert!(p.bounded("c", 0).is_err());
        assert!(Params::parse("x=1&".repeat(65).as_bytes()).is_err());
    }
}
