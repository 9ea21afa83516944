//! Per-client request rate limits of a route: a token bucket per client address
//! (`--rate-limit N/s --rate-burst B`), refilled continuously. The buckets live
//! beside the route table and survive its swaps as long as the route keeps the
//! same limit. Memory is bounded: past [`MAX_CLIENTS`] addresses per shard, full
//! buckets (clients that would be admitted anyway) are forgotten first.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::model::RateLimit;

const SHARDS: usize = 16;
/// Buckets per shard before a sweep.
pub const MAX_CLIENTS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Takes one token from `b` at `now`, or says how long until one is there.
fn take(b: &mut Bucket, now: Instant, limit: RateLimit) -> Result<(), Duration> {
    let rate = f64::from(limit.per_sec);
    let burst = f64::from(limit.burst);
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    b.tokens = (b.tokens + elapsed * rate).min(burst);
    b.at = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        Ok(())
    } else {
        Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
    }
}

pub struct Limiter {
    pub limit: RateLimit,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Limiter {
        Limiter {
            limit,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Bucket>> {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(*v4) as usize,
            IpAddr::V6(v6) => (u128::from(*v6) as usize) ^ ((u128::from(*v6) >> 64) as usize),
        };
        &self.shards[h.wrapping_mul(0x9E37_79B9) % SHARDS]
    }

    /// Admits one request from `ip` at `now`, or returns how long it should wait.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let limit = self.limit;
        let mut shard = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= MAX_CLIENTS && !shard.contains_key(&ip) {
            let burst = f64::from(limit.burst);
            let rate = f64::from(limit.per_sec);
            shard.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
            if shard.len() > MAX_CLIENTS * 7 / 8 {
                // Most remembered clients are limited right now: forget some
                // arbitrary ones rather than grow, and sweep again only after
                // another eighth has come in.
                let excess = shard.len() - MAX_CLIENTS * 7 / 8;
                let victims: Vec<IpAddr> = shard.keys().take(excess).copied().collect();
                for k in victims {
                    shard.remove(&k);
                }
            }
        }
        let b = shard.entry(ip).or_insert(Bucket {
            tokens: f64::from(limit.burst),
            at: now,
        });
        take(b, now, limit)
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit { per_sec: 10, burst: 3 };

    #[test]
    fn a_burst_then_the_rate() {
        let l = Limiter::new(LIMIT);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            l.check(ip, t0).unwrap();
        }
        let wait = l.check(ip, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // 100 ms later exactly one more token has come back.
        let t1 = t0 + Duration::from_millis(100);
        l.check(ip, t1).unwrap();
        assert!(l.check(ip, t1).is_err());
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            l.check(ip, t2).unwrap();
        }
        assert!(l.check(ip, t2).is_err());
    }

    #[test]
    fn clients_have_their_own_buckets() {
        let l = Limiter::new(RateLimit { per_sec: 1, burst: 1 });
        let t = Instant::now();
        l.check("192.0.2.1".parse().unwrap(), t).unwrap();
        assert!(l.check("192.0.2.1".parse().unwrap(), t).is_err());
        l.check("192.0.2.2".parse().unwrap(), t).unwrap();
        l.check("2001:db8::1".parse().unwrap(), t).unwrap();
    }

    #[test]
    fn memory_stays_bounded_and_limited_clients_are_kept_first() {
        let l = Limiter::new(RateLimit { per_sec: 1, burst: 1 });
        let t0 = Instant::now();
        for i in 0..(SHARDS * MAX_CLIENTS * 2) as u32 {
            let _ = l.check(IpAddr::V4((0x0a00_0000 + i).into()), t0);
        }
        assert!(l.clients() <= SHARDS * MAX_CLIENTS, "{}", l.clients());
        // Ten seconds on, the flood's buckets are full again; a limited client
        // is not, and new clients sweep the full ones out, not it.
        let t1 = t0 + Duration::from_secs(10);
        let limited: IpAddr = "198.51.100.7".parse().unwrap();
        l.check(limited, t1).unwrap();
        assert!(l.check(limited, t1).is_err());
        for i in 0..(SHARDS * 64) as u32 {
            let _ = l.check(IpAddr::V4((0x0b00_0000 + i).into()), t1);
        }
        assert!(l.clients() < SHARDS * MAX_CLIENTS / 2, "{}", l.clients());
        assert!(l.check(limited, t1).is_err(), "the limited client was forgotten");
    }
}
