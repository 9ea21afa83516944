/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * Connection outcomes per backend, from the client side of each socket that the
 * socket load balancer translated (its warren_rnat_v1 entry says so): socket load
 * balancing sees no packets, but the kernel tells a sockops program when such a
 * socket connects, is established, and changes TCP state. Counted per CPU in
 * warren_beo_v1 by backend address; the daemon sums, names the task and reports
 * it to the managers (canary analysis) and to Prometheus.
 */
#ifndef WARREN_OUTCOME_H
#define WARREN_OUTCOME_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"

enum warren_outcome { OUTCOME_ESTABLISHED, OUTCOME_RESET, OUTCOME_REFUSED, OUTCOME_TIMED_OUT };

/* sock_ops' remote_port is the network-order port in the upper half on a
 * little-endian machine (the kernel shifts it there), in the lower half otherwise. */
static __always_inline __be16 skops_remote_port(struct bpf_sock_ops *skops)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return (__be16)(skops->remote_port >> 16);
#else
	return (__be16)skops->remote_port;
#endif
}

/* Whether the load balancer translated this socket's connect to its peer. */
static __always_inline int skops_balanced(struct bpf_sock_ops *skops)
{
	struct warren_sock_key key = {};

	if (skops->family != 2 /* AF_INET */)
		return 0;
	key.addr = skops->remote_ip4;
	key.port = skops_remote_port(skops);
	if (warren_sk_storage) {
		struct bpf_sock *sk = skops->sk;
		struct warren_sock_state *ss;

		if (sk) {
			ss = bpf_sk_storage_get(&warren_sks_v1, sk, 0, 0);
			if (ss && ss->backend_addr == key.addr && ss->backend_port == key.port)
				return 1;
		}
	}
	key.cookie = bpf_get_socket_cookie(skops);
	return bpf_map_lookup_elem(&warren_rnat_v1, &key) != NULL;
}

static __always_inline void outcome_count(struct bpf_sock_ops *skops, enum warren_outcome o)
{
	struct warren_outcome_key key = {};
	struct warren_backend_outcomes zero = {}, *v;
	__be32 addr = skops->remote_ip4;

	__builtin_memcpy(key.addr, &addr, 4);
	v = bpf_map_lookup_elem(&warren_beo_v1, &key);
	if (!v) {
		bpf_map_update_elem(&warren_beo_v1, &key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&warren_beo_v1, &key);
		if (!v)
			return;
	}
	/* Per CPU: plain increments. */
	switch (o) {
	case OUTCOME_ESTABLISHED:
		v->established++;
		break;
	case OUTCOME_RESET:
		v->reset++;
		break;
	case OUTCOME_REFUSED:
		v->refused++;
		break;
	case OUTCOME_TIMED_OUT:
		v->timed_out++;
		break;
	}
}

/* The TCP states of enum bpf_tcp_state that matter here. */
#define OUT_TCP_ESTABLISHED 1
#define OUT_TCP_SYN_SENT 2
#define OUT_TCP_CLOSE 7

static __always_inline int outcome_sockops(struct bpf_sock_ops *skops)
{
	int watched = skops->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		/* Ask for state changes of balanced sockets only. */
		if (skops_balanced(skops))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		if (watched)
			outcome_count(skops, OUTCOME_ESTABLISHED);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != OUT_TCP_CLOSE)
			break;
		/* A close from SYN_SENT is a reset answering the SYN, or the SYN
		 * retries running out; from ESTABLISHED, a reset. An orderly close
		 * passes through FIN_WAIT or CLOSE_WAIT first; a reset after the
		 * peer's FIN (CLOSE_WAIT) ends an answered exchange and is not
		 * counted. */
		if (skops->args[0] == OUT_TCP_SYN_SENT)
			outcome_count(skops, skops->total_retrans ? OUTCOME_TIMED_OUT : OUTCOME_REFUSED);
		else if (skops->args[0] == OUT_TCP_ESTABLISHED)
			outcome_count(skops, OUTCOME_RESET);
		break;
	}
	return 1;
}

#endif /* WARREN_OUTCOME_H */
