//! The helper-free arithmetic of the programs (`include/bucket.h`), compiled for
//! the host by the build script, so that unit tests check the very C code the
//! kernel runs rather than a Rust copy of it. Not used by the loader.

/// `struct warren_rl_value`: nano-tokens and the time up to which elapsed time
/// has been turned into tokens.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub tokens: u64,
    pub last_ns: u64,
}

extern "C" {
    fn warren_host_bucket_take(b: *mut Bucket, now: u64, rate: u64, burst: u64, atomics: i32) -> i32;
    fn warren_host_bucket_init(b: *mut Bucket, now: u64, burst: u64);
}

/// A client's first connection at `now`: a full bucket less that connection.
pub fn bucket_init(now: u64, burst: u64) -> Bucket {
    let mut b = Bucket::default();
    // SAFETY: b is a valid, exclusively borrowed struct of the C layout.
    unsafe { warren_host_bucket_init(&mut b, now, burst) };
    b
}

/// `bucket_take()`: refills `b` up to `now` and takes a token; whether there was one.
/// `atomics` selects the BPF-atomics path (what 5.12+ kernels run).
pub fn bucket_take(b: &mut Bucket, now: u64, rate: u64, burst: u64, atomics: bool) -> bool {
    // SAFETY: as above.
    unsafe { warren_host_bucket_take(b, now, rate, burst, i32::from(atomics)) != 0 }
}

/// [`bucket_take`] on a bucket shared between threads (the atomic path only).
pub fn bucket_take_shared(b: &std::sync::atomic::AtomicU64, now: u64, rate: u64, burst: u64) -> bool {
    // SAFETY: `Shared` is two u64s of which `b` is the first; the C code only
    // touches the struct with atomic instructions on this path.
    let p = b as *const std::sync::atomic::AtomicU64 as *mut Bucket;
    unsafe { warren_host_bucket_take(p, now, rate, burst, 1) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;

    /// Calls every `every` ns from t=1 s to t=1 s + `secs` inclusive (the first
    /// creates the bucket);
    /// how many were admitted, on both paths (they must agree).
    fn admitted(rate: u64, burst: u64, every: u64, secs: u64) -> u64 {
        let mut counts = [0u64; 2];
        for (i, atomics) in [false, true].into_iter().enumerate() {
            let start = SEC;
            let mut b = bucket_init(start, burst);
            let mut n = 1;
            let mut t = start + every;
            while t <= start + secs * SEC {
                n += u64::from(bucket_take(&mut b, t, rate, burst, atomics));
                t += every;
            }
            counts[i] = n;
        }
        assert_eq!(counts[0], counts[1], "the atomic and plain paths disagree");
        counts[0]
    }

    #[test]
    fn fast_retries_still_refill_at_the_rate() {
        // The bug: a call every 150 µs at 5/s never refilled (5 admitted in 10 s).
        // The 50th token arrives at 10 s, 100 µs after the last call.
        assert_eq!(admitted(5, 5, 150_000, 10), 5 + 49);
        assert_eq!(admitted(5, 5, 100_000, 10), 5 + 50);
        // Every 100 µs at 1,000/s with burst 100: the rate plus the burst.
        assert_eq!(admitted(1000, 100, 100_000, 4), 100 + 4000);
    }

    #[test]
    fn fractions_of_a_token_are_carried() {
        // 3/s: a token every 333.3 ms; polled every 1 ms the fraction must carry
        // (burst 2: the bucket never fills while the client drains it).
        assert_eq!(admitted(3, 2, MS, 30), 2 + 90);
        // 7/s polled every 13 µs: no call ever earns a whole token; the 140th
        // arrives at 20 s, between two calls.
        assert_eq!(admitted(7, 2, 13_000, 20), 2 + 139);
        // A prime rate close to the maximum, polled twice as fast.
        assert_eq!(admitted(999_983, 2, 500, 1), 2 + 999_983);
        // With burst 1 the bucket is full from a token's arrival to the next call,
        // and that time is not banked; polled every 1 ms at 1/s: one per second.
        assert_eq!(admitted(1, 1, MS, 10), 1 + 10);
    }

    #[test]
    fn a_full_bucket_stops_banking_time() {
        let mut b = bucket_init(SEC, 10);
        // An hour idle earns no more than the burst.
        let t = SEC + 3600 * SEC;
        let n = (0..50).filter(|_| bucket_take(&mut b, t, 100, 10, true)).count();
        assert_eq!(n, 10);
        // 100/s: 10 ms later exactly one more token, not the time spent full.
        assert!(bucket_take(&mut b, t + 10 * MS, 100, 10, true));
        assert!(!bucket_take(&mut b, t + 10 * MS, 100, 10, true));
    }

    #[test]
    fn large_rates_and_bursts_do_not_overflow() {
        let max = u64::from(u32::MAX);
        for (rate, burst) in [(1_000_000, 1_000_000), (max, 1_000_000), (max, 1), (1, 1_000_000)] {
            let mut b = bucket_init(SEC, burst);
            // Years idle: the bucket is full, not wrapped.
            let t = SEC + 100 * 365 * 24 * 3600 * SEC;
            assert!(bucket_take(&mut b, t, rate, burst, true));
            assert_eq!(
                b.tokens,
                (burst - 1) * 1_000_000_000,
                "rate {rate} burst {burst}: {b:?}"
            );
            assert_eq!(b.last_ns, t);
        }
        // 1e6/s refills a token per microsecond exactly.
        let mut b = bucket_init(SEC, 1);
        let n = (1..=1000)
            .filter(|i| bucket_take(&mut b, SEC + i * 1000, 1_000_000, 1, true))
            .count();
        assert_eq!(n, 1000);
    }

    #[test]
    fn concurrent_takes_never_lose_or_duplicate_a_token() {
        use std::sync::atomic::{AtomicU64, Ordering};
        // tokens, last_ns: 5,000 tokens; the clock does not move, so exactly 5,000
        // of the 8 × 2,000 takes succeed.
        let shared = [AtomicU64::new(5_000 * 1_000_000_000), AtomicU64::new(SEC)];
        let won = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        if bucket_take_shared(&shared[0], SEC, 1, 10_000) {
                            won.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(won.load(Ordering::Relaxed), 5000);
        assert_eq!(shared[0].load(Ordering::Relaxed), 0);
    }
}
