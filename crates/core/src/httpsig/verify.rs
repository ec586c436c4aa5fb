//! The check of one signed request (RFC 9421 §3.2), in the order that answers each request with its
//! most precise [`Reason`]: the parameters we require (`keyid`, `created`), the time window, the
//! components we require, then — with the key the server found for `keyid` — the algorithm, the
//! signature over the base, and the body against `Content-Digest`.
//!
//! What must be covered (API.md): `@method`; `@target-uri`, or `@authority` with `@path` and `@query`
//! (or `@request-target`); and `content-digest` whenever there is a body. Without them a signature
//! could be lifted onto another method, host, path or body.

use aws_lc_rs::digest::{SHA256, digest};

use super::components::Message;
use super::digest as content_digest;
use super::fields::Signed;
use super::keys::{Algorithm, VerifyingKey};
use super::{MAX_AGE_S, MAX_SKEW_S, Reason, base};

/// The body of the request being verified.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// The body as received (empty when there is none).
    Received(&'a [u8]),
    /// A gateway asks without the body (forward auth): `content-digest`, when covered, is verified as
    /// part of the signature and handed back for the upstream to check against the body.
    /// `expected`: the request may have one (its method carries content), so the digest is required.
    NotSeen { expected: bool },
}

/// What the check is held to.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// Our clock, in Unix seconds.
    pub now: i64,
    pub body: Body<'a>,
}

/// A signature that verified.
#[derive(Debug, Clone)]
pub struct Verified {
    pub label: String,
    pub keyid: String,
    pub created: i64,
    pub nonce: Option<String>,
    /// The covered `Content-Digest`, when the body was not seen: the upstream checks it.
    pub content_digest: Option<String>,
    /// Until when (Unix seconds) the replay key must be remembered: after that the signature is
    /// expired anyway.
    pub remember_until: i64,
    replay: Vec<u8>,
}

impl Verified {
    /// What identifies this use for replay protection, within its key: the nonce, or without one the
    /// signature's own bytes (hashed), so the same signed request is good once either way.
    pub fn replay_key(&self) -> &[u8] {
        &self.replay
    }
}

/// A signature that passed [`precheck`]: what [`check`] takes, so the key's checks never run
/// without the others, and none runs twice.
#[derive(Debug, Clone, Copy)]
pub struct Prechecked<'s> {
    signed: &'s Signed,
    keyid: &'s str,
    created: i64,
}

impl<'s> Prechecked<'s> {
    /// The `keyid` to look the key up by.
    pub fn keyid(&self) -> &'s str {
        self.keyid
    }
}

/// The checks that need no key: the parameters, the time window, the components we require.
pub fn precheck<'s>(signed: &'s Signed, policy: &Policy<'_>) -> Result<Prechecked<'s>, Reason> {
    let keyid = signed
        .params
        .keyid
        .as_deref()
        .ok_or(Reason::MissingParam("keyid"))?;
    let created = signed
        .params
        .created
        .ok_or(Reason::MissingParam("created"))?;
    if created > policy.now.saturating_add(MAX_SKEW_S) {
        return Err(Reason::Future);
    }
    if created < policy.now.saturating_sub(MAX_AGE_S)
        || signed.params.expires.is_some_and(|e| e < policy.now)
    {
        return Err(Reason::Expired);
    }
    let covers = |name: &str| signed.components.iter().any(|c| c.name == name);
    if !covers("@method") {
        return Err(Reason::MissingComponent("@method".into()));
    }
    if !covers("@target-uri") {
        let missing = if !covers("@authority") {
            Some("@target-uri")
        } else if covers("@request-target") {
            None
        } else if !covers("@path") {
            Some("@path")
        } else if !covers("@query") {
            Some("@query")
        } else {
            None
        };
        if let Some(missing) = missing {
            return Err(Reason::MissingComponent(missing.into()));
        }
    }
    let body_expected = match policy.body {
        Body::Received(body) => !body.is_empty(),
        Body::NotSeen { expected } => expected,
    };
    if body_expected && !signed.components.iter().any(|c| c.name == "content-digest") {
        return Err(Reason::MissingComponent("content-digest".into()));
    }
    Ok(Prechecked {
        signed,
        keyid,
        created,
    })
}

/// [`precheck`], then [`check`] with `key`.
pub fn verify(
    signed: &Signed,
    key: &VerifyingKey,
    msg: &Message<'_>,
    policy: &Policy<'_>,
) -> Result<Verified, Reason> {
    check(precheck(signed, policy)?, key, msg, policy)
}

/// The checks with the key: algorithm, signature, digest.
pub fn check(
    pre: Prechecked<'_>,
    key: &VerifyingKey,
    msg: &Message<'_>,
    policy: &Policy<'_>,
) -> Result<Verified, Reason> {
    let Prechecked {
        signed,
        keyid,
        created,
    } = pre;
    if let Some(alg) = &signed.params.alg
        && Algorithm::parse(alg) != Some(key.algorithm())
    {
        return Err(Reason::AlgMismatch);
    }
    let base = base::of(signed, msg)?;
    if !key.verify(base.as_bytes(), &signed.signature) {
        return Err(Reason::BadSignature);
    }
    let covered_digest = signed.components.iter().any(|c| c.name == "content-digest");
    let mut handed_on = None;
    if covered_digest {
        let field = joined_field(msg, "content-digest")
            .ok_or_else(|| Reason::MissingComponent("content-digest".into()))?;
        match policy.body {
            Body::Received(body) => content_digest::verify(&field, body)?,
            Body::NotSeen { .. } => {
                content_digest::parse(&field)?;
                handed_on = Some(field);
            }
        }
    }
    let replay = match &signed.params.nonce {
        Some(nonce) => [b"n:".as_slice(), nonce.as_bytes()].concat(),
        None => [
            b"s:".as_slice(),
            digest(&SHA256, &signed.signature).as_ref(),
        ]
        .concat(),
    };
    Ok(Verified {
        label: signed.label.clone(),
        keyid: keyid.to_owned(),
        created,
        nonce: signed.params.nonce.clone(),
        content_digest: handed_on,
        remember_until: created.saturating_add(MAX_AGE_S + 1),
        replay,
    })
}

fn joined_field(msg: &Message<'_>, name: &str) -> Option<String> {
    let lines: Vec<&str> = msg
        .headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}
