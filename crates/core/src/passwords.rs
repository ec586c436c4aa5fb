//! Passwords: the policy a new password must meet and the hashing of the ones that pass.
//!
//! Policy follows NIST SP 800-63B-4 §3.1.1.2 and OWASP ASVS 5.0 V6.2: a minimum length (12 by default,
//! never below 8), a maximum of at least 64 (128 by default), length counted in Unicode code points and
//! never truncated, no composition rules, and a refusal of passwords found in a list of commonly used ones
//! or containing the account's own email local part.
//!
//! Hashing is argon2id with the OWASP parameters (m = 19 MiB, t = 2, p = 1) unless configured higher.
//! Imported bcrypt and argon2 hashes verify too and report that they need an upgrade, which the caller
//! performs on the first successful login.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as PHC_B64;
use secrecy::{ExposeSecret, SecretString};
use std::io::Read;
use std::sync::OnceLock;
use subtle::ConstantTimeEq;

use crate::email::Email;
use crate::secrets::fill_random;

/// Why a new password was refused; `code()` is what the API reports in `weak_password` errors.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeakReason {
    TooShort { min: usize },
    TooLong { max: usize },
    Common,
    ContainsEmail,
}

impl WeakReason {
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooShort { .. } => "too_short",
            Self::TooLong { .. } => "too_long",
            Self::Common => "common_password",
            Self::ContainsEmail => "contains_email",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::TooShort { min } => format!("password must be at least {min} characters long"),
            Self::TooLong { max } => format!("password must be at most {max} characters long"),
            Self::Common => "password is in a list of commonly used passwords".to_owned(),
            Self::ContainsEmail => {
                "password must not contain the part of your email before the @".to_owned()
            }
        }
    }
}

/// The rules a new password must meet.
#[derive(Debug, Clone, Copy)]
pub struct PasswordPolicy {
    pub min_len: usize,
    pub max_len: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_len: 12,
            max_len: 128,
        }
    }
}

/// A policy that breaks the standards we follow.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvalidPolicy {
    #[error("password_min_length must be at least 8 (NIST SP 800-63B-4), got {0}")]
    MinTooSmall(usize),
    #[error("password_max_length must be at least 64 and at least password_min_length, got {0}")]
    MaxTooSmall(usize),
}

impl PasswordPolicy {
    pub fn new(min_len: usize, max_len: usize) -> Result<Self, InvalidPolicy> {
        if min_len < 8 {
            return Err(InvalidPolicy::MinTooSmall(min_len));
        }
        if max_len < 64 || max_len < min_len {
            return Err(InvalidPolicy::MaxTooSmall(max_len));
        }
        Ok(Self { min_len, max_len })
    }

