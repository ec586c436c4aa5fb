//! Rate limits: the state lives behind `portcullis_kv`'s [`RateLimiter`] (in-process, or shared by
//! every node on Redis); the algorithms are pure functions in `portcullis_core::ratelimit`. What
//! counts as one client is decided here.

use std::net::IpAddr;

pub use portcullis_kv::limiter::{Limiter, MemoryLimiter, RateLimiter};

/// What limits count as one client: an IPv4 address, or the /64 of an IPv6 one (one customer's
/// network usually gets a whole /64, so one address each would be no limit at all).
pub fn client_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_bucket(a), client_bucket(b));
        assert_ne!(client_bucket(a), client_bucket(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_bucket(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }
}
