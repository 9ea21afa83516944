/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * The socket load balancer: translation of a socket's destination at connect()
 * and sendmsg(), and back at recvmsg() and getpeername(), for AF_INET sockets and
 * AF_INET6 sockets talking to IPv4-mapped addresses (::ffff:a.b.c.d, dual-stack
 * sockets such as Java's); the published-port bind guard. No program here: the
 * SEC() entries in warren.bpf.c pass `v6` as a constant, so each program keeps
 * only the context fields of its own family.
 */
#ifndef WARREN_SOCK_H
#define WARREN_SOCK_H

#include "lb.h"
#include "events.h"

#define SYS_REJECT 0
#define SYS_PROCEED 1

#define SOCK_DGRAM 2

#define EPERM 1
#define EADDRINUSE 98
#define ECONNREFUSED 111

/* Set by the loader when the kernel has bpf_set_retval for cgroup programs
 * (5.18+); before, a refusal is the kernel's EPERM. The verifier never sees the
 * branch that calls it when this is 0. */
volatile const __u32 warren_set_retval = 0;

/* An unconnected UDP socket's flow to a service address ends after this long
 * without a datagram: the next one is a new flow, charged and balanced again. The
 * loader sets the connection tracking's UDP timeout. */
volatile const __u64 warren_udp_idle_ns = 60000000000ULL;

/* Refuses a socket operation with -err where the kernel lets a program choose. */
static __always_inline int sys_reject(int err)
{
	if (warren_set_retval)
		bpf_set_retval(-err);
	return SYS_REJECT;
}

/* ::ffff:0:0/96 */
static __always_inline int v4_mapped(const __u32 *w)
{
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff);
}

/* The IPv4 destination of a socket operation, 0 when there is none (an IPv6
 * socket talking to a native IPv6 address). */
static __always_inline __be32 sock_daddr(struct bpf_sock_addr *ctx, int v6)
{
	__u32 w[4];

	if (!v6)
		return ctx->user_ip4;
	w[0] = ctx->user_ip6[0];
	w[1] = ctx->user_ip6[1];
	w[2] = ctx->user_ip6[2];
	w[3] = ctx->user_ip6[3];
	return v4_mapped(w) ? w[3] : 0;
}

static __always_inline void sock_set_daddr(struct bpf_sock_addr *ctx, int v6, __be32 addr)
{
	if (v6)
		ctx->user_ip6[3] = addr; /* the ::ffff: prefix stays */
	else
		ctx->user_ip4 = addr;
}

/* The client a token bucket is kept for: the bound IPv4 source address, or for
 * an unbound socket its network namespace (one task). */
static __always_inline void sock_client(struct bpf_sock_addr *ctx, int sendmsg, int v6, __be32 *addr,
					__u64 *netns)
{
	struct bpf_sock *sk = ctx->sk;
	__be32 src = 0;
	__u32 w[4];

	if (!v6) {
		if (sendmsg)
			src = ctx->msg_src_ip4;
		if (!src && sk)
			src = sk->src_ip4;
	} else if (sk) {
		w[0] = sk->src_ip6[0];
		w[1] = sk->src_ip6[1];
		w[2] = sk->src_ip6[2];
		w[3] = sk->src_ip6[3];
		if (v4_mapped(w))
			src = w[3];
	}
	*addr = src;
	*netns = src ? 0 : bpf_get_netns_cookie(ctx);
}

/*
 * Translates a socket's destination from a service address to a backend. For
 * connect() the choice is made once per socket; for unconnected UDP (sendmsg) the
 * socket keeps its backend per service address (warren_aff_v2) so that a
 * request/response exchange stays on one backend.
 */
