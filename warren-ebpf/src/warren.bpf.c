// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
/*
 * The Warren data plane: socket load balancing (cgroup connect, sendmsg, recvmsg,
 * getpeername for IPv4 and IPv4-mapped IPv6), the published-port bind guard
 * (post_bind4) and published ports from the wire (tc ingress/egress). Each SEC()
 * entry is a thin call into include/ (sock.h, lb.h); the loader is
 * warren::dataplane.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "sock.h"

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* SNAT ports tried when the client's own port is taken (above the default
 * ip_local_port_range, so the node's own connections rarely collide). */
#define SNAT_PORT_MIN 61000
#define SNAT_PORT_SPAN 4535
#define SNAT_TRIES 4

char _license[] SEC("license") = "Dual BSD/GPL";

/* Never read: it puts struct warren_event into the object's BTF, where the layout
 * test finds it (ring buffer records carry no type). */
volatile const struct warren_event warren_event_layout = {};

/* ---------------------------------------------------------------- sockets */

SEC("cgroup/connect4")
int warren_connect4(struct bpf_sock_addr *ctx)
{
	return sock_xlate(ctx, 0, 0);
}

SEC("cgroup/connect6")
int warren_connect6(struct bpf_sock_addr *ctx)
{
	return sock_xlate(ctx, 0, 1);
}

SEC("cgroup/sendmsg4")
int warren_sendmsg4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_DGRAM)
		return SYS_PROCEED;
	return sock_xlate(ctx, 1, 0);
}

SEC("cgroup/sendmsg6")
int warren_sendmsg6(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_DGRAM)
		return SYS_PROCEED;
	return sock_xlate(ctx, 1, 1);
}

SEC("cgroup/recvmsg4")
int warren_recvmsg4(struct bpf_sock_addr *ctx)
{
	if (ctx->type == SOCK_DGRAM)
		sock_revnat(ctx, 0);
	return SYS_PROCEED;
}

