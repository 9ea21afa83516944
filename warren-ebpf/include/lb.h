/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * Service lookup, backend selection, rate limiting and counters, shared by the
 * socket programs (cgroup/connect4 ...) and the tc programs. No program here.
 */
#ifndef WARREN_LB_H
#define WARREN_LB_H

#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include "maps.h"

#define NSEC_PER_SEC 1000000000ULL
/* A bucket refills for at most this long, so that tokens * rate cannot overflow. */
#define WARREN_RL_MAX_ELAPSED_NS (100ULL * NSEC_PER_SEC)
#define WARREN_MILLI 1000ULL

/* The host network namespace's cookie, set by the loader (SO_NETNS_COOKIE, 5.14+);
 * 0 = unknown, and then no loopback address is a node address. */
volatile const __u64 warren_host_netns = 0;

static __always_inline int is_loopback(__be32 addr)
{
	return (addr & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
}

/*
 * Whether a socket's destination is one of the node's addresses. 127.0.0.0/8 is
 * one only for sockets of the host network namespace (as with Docker, and as
 * Cilium's bpf_sock.c): inside a task, 127.0.0.1 is the task's own loopback and a
 * published port there must reach the task's own listener, not another replica.
 * `netns` is the socket's netns cookie, or 0 on the tc path (never loopback).
 */
static __always_inline int is_node_addr(__be32 addr, __u64 netns)
{
	if (is_loopback(addr))
		return netns && netns == warren_host_netns;
	return bpf_map_lookup_elem(&warren_naddr_v1, &addr) != NULL;
}

/*
 * Finds the service for a destination: the exact (VIP, port) first, then the VIP's
 * wildcard, then, for one of the node's own addresses, a published port. `netns`
 * as for is_node_addr().
 */
static __always_inline struct warren_svc_value *svc_lookup(__be32 daddr, __be16 dport, __u8 proto,
							    int allow_vip, __u64 netns)
{
	struct warren_svc_key key = {};
	struct warren_svc_value *svc;

	key.proto = proto;
	if (allow_vip) {
		key.addr = daddr;
		key.port = dport;
		svc = bpf_map_lookup_elem(&warren_svc_v1, &key);
		if (svc)
			return svc;
		key.port = 0;
		svc = bpf_map_lookup_elem(&warren_svc_v1, &key);
		if (svc)
			return svc;
	}
	if (!is_node_addr(daddr, netns))
		return NULL;
	key.addr = 0;
	key.port = dport;
	return bpf_map_lookup_elem(&warren_svc_v1, &key);
}

static __always_inline struct warren_svc_state *svc_state(__u32 svc_id)
{
	return bpf_map_lookup_elem(&warren_state_v1, &svc_id);
}

static __always_inline void count_drop(__u32 svc_id, __u32 reason)
{
	struct warren_svc_counters *c = bpf_map_lookup_elem(&warren_svcc_v1, &svc_id);

	if (c && reason < WARREN_DROP_REASONS)
		c->drops[reason]++;
}

static __always_inline void count_conn(__u32 svc_id, __u32 backend_id)
{
	struct warren_svc_counters *c = bpf_map_lookup_elem(&warren_svcc_v1, &svc_id);
	struct warren_backend_counters *b = bpf_map_lookup_elem(&warren_bec_v1, &backend_id);

	if (c)
		c->conns++;
	if (b)
		b->conns++;
}

static __always_inline void count_packet(__u32 svc_id, __u32 backend_id, __u32 len)
{
	struct warren_svc_counters *c = bpf_map_lookup_elem(&warren_svcc_v1, &svc_id);
	struct warren_backend_counters *b = bpf_map_lookup_elem(&warren_bec_v1, &backend_id);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
	if (b) {
		b->packets++;
		b->bytes += len;
	}
}

/*
 * Token bucket per (service, client). Returns 1 when the new connection (or UDP
 * datagram) may pass. Two CPUs may race on one bucket; the error is at most one
 * token per race, which a connection-rate limit tolerates (a spin lock would not
 * be allowed in every program type that calls this).
 */
static __always_inline int rate_allow(__u32 svc_id, const struct warren_svc_state *st, __be32 client,
				      __u64 netns)
{
	struct warren_rl_key key = {};
	struct warren_rl_value *b;
	__u64 now, burst, rate, elapsed, tokens;

	rate = st->rate_per_sec;
	if (!rate)
		return 1;
	burst = st->rate_burst;
	if (!burst)
		burst = 1;
	burst *= WARREN_MILLI;

	key.svc_id = svc_id;
	key.client = client;
	key.netns = netns;
	now = bpf_ktime_get_ns();
	b = bpf_map_lookup_elem(&warren_rl_v1, &key);
	if (!b) {
		struct warren_rl_value fresh = {
			.tokens = burst - WARREN_MILLI,
			.last_ns = now,
		};
		bpf_map_update_elem(&warren_rl_v1, &key, &fresh, BPF_ANY);
		return 1;
	}
	elapsed = now - b->last_ns;
	if ((__s64)elapsed < 0)
		elapsed = 0;
	if (elapsed > WARREN_RL_MAX_ELAPSED_NS)
		elapsed = WARREN_RL_MAX_ELAPSED_NS;
	/* milli-tokens gained = elapsed_ns * rate / 1e6 */
	tokens = b->tokens + elapsed * rate / 1000000ULL;
	if (tokens > burst)
		tokens = burst;
	b->last_ns = now;
	if (tokens < WARREN_MILLI) {
		b->tokens = tokens;
		return 0;
	}
	b->tokens = tokens - WARREN_MILLI;
	return 1;
}

static __always_inline __u32 slot_index(__u32 table, __u32 slot)
{
	return table * WARREN_SLOTS + slot;
}

/* Picks a backend from the service's active table; returns its id or 0. */
static __always_inline __u32 pick_backend(__u32 svc_id, const struct warren_svc_state *st, __u32 kind,
					  struct warren_backend **out)
{
	__u32 idx, *id;
	struct warren_backend *be;
	__u16 n = kind == WARREN_KIND_LOCAL ? st->backends_local : st->backends_all;
	__u32 table = kind == WARREN_KIND_LOCAL ? st->table_local : st->table_all;

	if (!n || !table || table >= WARREN_MAX_TABLES)
		return 0;
	idx = slot_index(table, bpf_get_prandom_u32() & (WARREN_SLOTS - 1));
	id = bpf_map_lookup_elem(&warren_slot_v1, &idx);
	if (!id || !*id)
		return 0;
	be = bpf_map_lookup_elem(&warren_be_v1, id);
	if (!be || !(be->flags & WARREN_BE_F_ACTIVE) || be->svc_id != svc_id)
		return 0;
	*out = be;
	return *id;
}

static __always_inline __u32 svc_kind(const struct warren_svc_value *svc)
{
	return (svc->flags & WARREN_SVC_F_HOST_MODE) ? WARREN_KIND_LOCAL : WARREN_KIND_ALL;
}

#endif /* WARREN_LB_H */
