//! Signing outgoing requests with RFC 9421 HTTP Message Signatures, as Portcullis verifies them:
//! `@method`, `@target-uri`, and for a body `content-digest` (RFC 9530, sha-256, which this adds) and
//! `content-type`; parameters `created`, `keyid` and a fresh `nonce`, so each request is good once.
//!
//! ```ignore
//! let signer = RequestSigner::hmac("sig_…", &secret_base64)?;
//! let mut req = client.post(url).json(&body).build()?;
//! signer.sign(&mut req)?;
//! client.execute(req).await?;
//! ```
//!
//! Also [`check_content_digest`], for an upstream behind forward auth: Portcullis verified the
//! signature over the `Content-Digest` header and sent it on as `X-Auth-Content-Digest`; the body is
//! the upstream's to check.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderMap, HeaderValue};
use portcullis_core::httpsig::digest::{self, DigestAlg};
use portcullis_core::httpsig::keys::{SigningKey, decode_base64_any};
use portcullis_core::httpsig::sign::{Signing, sign};
use portcullis_core::httpsig::{Message, Reason};

use crate::Error;

/// Signs requests with one key.
#[derive(Debug)]
pub struct RequestSigner {
    key: SigningKey,
    keyid: String,
    label: String,
    extra: Vec<String>,
}

impl RequestSigner {
    /// An `hmac-sha256` key: its `keyid` (`sig_…`) and the secret shown when it was made (base64).
    pub fn hmac(keyid: &str, secret_base64: &str) -> Result<Self, Error> {
        let secret = decode_base64_any(secret_base64.trim())
            .ok_or_else(|| Error::Config("the HMAC secret is not base64".into()))?;
        Self::new(
            keyid,
            SigningKey::hmac(secret).map_err(|e| Error::Config(e.to_string()))?,
        )
    }

    /// An `ed25519` key: its `keyid` and the private key (the 32-byte seed, or PKCS#8 DER).
    pub fn ed25519(keyid: &str, private_key: &[u8]) -> Result<Self, Error> {
        Self::new(
            keyid,
            SigningKey::ed25519(private_key).map_err(|e| Error::Config(e.to_string()))?,
        )
    }

    fn new(keyid: &str, key: SigningKey) -> Result<Self, Error> {
        if keyid.is_empty() || keyid.len() > 128 {
            return Err(Error::Config("keyid must be 1 to 128 characters".into()));
        }
        Ok(Self {
            key,
            keyid: keyid.to_owned(),
            label: "sig1".to_owned(),
            extra: Vec::new(),
        })
    }

    /// Also covers these header fields (lowercase names) when the request has them.
    pub fn covering(mut self, fields: &[&str]) -> Self {
        self.extra = fields.iter().map(|f| f.to_ascii_lowercase()).collect();
        self
    }

    /// Signs a `reqwest` request in place (a streamed body cannot be digested: an error).
    pub fn sign(&self, req: &mut reqwest::Request) -> Result<(), Error> {
        let body = match req.body() {
            None => None,
            Some(b) => Some(
                b.as_bytes()
                    .ok_or_else(|| Error::Config("a streamed body cannot be signed".into()))?
                    .to_vec(),
            ),
        };
        let url = req.url().clone();
        let method = req.method().as_str().to_owned();
        self.sign_parts(&method, &url, req.headers_mut(), body.as_deref())
    }

    /// Signs the parts of any request: adds `Content-Digest` (for a non-empty body),
    /// `Signature-Input` and `Signature` to `headers`.
    pub fn sign_parts(
        &self,
        method: &str,
        url: &reqwest::Url,
        headers: &mut HeaderMap,
        body: Option<&[u8]>,
    ) -> Result<(), Error> {
        let mut components = vec!["@method".to_owned(), "@target-uri".to_owned()];
        if let Some(body) = body.filter(|b| !b.is_empty()) {
            let value = digest::content_digest(DigestAlg::Sha256, body);
            headers.insert(
                "content-digest",
                HeaderValue::from_str(&value).map_err(|e| Error::Config(e.to_string()))?,
            );
            components.push("content-digest".to_owned());
            if headers.contains_key(http::header::CONTENT_TYPE) {
                components.push("content-type".to_owned());
            }
        }
        for f in &self.extra {
            if headers.contains_key(f.as_str()) && !components.contains(f) {
                components.push(f.clone());
            }
        }
        let host = url
            .host_str()
            .ok_or_else(|| Error::Config("the URL has no host".into()))?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let mut nonce = [0u8; 16];
        portcullis_core::secrets::fill_random(&mut nonce)
            .map_err(|_| Error::Config("the system random generator failed".into()))?;
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let names: Vec<&str> = components.iter().map(String::as_str).collect();
        let msg = Message {
            method,
            scheme: url.scheme(),
            authority: &authority,
            path: url.path(),
            query: url.query(),
            headers,
        };
        let (input, signature) = sign(
            &self.key,
            &Signing {
                label: &self.label,
                components: &names,
                keyid: &self.keyid,
                created,
                expires: None,
                nonce: Some(&nonce),
                with_alg: true,
            },
            &msg,
        )
        .map_err(|e| Error::Config(format!("cannot sign this request: {e}")))?;
        for (name, value) in [("signature-input", input), ("signature", signature)] {
            headers.insert(
                name,
                HeaderValue::from_str(&value).map_err(|e| Error::Config(e.to_string()))?,
            );
        }
        Ok(())
    }
}

/// Checks a body against the `Content-Digest` Portcullis verified (`X-Auth-Content-Digest`).
pub fn check_content_digest(content_digest: &str, body: &[u8]) -> Result<(), Reason> {
    digest::verify(content_digest, body)
}

/// The base64 of a new Ed25519 key pair's seed and raw public key, for registering a key.
pub fn generate_ed25519() -> Result<(Vec<u8>, String), Error> {
    let mut seed = vec![0u8; 32];
    portcullis_core::secrets::fill_random(&mut seed)
        .map_err(|_| Error::Config("the system random generator failed".into()))?;
    let key = SigningKey::ed25519(&seed).map_err(|e| Error::Config(e.to_string()))?;
    let public = key
        .ed25519_public_key()
        .ok_or_else(|| Error::Config("not an ed25519 key".into()))?;
    Ok((seed, STANDARD.encode(public)))
}