SEC("cgroup/recvmsg6")
int warren_recvmsg6(struct bpf_sock_addr *ctx)
{
	if (ctx->type == SOCK_DGRAM)
		sock_revnat(ctx, 1);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int warren_getpeer4(struct bpf_sock_addr *ctx)
{
	sock_revnat(ctx, 0);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int warren_getpeer6(struct bpf_sock_addr *ctx)
{
	sock_revnat(ctx, 1);
	return SYS_PROCEED;
}

SEC("cgroup/post_bind4")
int warren_post_bind4(struct bpf_sock *sk)
{
	return sock_post_bind(sk, 0);
}

SEC("cgroup/post_bind6")
int warren_post_bind6(struct bpf_sock *sk)
{
	return sock_post_bind(sk, 1);
}

/* --------------------------------------------------------------------- tc */

#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))

/* Rewrites the packet's tuple from *k to *v, fixing the IP and L4 checksums. */
static __always_inline int tc_rewrite(struct __sk_buff *skb, __u32 l4off, __u8 proto,
				      const struct warren_ct_key *k, const struct warren_ct_value *v)
{
	__u32 csum_off = l4off + (proto == IPPROTO_TCP ? 16 : 6);
	__u64 mangled = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__be32 saddr = v->saddr, daddr = v->daddr;
	__be16 sport = v->sport, dport = v->dport;

	if (k->saddr != saddr) {
		if (bpf_l4_csum_replace(skb, csum_off, k->saddr, saddr,
					mangled | BPF_F_PSEUDO_HDR | sizeof(saddr)) < 0 ||
		    bpf_l3_csum_replace(skb, IP_CSUM_OFF, k->saddr, saddr, sizeof(saddr)) < 0 ||
		    bpf_skb_store_bytes(skb, IP_SRC_OFF, &saddr, sizeof(saddr), 0) < 0)
			return -1;
	}
	if (k->daddr != daddr) {
		if (bpf_l4_csum_replace(skb, csum_off, k->daddr, daddr,
					mangled | BPF_F_PSEUDO_HDR | sizeof(daddr)) < 0 ||
		    bpf_l3_csum_replace(skb, IP_CSUM_OFF, k->daddr, daddr, sizeof(daddr)) < 0 ||
		    bpf_skb_store_bytes(skb, IP_DST_OFF, &daddr, sizeof(daddr), 0) < 0)
			return -1;
	}
	if (k->sport != sport) {
		if (bpf_l4_csum_replace(skb, csum_off, k->sport, sport, mangled | sizeof(sport)) < 0 ||
		    bpf_skb_store_bytes(skb, l4off, &sport, sizeof(sport), 0) < 0)
			return -1;
	}
	if (k->dport != dport) {
		if (bpf_l4_csum_replace(skb, csum_off, k->dport, dport, mangled | sizeof(dport)) < 0 ||
		    bpf_skb_store_bytes(skb, l4off + 2, &dport, sizeof(dport), 0) < 0)
			return -1;
	}
	return 0;
}

#define AF_INET 2

/* Set by the loader when the kernel has bpf_redirect_neigh (5.10+); on older
 * kernels the verifier never sees the dead branch that calls it. */
volatile const __u32 warren_redirect_neigh = 0;

/*
 * Forwards a translated packet straight to its next hop. Going back through the
 * stack would drop a packet whose source became the node's own address (SNAT:
 * "martian source"), so the route is used directly, with bpf_redirect_neigh when
 * the neighbour is not resolved yet (5.10+). Anything else (a local destination,
 * forwarding disabled) is left to the stack.
 *
 * A flow to a local backend without SNAT goes through the stack instead: the
 * node's netfilter conntrack must see its first packet, or the backend's reply
 * looks like a new flow to it and the node's outbound masquerade rewrites it.
 */
static __always_inline int tc_forward(struct __sk_buff *skb, const struct iphdr *iph, __be32 saddr,
				      __be32 daddr, __be16 sport, __be16 dport)
{
	struct bpf_fib_lookup fib = {};
	__be16 old_word, new_word;
	__u8 ttl = iph->ttl;
	int rc;

	fib.family = AF_INET;
	fib.l4_protocol = iph->protocol;
	fib.sport = sport;
	fib.dport = dport;
	fib.tot_len = bpf_ntohs(iph->tot_len);
	fib.ipv4_src = saddr;
	fib.ipv4_dst = daddr;
	fib.ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (ttl <= 1)
		return TC_ACT_OK; /* the stack sends the ICMP time exceeded */
	if (rc != BPF_FIB_LKUP_RET_SUCCESS &&
	    !(rc == BPF_FIB_LKUP_RET_NO_NEIGH && warren_redirect_neigh))
		return TC_ACT_OK;

	/* Forwarding decrements the TTL, as the stack would. */
	old_word = bpf_htons(((__u16)ttl << 8) | iph->protocol);
	new_word = bpf_htons(((__u16)(ttl - 1) << 8) | iph->protocol);
	ttl--;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_word, new_word, 2) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, ttl), &ttl, 1, 0) < 0)
		return TC_ACT_SHOT;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
	if (bpf_skb_store_bytes(skb, 0, fib.dmac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, fib.smac, ETH_ALEN, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(fib.ifindex, 0);
}

static __always_inline int ct_backend_alive(const struct warren_ct_value *ct)
{
	__u32 id = ct->backend_id;
	struct warren_backend *be = bpf_map_lookup_elem(&warren_be_v1, &id);

	return be && (be->flags & WARREN_BE_F_ACTIVE) && be->svc_id == ct->svc_id;
}

/*
 * Creates the two connection-tracking entries of a new flow to a published port
 * and returns the forward translation in *fwd. With SNAT the reply entry's key
 * contains the node address and the source port, so a port already used by
 * another client is replaced by a free one.
 */
static __always_inline int ct_create(const struct warren_ct_key *key, __be32 be_addr, __be16 tport,
				     __u32 svc_id, __u32 be_id, int snat, struct warren_ct_value *fwd)
{
	struct warren_ct_key rkey = {};
	struct warren_ct_value rval = {};
	struct warren_ct_value *old;
	__u64 now = bpf_ktime_get_ns();
	int i;

	fwd->saddr = snat ? key->daddr : key->saddr;
	fwd->daddr = be_addr;
	fwd->sport = key->sport;
	fwd->dport = tport;
	fwd->svc_id = svc_id;
	fwd->backend_id = be_id;
	fwd->flags = snat ? WARREN_CT_F_SNAT : 0;
	fwd->last_seen_ns = now;

	rkey.saddr = be_addr;
	rkey.daddr = fwd->saddr;
	rkey.sport = tport;
	rkey.dport = fwd->sport;
	rkey.proto = key->proto;

	rval.saddr = key->daddr;
	rval.daddr = key->saddr;
	rval.sport = key->dport;
	rval.dport = key->sport;
	rval.svc_id = svc_id;
	rval.backend_id = be_id;
	rval.flags = WARREN_CT_F_REPLY | fwd->flags;
	rval.last_seen_ns = now;

	if (!snat) {
		if (bpf_map_update_elem(&warren_ct_v1, &rkey, &rval, BPF_ANY) < 0)
			return WARREN_DROP_CT_FULL;
	} else {
		old = bpf_map_lookup_elem(&warren_ct_v1, &rkey);
		/* The same client again (a retransmitted SYN after a lost entry) keeps its port. */
		if (!old || (old->daddr == key->saddr && old->dport == key->sport)) {
			if (bpf_map_update_elem(&warren_ct_v1, &rkey, &rval, BPF_ANY) < 0)
				return WARREN_DROP_CT_FULL;
		} else {
			for (i = 0; i < SNAT_TRIES; i++) {
				__be16 p = bpf_htons(SNAT_PORT_MIN + bpf_get_prandom_u32() % SNAT_PORT_SPAN);

				rkey.dport = p;
				if (bpf_map_update_elem(&warren_ct_v1, &rkey, &rval, BPF_NOEXIST) == 0) {
					fwd->sport = p;
					break;
				}
			}
			if (i == SNAT_TRIES)
				return WARREN_DROP_SNAT_EXHAUSTED;
		}
	}
	if (bpf_map_update_elem(&warren_ct_v1, key, fwd, BPF_ANY) < 0) {
		bpf_map_delete_elem(&warren_ct_v1, &rkey);
		return WARREN_DROP_CT_FULL;
	}
	return -1;
}

static __always_inline int tc_handle(struct __sk_buff *skb, int ingress)
{
	struct iphdr iph;
	__be16 ports[2];
	__u8 tcp_flags = 0;
	__u32 l4off, svc_id, be_id;
	struct warren_ct_key key = {};
	struct warren_ct_value *ct, fwd = {};
	struct warren_svc_value *svc;
	struct warren_svc_state *st;
	struct warren_backend *be = NULL;
	__be16 tport;
	int reason;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &iph, sizeof(iph)) < 0)
		return TC_ACT_OK;
	if (iph.version != 4 || (iph.protocol != IPPROTO_TCP && iph.protocol != IPPROTO_UDP))
		return TC_ACT_OK;
	/* Fragments after the first carry no ports. */
	if (iph.frag_off & bpf_htons(0x3fff))
		return TC_ACT_OK;
	l4off = ETH_HLEN + (iph.ihl & 0xf) * 4;
	if (bpf_skb_load_bytes(skb, l4off, ports, sizeof(ports)) < 0)
		return TC_ACT_OK;
	if (iph.protocol == IPPROTO_TCP && bpf_skb_load_bytes(skb, l4off + 13, &tcp_flags, 1) < 0)
		return TC_ACT_OK;

	key.saddr = iph.saddr;
	key.daddr = iph.daddr;
	key.sport = ports[0];
	key.dport = ports[1];
	key.proto = iph.protocol;

	ct = bpf_map_lookup_elem(&warren_ct_v1, &key);
	if (ct && !(ct->flags & WARREN_CT_F_REPLY) && !ct_backend_alive(ct))
		/* The backend left the service: a new flow picks another one; anything
		 * else reaches the node untranslated and is reset, so the client retries. */
		ct = NULL;
	if (ct) {
		ct->last_seen_ns = bpf_ktime_get_ns();
		count_packet(ct->svc_id, ct->backend_id, skb->len);
		fwd = *ct;
		if (tc_rewrite(skb, l4off, key.proto, &key, &fwd) < 0)
			return TC_ACT_SHOT;
		if (!ingress || !(fwd.flags & (WARREN_CT_F_SNAT | WARREN_CT_F_REPLY)))
			return TC_ACT_OK;
		return tc_forward(skb, &iph, fwd.saddr, fwd.daddr, fwd.sport, fwd.dport);
	}
	if (!ingress)
		return TC_ACT_OK;

	svc = svc_lookup(iph.daddr, ports[1], iph.protocol, 0, 0);
	if (!svc || !(svc->flags & WARREN_SVC_F_NODEPORT))
		return TC_ACT_OK;
	/* Only a SYN opens a TCP flow; a stray segment is left to the node's stack. */
	if (key.proto == IPPROTO_TCP && (!(tcp_flags & TCP_FLAG_SYN) || (tcp_flags & TCP_FLAG_ACK)))
		return TC_ACT_OK;
	svc_id = svc->svc_id;
	st = svc_state(svc_id);
	if (!st)
		return TC_ACT_OK;
	if (!rate_allow(svc_id, st, iph.saddr, 0)) {
		drop(svc_id, WARREN_DROP_RATE_LIMITED, iph.saddr, ports[1], key.proto, WARREN_SRC_TC);
		return TC_ACT_SHOT;
	}
	be_id = pick_backend(svc_id, st, svc_kind(svc),
			     flow_hash(iph.saddr, iph.daddr, ports[0], ports[1], iph.protocol), &be);
	if (!be_id || !be) {
		drop(svc_id, WARREN_DROP_NO_BACKEND, iph.saddr, ports[1], key.proto, WARREN_SRC_TC);
		return TC_ACT_SHOT;
	}
	tport = svc->target_port ? svc->target_port : ports[1];
	reason = ct_create(&key, be->addr, tport, svc_id, be_id, !(be->flags & WARREN_BE_F_LOCAL), &fwd);
	if (reason >= 0) {
		drop(svc_id, reason, iph.saddr, ports[1], key.proto, WARREN_SRC_TC);
		return TC_ACT_SHOT;
	}
	count_conn(svc_id, be_id);
	count_packet(svc_id, be_id, skb->len);
	if (tc_rewrite(skb, l4off, key.proto, &key, &fwd) < 0)
		return TC_ACT_SHOT;
	if (!(fwd.flags & WARREN_CT_F_SNAT))
		return TC_ACT_OK;
	return tc_forward(skb, &iph, fwd.saddr, fwd.daddr, fwd.sport, fwd.dport);
}

SEC("classifier")
int warren_tc_in(struct __sk_buff *skb)
{
	return tc_handle(skb, 1);
}

SEC("classifier")
int warren_tc_out(struct __sk_buff *skb)
{
	return tc_handle(skb, 0);
}
