//! `argon2_raw`: how many argon2id hashes per second this machine does in-process, with the
//! server's parameters. This is the ceiling for `login` (each login verifies one hash).

#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use anyhow::{Result, anyhow};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::Settings;
use crate::load::{Stats, new_histogram};

// The server's default parameters, taken from portcullis-core so the `login / argon2_raw` ratio
// always compares like with like.
/// Memory cost, KiB (19 MiB).
pub const ARGON2_M_COST_KIB: u32 = portcullis_core::passwords::Argon2Params::OWASP.m_kib;
/// Iterations.
pub const ARGON2_T_COST: u32 = portcullis_core::passwords::Argon2Params::OWASP.t;
/// Lanes.
pub const ARGON2_P_COST: u32 = portcullis_core::passwords::Argon2Params::OWASP.p;
/// Output length, bytes.
pub const ARGON2_OUTPUT_LEN: usize = 32;

const PASSWORD: &[u8] = b"Bench-0123456789abcd";

/// One hashing thread per available core.
pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub fn params() -> Result<Params> {
    Params::new(
        ARGON2_M_COST_KIB,
        ARGON2_T_COST,
        ARGON2_P_COST,
        Some(ARGON2_OUTPUT_LEN),
    )
    .map_err(|e| anyhow!("argon2 params: {e}"))
}

/// Hashes on [`threads`] threads for warm-up + duration; counts hashes that start after the
/// warm-up and finish inside the window. Peak RSS here is the harness's own.
pub fn run(s: &Settings) -> Result<Stats> {
    let params = params()?;
    crate::load::in_process(s, "hashes/s", |measure_start, end| {
        hash_loop(params.clone(), measure_start, end)
    })
}

fn hash_loop(
    params: Params,
    measure_start: Instant,
    end: Instant,
) -> Result<(u64, hdrhistogram::Histogram<u64>)> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut hist = new_histogram()?;
    let mut ok = 0u64;
    let mut salt = [0u8; 16];
    let mut out = [0u8; ARGON2_OUTPUT_LEN];
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        getrandom::fill(&mut salt).map_err(|e| anyhow!("getrandom: {e}"))?;
        // Allocates the 19 MiB work area on every call, like the server's hash and verify do.
        argon
            .hash_password_into(PASSWORD, &salt, &mut out)
            .map_err(|e| anyhow!("argon2: {e}"))?;
        std::hint::black_box(&out);
        let done = Instant::now();
        if t0 >= measure_start && done <= end {
            ok += 1;
            let us = u64::try_from((done - t0).as_micros()).unwrap_or(u64::MAX);
            hist.saturating_record(us.max(1));
        }
    }
    Ok((ok, hist))
}

/// Used by tests: one hash must take a plausible amount of time and produce 32 bytes.
#[cfg(test)]
fn one_hash() -> Result<Duration> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params()?);
    let mut out = [0u8; ARGON2_OUTPUT_LEN];
    let t0 = Instant::now();
    argon
        .hash_password_into(PASSWORD, &[7u8; 16], &mut out)
        .map_err(|e| anyhow!("{e}"))?;
    assert!(out.iter().any(|b| *b != 0));
    Ok(t0.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_valid_and_hash_works() -> Result<()> {
        let p = params()?;
        assert_eq!(p.m_cost(), ARGON2_M_COST_KIB);
        assert_eq!(p.t_cost(), ARGON2_T_COST);
        assert_eq!(p.p_cost(), ARGON2_P_COST);
        assert!(one_hash()? > Duration::from_micros(100));
        Ok(())
    }
}
