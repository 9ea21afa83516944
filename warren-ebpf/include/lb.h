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
#include "bucket.h"


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
	return bpf_map_lookup_elem(&warren_state_v2, &svc_id);
}

static __always_inline void count_drop(__u32 svc_id, __u32 reason)
{
	struct warren_svc_counters *c = bpf_map_lookup_elem(&warren_svcc_v2, &svc_id);

	if (c && reason < WARREN_DROP_REASONS)
		c->drops[reason]++;
}

static __always_inline void count_conn(__u32 svc_id, __u32 backend_id)
{
	struct warren_svc_counters *c = bpf_map_lookup_elem(&warren_svcc_v2, &svc_id);
	struct warren_backend_counters *b = bpf_map_lookup_elem(&warren_bec_v1, &backend_id);

	if (c)
		c->conns++;
	if (b)
		b->conns++;
}

static __always_inline void count_packet(__u32 svc_id, __u32 backend_id, __u32 len)
{
	struct warren_svc_counters *c = bpf_map_lookup_elem(&warren_svcc_v2, &svc_id);
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

/* Set by the loader when the kernel has BPF atomic fetch and cmpxchg (5.12+). */
volatile const __u32 warren_atomics = 0;

/*
 * Token bucket per (service, client): 1 when a new connection (or new UDP flow)
 * may pass. The arithmetic is bucket.h's; a client's first connection creates a
 * full bucket less one token.
 */
static __always_inline int rate_allow(__u32 svc_id, const struct warren_svc_state *st, __be32 client,
				      __u64 netns)
{
	struct warren_rl_key key = {};
	struct warren_rl_value *b, fresh;
	__u64 now, burst, rate;

	rate = st->rate_per_sec;
	if (!rate)
		return 1;
	burst = st->rate_burst;
	if (!burst)
		burst = 1;

	key.svc_id = svc_id;
	__builtin_memcpy(key.client, &client, sizeof(key.client));
	key.netns = netns;
	now = bpf_ktime_get_ns();
	b = bpf_map_lookup_elem(&warren_rl_v2, &key);
	if (!b) {
		bucket_init(&fresh, now, burst);
		if (bpf_map_update_elem(&warren_rl_v2, &key, &fresh, BPF_NOEXIST) == 0)
			return 1;
		/* another CPU created it first */
		b = bpf_map_lookup_elem(&warren_rl_v2, &key);
		if (!b)
			return 1;
	}
	return bucket_take(b, now, rate, burst, warren_atomics);
}

/*
 * Picks a backend from the service's active Maglev table of `kind` at
 * `hash % size` (the tc path hashes the 5-tuple, the socket path, which has no
 * source port yet, draws a random number); returns its id or 0.
 */
static __always_inline __u32 pick_backend(__u32 svc_id, const struct warren_svc_state *st, __u32 kind,
					  __u32 hash, struct warren_backend **out)
{
	__u32 idx, *id, table, size;
	struct warren_backend *be;
	__u16 n;

	if (kind == WARREN_KIND_LOCAL) {
		n = st->backends_local;
		table = st->table_local;
		size = st->size_local;
	} else {
		n = st->backends_all;
		table = st->table_all;
		size = st->size_all;
	}
	if (!n || !table || !size)
		return 0;
	idx = table + hash % size;
	if (idx >= WARREN_SLOT_POOL)
		return 0;
	id = bpf_map_lookup_elem(&warren_slot_v2, &idx);
	if (!id || !*id)
		return 0;
	be = bpf_map_lookup_elem(&warren_be_v1, id);
	if (!be || !(be->flags & WARREN_BE_F_ACTIVE) || be->svc_id != svc_id)
		return 0;
	*out = be;
	return *id;
}

/* A hash of a flow's 5-tuple for the tc path (murmur3's finalizer over a mix). */
static __always_inline __u32 flow_hash(__be32 saddr, __be32 daddr, __be16 sport, __be16 dport, __u8 proto)
{
	__u32 h = saddr * 0x9e3779b1U;

	h ^= daddr + 0x7f4a7c15U + (h << 6) + (h >> 2);
	h ^= (((__u32)sport << 16) | dport) + 0x85ebca6bU + (h << 6) + (h >> 2);
	h ^= proto;
	h ^= h >> 16;
	h *= 0x85ebca6bU;
	h ^= h >> 13;
	h *= 0xc2b2ae35U;
	h ^= h >> 16;
	return h;
}

/*
 * The table a new connection picks from: a host-mode port's local backends only;
 * a prefer-local service's local backends while it has any (the plan builds that
 * table from ready, non-draining backends only, so "any" means "any healthy"),
 * else every backend.
 */
static __always_inline __u32 svc_kind(const struct warren_svc_value *svc, const struct warren_svc_state *st)
{
	if (svc->flags & WARREN_SVC_F_HOST_MODE)
		return WARREN_KIND_LOCAL;
	if ((st->flags & WARREN_SVC_S_PREFER_LOCAL) && st->backends_local && st->table_local)
		return WARREN_KIND_LOCAL;
	return WARREN_KIND_ALL;
}

#endif /* WARREN_LB_H */