static __always_inline int sock_xlate(struct bpf_sock_addr *ctx, int sendmsg, int v6)
{
	__u8 proto = ctx->protocol;
	__be32 daddr = sock_daddr(ctx, v6);
	__be16 dport = (__be16)ctx->user_port;
	struct warren_svc_value *svc;
	struct warren_svc_state *st;
	struct warren_backend *be = NULL;
	struct warren_sock_key skey = {};
	struct warren_revnat rnat = {}, *known;
	struct warren_affinity *aff;
	__u32 svc_id, be_id = 0;
	__u64 now = 0;
	__be16 tport;
	__be32 client;
	__u64 netns;

	if (!daddr || (proto != IPPROTO_TCP && proto != IPPROTO_UDP))
		return SYS_PROCEED;
	svc = svc_lookup(daddr, dport, proto, 1, is_loopback(daddr) ? bpf_get_netns_cookie(ctx) : 0);
	if (!svc)
		return SYS_PROCEED;
	svc_id = svc->svc_id;
	sock_client(ctx, sendmsg, v6, &client, &netns);
	if (svc->flags & WARREN_SVC_F_REFUSE) {
		drop(svc_id, WARREN_DROP_NO_BACKEND, client, dport, proto, WARREN_SRC_SOCK);
		return sys_reject(ECONNREFUSED);
	}
	st = svc_state(svc_id);
	if (!st)
		return SYS_PROCEED;

	skey.cookie = bpf_get_socket_cookie(ctx);
	if (sendmsg) {
		/* An unconnected socket keeps its backend per service address: a
		 * datagram of a known flow is neither charged nor balanced again. */
		skey.addr = daddr;
		skey.port = dport;
		now = bpf_ktime_get_ns();
		aff = bpf_map_lookup_elem(&warren_aff_v2, &skey);
		if (aff && aff->svc_id == svc_id && now - aff->last_ns < warren_udp_idle_ns) {
			__u32 id = aff->backend_id;

			be = bpf_map_lookup_elem(&warren_be_v1, &id);
			if (be && (be->flags & WARREN_BE_F_ACTIVE) && be->svc_id == svc_id) {
				be_id = id;
				/* Refreshed an eighth of the timeout apart, not
				 * per datagram. */
				if (now - aff->last_ns > warren_udp_idle_ns >> 3)
					aff->last_ns = now;
			} else {
				be = NULL;
			}
		}
	}
	if (!be) {
		/* A new connection, or a new UDP flow: charged once. */
		if (!rate_allow(svc_id, st, client, netns)) {
			drop(svc_id, WARREN_DROP_RATE_LIMITED, client, dport, proto, WARREN_SRC_SOCK);
			return sys_reject(ECONNREFUSED);
		}
		be_id = pick_backend(svc_id, st, svc_kind(svc, st), bpf_get_prandom_u32(), &be);
		if (!be_id || !be) {
			drop(svc_id, WARREN_DROP_NO_BACKEND, client, dport, proto, WARREN_SRC_SOCK);
			return sys_reject(ECONNREFUSED);
		}
		count_conn(svc_id, be_id);
		if (sendmsg) {
			struct warren_affinity a = { .backend_id = be_id, .svc_id = svc_id, .last_ns = now };

			bpf_map_update_elem(&warren_aff_v2, &skey, &a, BPF_ANY);
		}
	}
	if (sendmsg)
		count_packet(svc_id, be_id, 0);

	tport = svc->target_port ? svc->target_port : dport;
	if (!sendmsg && warren_sk_storage) {
		struct warren_sock_state *ss;

		ss = bpf_sk_storage_get(&warren_sks_v1, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (ss) {
			ss->backend_addr = be->addr;
			ss->backend_port = tport;
			ss->svc_addr = daddr;
			ss->svc_port = dport;
			goto translate;
		}
	}
	/* Written only when it changes: a UDP socket's every datagram passes here. */
	skey.addr = be->addr;
	skey.port = tport;
	known = bpf_map_lookup_elem(&warren_rnat_v1, &skey);
	if (!known || known->addr != daddr || known->port != dport) {
		rnat.addr = daddr;
		rnat.port = dport;
		bpf_map_update_elem(&warren_rnat_v1, &skey, &rnat, BPF_ANY);
	}

translate:
	sock_set_daddr(ctx, v6, be->addr);
	ctx->user_port = (__u32)tport;
	return SYS_PROCEED;
}

/* Shows the service address instead of the backend (recvmsg source, getpeername). */
static __always_inline void sock_revnat(struct bpf_sock_addr *ctx, int v6)
{
	struct warren_sock_key key = {};
	struct warren_revnat *r;

	key.addr = sock_daddr(ctx, v6);
	if (!key.addr)
		return;
	key.port = (__be16)ctx->user_port;
	if (warren_sk_storage) {
		struct warren_sock_state *ss = bpf_sk_storage_get(&warren_sks_v1, ctx->sk, 0, 0);

		if (ss && ss->backend_addr == key.addr && ss->backend_port == key.port) {
			sock_set_daddr(ctx, v6, ss->svc_addr);
			ctx->user_port = (__u32)ss->svc_port;
			return;
		}
	}
	key.cookie = bpf_get_socket_cookie(ctx);
	r = bpf_map_lookup_elem(&warren_rnat_v1, &key);
	if (!r)
		return;
	sock_set_daddr(ctx, v6, r->addr);
	ctx->user_port = (__u32)r->port;
}

/*
 * A host socket bound to a published port (on any, a node or a loopback address)
 * would never see a connection: the data plane sends them to the service. The
 * bind is refused (EADDRINUSE where the kernel has bpf_set_retval, EPERM before)
 * instead of leaving a silently shadowed listener. Tasks are not concerned: their
 * own ports live in their own namespaces.
 */
static __always_inline int sock_post_bind(struct bpf_sock *sk, int v6)
{
	struct warren_svc_key key = {};
	struct warren_svc_value *svc;
	__be32 addr = 0;
	__u32 w[4];

	if (v6) {
		/* [::] (dual-stack unless IPV6_V6ONLY) or ::ffff:<node address> */
		w[0] = sk->src_ip6[0];
		w[1] = sk->src_ip6[1];
		w[2] = sk->src_ip6[2];
		w[3] = sk->src_ip6[3];
		if (v4_mapped(w))
			addr = w[3];
		else if (w[0] | w[1] | w[2] | w[3])
			return SYS_PROCEED;
	} else {
		addr = sk->src_ip4;
	}
	if (sk->protocol != IPPROTO_TCP && sk->protocol != IPPROTO_UDP)
		return SYS_PROCEED;
	if (!warren_host_netns || bpf_get_netns_cookie(sk) != warren_host_netns)
		return SYS_PROCEED;
	if (addr && !is_node_addr(addr, warren_host_netns))
		return SYS_PROCEED;
	key.port = bpf_htons((__u16)sk->src_port);
	key.proto = sk->protocol;
	svc = bpf_map_lookup_elem(&warren_svc_v1, &key);
	if (!svc || !(svc->flags & WARREN_SVC_F_NODEPORT))
		return SYS_PROCEED;
	return sys_reject(EADDRINUSE);
}

#endif /* WARREN_SOCK_H */