    /// Every reason the password falls short, so the user can fix them all at once.
    pub fn check(&self, password: &str, email: &Email) -> Result<(), Vec<WeakReason>> {
        let mut reasons = Vec::new();
        let len = password.chars().count();
        if len < self.min_len {
            reasons.push(WeakReason::TooShort { min: self.min_len });
        }
        if len > self.max_len {
            reasons.push(WeakReason::TooLong { max: self.max_len });
        }
        // Only look further at passwords of sane size: the list and the substring search are cheap, but
        // there is no reason to lowercase kilobytes of input.
        if len <= self.max_len {
            let lowered = password.to_lowercase();
            if CommonPasswords::bundled().contains(&lowered) {
                reasons.push(WeakReason::Common);
            }
            let local = email.local_part().to_lowercase();
            // A one- or two-letter local part would forbid half the alphabet; NIST's concern is the
            // account name itself being used as (part of) the password.
            if local.chars().count() >= 3 && lowered.contains(&local) {
                reasons.push(WeakReason::ContainsEmail);
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

/// The bundled list of commonly used passwords (see `data/README.md` for its source and licence), kept
/// as one sorted, newline-separated string plus offsets: about 1.3 MB for 100,000 entries.
pub struct CommonPasswords {
    text: String,
    starts: Vec<u32>,
}

static BUNDLED: OnceLock<CommonPasswords> = OnceLock::new();
const BUNDLED_GZ: &[u8] = include_bytes!("../data/common-passwords.txt.gz");

impl CommonPasswords {
    /// The bundled list, decompressed on first use.
    pub fn bundled() -> &'static CommonPasswords {
        BUNDLED.get_or_init(|| {
            let mut text = String::new();
            // The list is compiled into the binary and checked by a test, so a failure here means a
            // corrupted build; fall back to an empty list rather than taking the server down.
            if flate2::read::GzDecoder::new(BUNDLED_GZ)
                .read_to_string(&mut text)
                .is_err()
            {
                text.clear();
            }
            Self::from_lines(&text)
        })
    }

    pub fn from_lines(raw: &str) -> Self {
        let mut entries: Vec<String> = raw
            .lines()
            .map(|l| l.trim().to_lowercase())
            .filter(|l| !l.is_empty())
            .collect();
        entries.sort_unstable();
        entries.dedup();
        let mut text = String::with_capacity(entries.iter().map(|e| e.len() + 1).sum());
        let mut starts = Vec::with_capacity(entries.len());
        for e in &entries {
            starts.push(text.len() as u32);
            text.push_str(e);
            text.push('\n');
        }
        Self { text, starts }
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    fn entry(&self, i: usize) -> &str {
        let start = self.starts.get(i).copied().unwrap_or_default() as usize;
        let rest = self.text.get(start..).unwrap_or_default();
        rest.split('\n').next().unwrap_or_default()
    }

    /// `candidate` must already be lowercased.
    pub fn contains(&self, candidate: &str) -> bool {
        let (mut lo, mut hi) = (0usize, self.starts.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid).cmp(candidate) {
                std::cmp::Ordering::Equal => return true,
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        false
    }
}

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Argon2Params {
    /// OWASP Password Storage Cheat Sheet: m = 19 MiB, t = 2, p = 1. Also the floor: configured
    /// parameters may only be stronger.
    pub const OWASP: Self = Self {
        m_kib: 19_456,
        t: 2,
        p: 1,
    };

    pub fn validate(self) -> Result<Self, String> {
        if self.m_kib < Self::OWASP.m_kib || self.t < Self::OWASP.t || self.p < 1 {
            return Err(format!(
                "argon2 parameters must be at least m={} KiB, t={}, p=1 (OWASP); got m={}, t={}, p={}",
                Self::OWASP.m_kib,
                Self::OWASP.t,
                self.m_kib,
                self.t,
                self.p
            ));
        }
        if self.m_kib > 4 * 1024 * 1024 || self.t > 64 || self.p > 16 {
            return Err(
                "argon2 parameters are unreasonably high (m ≤ 4 GiB, t ≤ 64, p ≤ 16)".to_owned(),
            );
        }
        Ok(self)
    }

    fn argon2(self) -> Result<Argon2<'static>, HashError> {
        let params =
            Params::new(self.m_kib, self.t, self.p, Some(32)).map_err(|_| HashError::Params)?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self::OWASP
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum HashError {
    #[error("invalid argon2 parameters")]
    Params,
    #[error("password hashing failed")]
    Hash,
    #[error(transparent)]
    Random(#[from] crate::secrets::RandomUnavailable),
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Correct. `needs_rehash` is set when the stored hash is not argon2id with the current parameters.
    Match {
        needs_rehash: bool,
    },
    Mismatch,
}

/// A stored password hash in one of the formats we accept (ours, or an import).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredHash(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHash {
    #[error("password_hash must be a bcrypt ($2a$/$2b$/$2y$) or argon2 PHC ($argon2id$…) string")]
    UnknownFormat,
    #[error("the bcrypt hash is malformed")]
    BadBcrypt,
    #[error("the argon2 hash is malformed or its parameters are out of range")]
    BadArgon2,
    #[error(
        "the hash is too costly to verify: bcrypt cost at most 13; argon2 memory at most twice the \
         configured argon2_m_kib, memory × passes at most twice the configured cost, at most 8 lanes"
    )]
    TooCostly,
}

/// The highest bcrypt cost we run (about half a second per login on current hardware).
pub const MAX_BCRYPT_COST: u32 = 13;
/// bcrypt reads at most this many bytes of a password.
const BCRYPT_MAX_PASSWORD_BYTES: usize = 72;
const MAX_IMPORT_LANES: u32 = 8;

/// The cost of a `$2?$NN$…` string.
fn bcrypt_cost(raw: &str) -> Option<u32> {
    raw.get(4..)?.split('$').next()?.parse().ok()
}

impl StoredHash {
    /// Accepts bcrypt (`$2a$`, `$2b$`, `$2y$`, cost 4..=31) and argon2 (`argon2id`, `argon2i`,
    /// `argon2d`) PHC strings.
    pub fn parse(raw: &str) -> Result<Self, InvalidHash> {
        let raw = raw.trim();
        if let Some(rest) = raw
            .strip_prefix("$2a$")
            .or_else(|| raw.strip_prefix("$2b$"))
            .or_else(|| raw.strip_prefix("$2y$"))
        {
            let (cost, body) = rest.split_once('$').ok_or(InvalidHash::BadBcrypt)?;
            let cost: u32 = cost.parse().map_err(|_| InvalidHash::BadBcrypt)?;
            let alphabet_ok = body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
            if (4..=31).contains(&cost) && body.len() == 53 && alphabet_ok {
                return Ok(Self(raw.to_owned()));
            }
            return Err(InvalidHash::BadBcrypt);
        }
        if raw.starts_with("$argon2") {
            let parsed = PasswordHash::new(raw).map_err(|_| InvalidHash::BadArgon2)?;
            if !matches!(
                parsed.algorithm.as_str(),
                "argon2id" | "argon2i" | "argon2d"
            ) {
                return Err(InvalidHash::BadArgon2);
            }
            let params = Params::try_from(&parsed).map_err(|_| InvalidHash::BadArgon2)?;
            // An absurd memory cost in an imported hash would let one login exhaust the server.
            if params.m_cost() > 4 * 1024 * 1024 || params.t_cost() > 64 || params.p_cost() > 16 {
                return Err(InvalidHash::BadArgon2);
            }
            if parsed.salt.is_none() || parsed.hash.is_none() {
                return Err(InvalidHash::BadArgon2);
            }
            return Ok(Self(raw.to_owned()));
        }
        Err(InvalidHash::UnknownFormat)
    }

    /// [`Self::parse`], plus a cost cap for hashes brought in from elsewhere: bcrypt at most cost
    /// [`MAX_BCRYPT_COST`], argon2 within [`PasswordHashing::within_budget`] of `current`.
    pub fn parse_import(raw: &str, current: &PasswordHashing) -> Result<Self, InvalidHash> {
        let hash = Self::parse(raw)?;
        if hash.0.starts_with("$2") {
            return match bcrypt_cost(&hash.0) {
                Some(c) if c <= MAX_BCRYPT_COST => Ok(hash),
                _ => Err(InvalidHash::TooCostly),
            };
        }
        let parsed = PasswordHash::new(&hash.0).map_err(|_| InvalidHash::BadArgon2)?;
        if current.is_current(&parsed) || current.within_budget(&parsed) {
            Ok(hash)
        } else {
            Err(InvalidHash::TooCostly)
        }
    }

    /// For values read back from our own store.
    pub fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoredHash([redacted])")
    }
}

/// Hashes and verifies passwords with fixed parameters. CPU-heavy: call it off the async runtime.
#[derive(Clone)]
pub struct PasswordHashing {
    params: Argon2Params,
    argon2: Argon2<'static>,
    /// A hash of a random password at the current parameters. Logins for unknown accounts verify
    /// against it so that they cost the same as logins for real ones.
    dummy: String,
}

impl PasswordHashing {
    pub fn new(params: Argon2Params) -> Result<Self, HashError> {
        let argon2 = params.argon2()?;
        let mut random = [0u8; 24];
        fill_random(&mut random)?;
        let mut this = Self {
            params,
            argon2,
            dummy: String::new(),
        };
        this.dummy = this.hash(&SecretString::from(hex::encode(random)))?.0;
        Ok(this)
    }

    pub fn params(&self) -> Argon2Params {
        self.params
    }

    pub fn hash(&self, password: &SecretString) -> Result<StoredHash, HashError> {
        let mut salt = [0u8; 16];
        fill_random(&mut salt)?;
        let hash = self
            .argon2
            .hash_password_with_salt(password.expose_secret().as_bytes(), &salt)
            .map_err(|_| HashError::Hash)?;
        Ok(StoredHash(hash.to_string()))
    }

    /// Constant-time verification against any accepted format.
    ///
    /// A stored hash cheaper than ours (an import) answers a wrong password only after the work of a
    /// current hash as well, so that its timing does not single out imported accounts. A hash over the
    /// cost budget ([`Self::within_budget`]) is never run: it answers `Mismatch`. Against bcrypt, a
    /// password over 72 bytes is a mismatch: bcrypt reads only the first 72, and we never truncate.
    pub fn verify(&self, password: &SecretString, stored: &StoredHash) -> Verification {
        let (verdict, pad) = self.verify_general(password, stored);
        if pad && verdict == Verification::Mismatch {
            self.verify_dummy(password);
        }
        verdict
    }

    /// The verdict, and whether a mismatch must be padded to the cost of a current hash.
    fn verify_general(&self, password: &SecretString, stored: &StoredHash) -> (Verification, bool) {
        let pw = password.expose_secret().as_bytes();
        let raw = stored.as_str();
        if raw.starts_with("$2") {
            let affordable = bcrypt_cost(raw).is_some_and(|c| c <= MAX_BCRYPT_COST);
            if !affordable || pw.len() > BCRYPT_MAX_PASSWORD_BYTES {
                return (Verification::Mismatch, true);
            }
            return match bcrypt::verify(pw, raw) {
                Ok(true) => (Verification::Match { needs_rehash: true }, true),
                _ => (Verification::Mismatch, true),
            };
        }
        let Ok(parsed) = PasswordHash::new(raw) else {
            return (Verification::Mismatch, true);
        };
        let current = self.is_current(&parsed);
        if !current && !self.within_budget(&parsed) {
            return (Verification::Mismatch, true);
        }
        // `verify_password` takes algorithm and parameters from the stored hash, so old and imported
        // hashes still verify; they are then flagged for an upgrade.
        match self.argon2.verify_password(pw, &parsed) {
            Ok(()) => (
                Verification::Match {
                    needs_rehash: !current,
                },
                !current,
            ),
            Err(_) => (Verification::Mismatch, !current),
        }
    }

    /// May a stored argon2 hash be run at all? Its memory may be at most twice ours and its work
    /// (memory × passes) at most twice ours, so that one hostile or mistaken hash cannot stall a
    /// hashing thread (a 4 GiB import did) or exhaust memory.
    fn within_budget(&self, parsed: &PasswordHash) -> bool {
        Params::try_from(parsed).is_ok_and(|p| {
            let ours = u64::from(self.params.m_kib) * u64::from(self.params.t);
            u64::from(p.m_cost()) <= 2 * u64::from(self.params.m_kib)
                && u64::from(p.m_cost()) * u64::from(p.t_cost()) <= 2 * ours
                && p.p_cost() <= MAX_IMPORT_LANES
        })
    }

    /// Spends the same work as a real verification, for logins of accounts that do not exist.
    pub fn verify_dummy(&self, password: &SecretString) {
        let _ = self.verify(password, &StoredHash(self.dummy.clone()));
    }

    fn is_current(&self, parsed: &PasswordHash) -> bool {
        parsed.algorithm.as_str() == "argon2id"
            && Params::try_from(parsed).is_ok_and(|p| {
                p.m_cost() == self.params.m_kib
                    && p.t_cost() == self.params.t
                    && p.p_cost() == self.params.p
            })
    }
}

/// Working memory for argon2id, reused across hashes on one thread. Allocating ~19 MiB afresh per hash
/// costs either page faults on every hash (when the allocator maps it anew: measured 32% slower) or
/// memory that the allocator never returns (~200 MiB per hashing thread); reusing one buffer costs
/// neither. The owner drops it when idle.
#[derive(Default)]
pub struct Scratch {
    blocks: Vec<Block>,
}

impl Scratch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives the memory back.
    pub fn release(&mut self) {
        self.blocks = Vec::new();
    }

    fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.blocks.len() != count {
            self.blocks = vec![Block::default(); count];
        }
        &mut self.blocks
    }
}

/// [`PasswordHashing`] with a reusable [`Scratch`]: the same answers, for the hashing threads.
pub struct Hasher<'a> {
    hashing: &'a PasswordHashing,
    scratch: &'a mut Scratch,
}

