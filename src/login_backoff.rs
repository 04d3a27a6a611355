//! Backoff per peer address after failed logins: a guesser, or a misconfigured device, pays
//! for its failures with time instead of the gateway paying with argon2 checks.
//!
//! After [`FREE_FAILURES`] failed logins in a row, an address is refused for
//! [`FIRST_BACKOFF`], doubling with each further failure up to [`MAX_BACKOFF`]; a CONNECT
//! during its backoff is refused at once, without any password check. A successful login
//! clears the address; so does [`MAX_BACKOFF`] without a failure. IPv6 addresses count per
//! /64 (one host can hold a whole /64). The table is bounded ([`MAX_PEERS`]): when full,
//! addresses out of backoff are forgotten first, then the whole table (a flood from more
//! addresses than that costs argon2 checks again, within the verifier's bounded queue).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const FREE_FAILURES: u32 = 3;
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
pub const MAX_PEERS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    until: Instant,
}

#[derive(Default)]
pub struct LoginBackoff {
    peers: Mutex<HashMap<IpAddr, Failures>>,
}

/// The part of an address that counts: the whole IPv4 address, an IPv6 /64.
fn key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

impl LoginBackoff {
    /// `Some(left)` while `addr` is in backoff.
    pub fn blocked(&self, addr: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let failures = peers.get(&key(addr))?;
        (failures.until > now).then(|| failures.until - now)
    }

    /// A failed login from `addr`; returns the backoff it starts (zero while free).
    pub fn failed(&self, addr: IpAddr) -> Duration {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let addr = key(addr);
        if peers.len() >= MAX_PEERS && !peers.contains_key(&addr) {
            peers.retain(|_, f| f.until > now);
            if peers.len() >= MAX_PEERS {
                peers.clear();
            }
        }
        let entry = peers.entry(addr).or_insert(Failures {
            count: 0,
            last: now,
            until: now,
        });
        if now.duration_since(entry.last) > MAX_BACKOFF {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let backoff = match entry.count.checked_sub(FREE_FAILURES + 1) {
            None => Duration::ZERO,
            Some(doublings) => FIRST_BACKOFF
                .saturating_mul(1 << doublings.min(16))
                .min(MAX_BACKOFF),
        };
        entry.until = now + backoff;
        backoff
    }

    /// A successful login from `addr`.
    pub fn succeeded(&self, addr: IpAddr) {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(addr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_after_the_free_failures_and_doubles() {
        let backoff = LoginBackoff::default();
        let peer: IpAddr = "192.0.2.7".parse().expect("address");
        for _ in 0..FREE_FAILURES {
            assert_eq!(backoff.failed(peer), Duration::ZERO);
        }
        assert!(backoff.blocked(peer).is_none());
        assert_eq!(backoff.failed(peer), FIRST_BACKOFF);
        assert!(backoff.blocked(peer).is_some());
        assert_eq!(backoff.failed(peer), FIRST_BACKOFF * 2);
        for _ in 0..20 {
            backoff.failed(peer);
        }
        assert_eq!(backoff.failed(peer), MAX_BACKOFF);
        let other: IpAddr = "192.0.2.8".parse().expect("address");
        assert!(backoff.blocked(other).is_none(), "per address");
        backoff.succeeded(peer);
        assert!(backoff.blocked(peer).is_none());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let backoff = LoginBackoff::default();
        for host in 0..=FREE_FAILURES {
            let peer: IpAddr = format!("2001:db8::{host}").parse().expect("address");
            backoff.failed(peer);
        }
        let neighbour: IpAddr = "2001:db8::ffff:1".parse().expect("address");
        assert!(backoff.blocked(neighbour).is_some());
        let elsewhere: IpAddr = "2001:db8:0:1::1".parse().expect("address");
        assert!(backoff.blocked(elsewhere).is_none());
    }
}
