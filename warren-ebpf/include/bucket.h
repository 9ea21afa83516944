/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * Token-bucket arithmetic, exact: no BPF helper here, so that a host unit test
 * (warren_ebpf::host) compiles and checks this very code.
 *
 * A bucket holds nano-tokens (WARREN_RL_TOKEN per token) and the time up to which
 * elapsed time has been turned into tokens. `rate` tokens per second is `rate`
 * nano-tokens per nanosecond, so a refill converts every elapsed nanosecond with
 * no remainder: no fraction of a token is ever lost, however often clients retry.
 * A full bucket stops the clock (time beyond a full bucket is not banked). The
 * elapsed time is bounded by the time to fill the bucket, so elapsed × rate stays
 * below burst × 1e9 + rate: no overflow for any u32 rate and burst ≤
 * WARREN_RL_MAX_BURST.
 *
 * With `atomics` (BPF_ATOMIC fetch and cmpxchg, Linux 5.12+), concurrent CPUs
 * never lose or duplicate a token: one CPU wins the refill of an interval
 * (cmpxchg on the timestamp), and a take is a fetch-and-add undone when it went
 * below zero. Without them the read-modify-write may lose a token per race.
 */
#ifndef WARREN_BUCKET_H
#define WARREN_BUCKET_H

#include <linux/types.h>
#include "warren.h"

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define WARREN_RL_TOKEN 1000000000ULL /* nano-tokens per token */

/* Turns the time elapsed since b->last_ns into tokens, up to `cap` nano-tokens. */
static __always_inline void bucket_refill(struct warren_rl_value *b, __u64 now, __u64 rate, __u64 cap,
					  int atomics)
{
	__u64 last = b->last_ns, elapsed, fill, gained, next = now;
	__s64 held = (__s64)b->tokens;
	__u64 tokens = held < 0 ? 0 : (__u64)held;

	if (now <= last)
		return;
	elapsed = now - last;
	if (tokens >= cap) {
		gained = 0;
	} else {
		fill = (cap - tokens) / rate + 1; /* ns until full */
		gained = elapsed >= fill ? cap - tokens : elapsed * rate;
		if (tokens + gained > cap)
			gained = cap - tokens;
	}
	if (atomics) {
		if (__sync_val_compare_and_swap(&b->last_ns, last, next) == last && gained)
			__sync_fetch_and_add(&b->tokens, gained);
	} else {
		b->last_ns = next;
		b->tokens = tokens + gained;
	}
}

/* Takes one token: 1 when there was one, 0 otherwise. */
static __always_inline int bucket_take(struct warren_rl_value *b, __u64 now, __u64 rate, __u64 burst,
				       int atomics)
{
	__s64 before;

	bucket_refill(b, now, rate, burst * WARREN_RL_TOKEN, atomics);
	if (atomics) {
		before = (__s64)__sync_fetch_and_add(&b->tokens, -WARREN_RL_TOKEN);
		if (before >= (__s64)WARREN_RL_TOKEN)
			return 1;
		__sync_fetch_and_add(&b->tokens, WARREN_RL_TOKEN);
		return 0;
	}
	if (b->tokens < WARREN_RL_TOKEN)
		return 0;
	b->tokens -= WARREN_RL_TOKEN;
	return 1;
}

/* A new bucket for a client's first connection: full, less that connection. */
static __always_inline void bucket_init(struct warren_rl_value *b, __u64 now, __u64 burst)
{
	b->tokens = burst * WARREN_RL_TOKEN - WARREN_RL_TOKEN;
	b->last_ns = now;
}

#endif /* WARREN_BUCKET_H */