impl PasswordHashing {
    pub fn with_scratch<'a>(&'a self, scratch: &'a mut Scratch) -> Hasher<'a> {
        Hasher {
            hashing: self,
            scratch,
        }
    }

    fn block_count(&self) -> Result<usize, HashError> {
        Params::new(self.params.m_kib, self.params.t, self.params.p, Some(32))
            .map(|p| p.block_count())
            .map_err(|_| HashError::Params)
    }
}

impl Hasher<'_> {
    fn raw(&mut self, password: &[u8], salt: &[u8]) -> Result<[u8; 32], HashError> {
        let count = self.hashing.block_count()?;
        let mut out = [0u8; 32];
        self.hashing
            .argon2
            .hash_password_into_with_memory(password, salt, &mut out, self.scratch.blocks(count))
            .map_err(|_| HashError::Hash)?;
        Ok(out)
    }

    /// Like [`PasswordHashing::hash`]; the PHC string is the one argon2 itself writes.
    pub fn hash(&mut self, password: &SecretString) -> Result<StoredHash, HashError> {
        let mut salt = [0u8; 16];
        fill_random(&mut salt)?;
        let out = self.raw(password.expose_secret().as_bytes(), &salt)?;
        let p = self.hashing.params;
        Ok(StoredHash(format!(
            "$argon2id$v=19$m={},t={},p={}${}${}",
            p.m_kib,
            p.t,
            p.p,
            PHC_B64.encode(salt),
            PHC_B64.encode(out)
        )))
    }

    /// Like [`PasswordHashing::verify`]. Hashes at our current parameters use the scratch memory;
    /// anything else (imports, old parameters) takes the general path.
    pub fn verify(&mut self, password: &SecretString, stored: &StoredHash) -> Verification {
        let Ok(parsed) = PasswordHash::new(stored.as_str()) else {
            return self.verify_elsewhere(password, stored);
        };
        let (Some(salt), Some(expected)) = (parsed.salt.as_ref(), parsed.hash.as_ref()) else {
            return Verification::Mismatch;
        };
        if !self.hashing.is_current(&parsed)
            || expected.as_bytes().len() != 32
            || parsed.version != Some(19)
        {
            return self.verify_elsewhere(password, stored);
        }
        match self.raw(password.expose_secret().as_bytes(), salt.as_ref()) {
            Ok(out) if bool::from(out.ct_eq(expected.as_bytes())) => Verification::Match {
                needs_rehash: false,
            },
            _ => Verification::Mismatch,
        }
    }

    /// A hash that is not ours at current parameters: the general path, padded (on this thread's
    /// scratch memory) as [`PasswordHashing::verify`] pads.
    fn verify_elsewhere(&mut self, password: &SecretString, stored: &StoredHash) -> Verification {
        let (verdict, pad) = self.hashing.verify_general(password, stored);
        if pad && verdict == Verification::Mismatch {
            self.verify_dummy(password);
        }
        verdict
    }

    pub fn verify_dummy(&mut self, password: &SecretString) {
        let dummy = StoredHash(self.hashing.dummy.clone());
        let _ = self.verify(password, &dummy);
    }

    /// [`Self::verify`] against the account's hash, or, when there is none (no such account, or no
    /// password), the same work against the dummy and `Mismatch`: the answer's timing never tells.
    pub fn verify_or_dummy(
        &mut self,
        password: &SecretString,
        stored: Option<&StoredHash>,
    ) -> Verification {
        match stored {
            Some(stored) => self.verify(password, stored),
            None => {
                self.verify_dummy(password);
                Verification::Mismatch
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> Email {
        Email::parse("alice.smith@example.com").unwrap()
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn bundled_list_holds_at_least_100k_common_passwords() {
        let list = CommonPasswords::bundled();
        assert!(list.len() >= 100_000, "only {} entries", list.len());
        for common in ["password", "123456", "qwerty", "iloveyou"] {
            assert!(list.contains(common), "{common} missing");
        }
        assert!(!list.contains("correct horse battery staple 42"));
    }

    #[test]
    fn policy_reports_every_reason() {
        let p = PasswordPolicy::default();
        assert_eq!(
            p.check("vq8#Lxz", &email()).unwrap_err(),
            vec![WeakReason::TooShort { min: 12 }]
        );
        assert!(
            p.check("password1234", &email())
                .unwrap_err()
                .contains(&WeakReason::Common)
        );
        assert_eq!(
            p.check("my alice.smith password", &email()).unwrap_err(),
            vec![WeakReason::ContainsEmail]
        );
        assert_eq!(
            p.check(&"x".repeat(129), &email()).unwrap_err(),
            vec![WeakReason::TooLong { max: 128 }]
        );
        assert!(p.check("violet tractor umbrella", &email()).is_ok());
    }

    #[test]
    fn length_counts_code_points_not_bytes() {
        let p = PasswordPolicy::default();
        // 12 code points, 36 bytes.
        assert!(p.check("日本語のパスワードです。", &email()).is_ok());
        assert!(p.check("日本語のパスワード", &email()).is_err());
    }

    #[test]
    fn policy_minimum_cannot_go_below_eight() {
        assert!(PasswordPolicy::new(7, 128).is_err());
        assert!(PasswordPolicy::new(8, 63).is_err());
        assert!(PasswordPolicy::new(8, 64).is_ok());
    }

    #[test]
    fn argon2id_hashes_verify_and_are_current() {
        let h = PasswordHashing::new(Argon2Params::OWASP).unwrap();
        let stored = h.hash(&secret("violet tractor umbrella")).unwrap();
        assert!(
            stored
                .as_str()
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
        assert_eq!(
            h.verify(&secret("violet tractor umbrella"), &stored),
            Verification::Match {
                needs_rehash: false
            }
        );
        assert_eq!(
            h.verify(&secret("violet tractor umbrellA"), &stored),
            Verification::Mismatch
        );
    }

    #[test]
    fn imported_bcrypt_and_weaker_argon2_verify_and_ask_for_an_upgrade() {
        let h = PasswordHashing::new(Argon2Params::OWASP).unwrap();
        let bc = bcrypt::hash("legacy password 1", 4).unwrap();
        let stored = StoredHash::parse(&bc).unwrap();
        assert_eq!(
            h.verify(&secret("legacy password 1"), &stored),
            Verification::Match { needs_rehash: true }
        );
        assert_eq!(
            h.verify(&secret("legacy password 2"), &stored),
            Verification::Mismatch
        );

        let weak = Argon2Params {
            m_kib: 8,
            t: 1,
            p: 1,
        };
        let weak_hasher = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(weak.m_kib, 1, 1, None).unwrap(),
        );
        let phc = weak_hasher
            .hash_password_with_salt(b"legacy password 1", b"somesaltsomesalt")
            .unwrap()
            .to_string();
        let stored = StoredHash::parse(&phc).unwrap();
        assert_eq!(
            h.verify(&secret("legacy password 1"), &stored),
            Verification::Match { needs_rehash: true }
        );
    }

    #[test]
    fn bcrypt_never_truncates_a_long_password() {
        let h = PasswordHashing::new(Argon2Params::OWASP).unwrap();
        let long = "x".repeat(72);
        let stored = StoredHash::parse(&bcrypt::hash(&long, 4).unwrap()).unwrap();
        assert_eq!(
            h.verify(&secret(&long), &stored),
            Verification::Match { needs_rehash: true }
        );
        // bcrypt itself accepts this one (it reads only 72 bytes); we do not.
        let longer = format!("{long}but different after byte 72");
        assert!(bcrypt::verify(&longer, stored.as_str()).unwrap());
        assert_eq!(h.verify(&secret(&longer), &stored), Verification::Mismatch);
        let mut scratch = Scratch::new();
        assert_eq!(
            h.with_scratch(&mut scratch)
                .verify(&secret(&longer), &stored),
            Verification::Mismatch
        );
    }

    #[test]
    fn imports_over_the_cost_budget_are_refused_and_never_run() {
        let h = PasswordHashing::new(Argon2Params::OWASP).unwrap();
        let b13 = format!("$2b$13${}", "a".repeat(53));
        let b14 = format!("$2b$14${}", "a".repeat(53));
        let b31 = format!("$2b$31${}", "a".repeat(53));
        assert!(StoredHash::parse_import(&b13, &h).is_ok());
        for costly in [&b14, &b31] {
            assert_eq!(
                StoredHash::parse_import(costly, &h),
                Err(InvalidHash::TooCostly)
            );
            // Stored before the cap, or written by hand: answered without running it.
            let started = std::time::Instant::now();
            assert_eq!(
                h.verify(
                    &secret("anything at all"),
                    &StoredHash::from_stored(costly.clone())
                ),
                Verification::Mismatch
            );
            assert!(started.elapsed() < std::time::Duration::from_secs(2));
        }
        let salt = "c2FsdHNhbHRzYWx0c2FsdA";
        let digest = "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        let argon =
            |m: u32, t: u32, p: u32| format!("$argon2id$v=19$m={m},t={t},p={p}${salt}${digest}");
        assert!(StoredHash::parse_import(&argon(19456, 2, 1), &h).is_ok());
        assert!(StoredHash::parse_import(&argon(38912, 2, 1), &h).is_ok());
        assert!(StoredHash::parse_import(&argon(19456, 4, 1), &h).is_ok());
        for costly in [
            argon(38913, 1, 1),
            argon(19456, 5, 1),
            argon(4 * 1024 * 1024, 1, 1),
            argon(19456, 1, 16),
        ] {
            assert_eq!(
                StoredHash::parse_import(&costly, &h),
                Err(InvalidHash::TooCostly),
                "{costly}"
            );
        }
    }

    #[test]
    fn a_wrong_password_against_a_cheap_import_costs_a_full_hash() {
        let h = PasswordHashing::new(Argon2Params::OWASP).unwrap();
        let cheap = StoredHash::parse(&bcrypt::hash("legacy password 1", 4).unwrap()).unwrap();
        let time = |stored: &StoredHash| {
            let started = std::time::Instant::now();
            for _ in 0..3 {
                assert_eq!(
                    h.verify(&secret("wrong guess 123"), stored),
                    Verification::Mismatch
                );
            }
            started.elapsed()
        };
        let ours = h.hash(&secret("violet tractor umbrella")).unwrap();
        let (cheap_t, ours_t) = (time(&cheap), time(&ours));
        // The padded cheap path does a full current hash plus bcrypt-4: never much faster than ours.
        assert!(
            cheap_t * 10 >= ours_t * 7,
            "cheap {cheap_t:?} vs ours {ours_t:?}"
        );
    }

    #[test]
    fn malformed_imports_are_refused() {
        for bad in [
            "",
            "plaintext",
            "$2b$03$abc",
            "$2b$10$short",
            "$argon2id$v=19$m=zz",
            "$5$rounds=5000$x$y",
            "$argon2id$v=19$m=99999999,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        ] {
            assert!(StoredHash::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn scratch_hashing_agrees_with_the_general_path() {
        let h = PasswordHashing::new(Argon2Params::OWASP).unwrap();
        let mut scratch = Scratch::new();
        let mut fast = h.with_scratch(&mut scratch);
        let stored = fast.hash(&secret("violet tractor umbrella")).unwrap();
        assert_eq!(
            h.verify(&secret("violet tractor umbrella"), &stored),
            Verification::Match {
                needs_rehash: false
            }
        );
        let general = h.hash(&secret("violet tractor umbrella")).unwrap();
        let mut fast = h.with_scratch(&mut scratch);
        assert_eq!(
            fast.verify(&secret("violet tractor umbrella"), &general),
            Verification::Match {
                needs_rehash: false
            }
        );
        assert_eq!(
            fast.verify(&secret("violet tractor umbrellA"), &general),
            Verification::Mismatch
        );
        let bc = StoredHash::parse(&bcrypt::hash("legacy password 1", 4).unwrap()).unwrap();
        assert_eq!(
            fast.verify(&secret("legacy password 1"), &bc),
            Verification::Match { needs_rehash: true }
        );
        scratch.release();
        assert!(scratch.blocks.is_empty());
    }

    #[test]
    fn weaker_than_owasp_parameters_are_refused() {
        assert!(
            Argon2Params {
                m_kib: 4096,
                t: 2,
                p: 1
            }
            .validate()
            .is_err()
        );
        assert!(
            Argon2Params {
                m_kib: 65536,
                t: 3,
                p: 1
            }
            .validate()
            .is_ok()
        );
    }
}
