// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
/*
 * The Warren data plane: socket load balancing (cgroup connect, sendmsg, recvmsg,
 * getpeername for IPv4 and IPv4-mapped IPv6), the published-port bind guard
 * (post_bind4), connection outcomes per backend (sockops) and published ports
 * from the wire (tc ingress/egress). Each SEC()
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
#include "outcome.h"

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11

/* SNAT source ports: warren_snat_min .. warren_snat_min + warren_snat_span - 1,
 * set by the loader, which also reserves them from the node's ephemeral ports
 * (net.ipv4.ip_local_reserved_ports). A port is taken only when no flow and no
 * node socket uses it towards the backend; this many are tried, in order from a
 * random start. */
volatile const __u32 warren_snat_min = 61000;
volatile const __u32 warren_snat_span = 4536;
#define SNAT_TRIES 8

char _license[] SEC("license") = "Dual BSD/GPL";

/* Never read: it puts struct warren_event into the object's BTF, where the layout
 * test finds it (ring buffer records carry no type). */
volatile const struct warren_event warren_event_layout = {};

/* ---------------------------------------------------------------- sockets */

SEC("sockops")
int warren_sockops(struct bpf_sock_ops *skops)
{
	return outcome_sockops(skops);
}

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

/* tc_forward(): the route says the destination cannot be reached. */
#define TC_NO_ROUTE 1000

/*
 * Forwards a translated packet straight to its next hop. Going back through the
 * stack would drop a packet whose source became the node's own address (SNAT:
 * "martian source"), so the route is used directly, with bpf_redirect_neigh when
 * the neighbour is not resolved yet (5.10+). A blackhole, unreachable or
 * prohibit route returns TC_NO_ROUTE (the caller drops and counts it; the stack
 * would drop it silently). Anything else (a local destination, forwarding
 * disabled) is left to the stack.
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
	if (rc == BPF_FIB_LKUP_RET_BLACKHOLE || rc == BPF_FIB_LKUP_RET_UNREACHABLE ||
	    rc == BPF_FIB_LKUP_RET_PROHIBIT)
		return TC_NO_ROUTE;
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

/* tc_forward() for a packet of service svc_id, whose client is (client, port):
 * a packet with no route is dropped and counted. */
static __always_inline int tc_send(struct __sk_buff *skb, const struct iphdr *iph,
				   const struct warren_ct_value *to, __u32 svc_id, __be32 client,
				   __be16 port)
{
	int rc = tc_forward(skb, iph, to->saddr, to->daddr, to->sport, to->dport);

	if (rc != TC_NO_ROUTE)
		return rc;
	drop(svc_id, WARREN_DROP_NO_ROUTE, client, port, iph->protocol, WARREN_SRC_TC);
	return TC_ACT_SHOT;
}

/* Whether a forward entry's backend still is the one the flow was sent to: the
 * same id, service and address (an id reused for another task is another
 * backend). */
static __always_inline int ct_backend_alive(const struct warren_ct_value *ct)
{
	__u32 id = ct->backend_id;
	struct warren_backend *be = bpf_map_lookup_elem(&warren_be_v1, &id);

	return be && (be->flags & WARREN_BE_F_ACTIVE) && be->svc_id == ct->svc_id && be->addr == ct->daddr;
}

/* The flow has ended (a RST, or a FIN each way); the GC removes it after the
 * close timeout, and a new SYN on its tuple starts a new flow at once. */
static __always_inline int ct_closed(__u32 flags)
{
	return (flags & WARREN_CT_S_RST) ||
	       ((flags & WARREN_CT_S_FIN_FWD) && (flags & WARREN_CT_S_FIN_REPLY));
}

/* Adds state bits to an entry; written only when one is new. */
static __always_inline void ct_set(struct warren_ct_value *v, __u32 bits)
{
	if ((v->flags & bits) == bits)
		return;
	if (warren_atomics)
		__sync_fetch_and_or(&v->flags, bits);
	else
		v->flags |= bits;
}

/* The key of the other half of the flow an entry belongs to. */
static __always_inline void ct_other_key(const struct warren_ct_value *v, __u8 proto,
					 struct warren_ct_key *out)
{
	out->saddr = v->daddr;
	out->daddr = v->saddr;
	out->sport = v->dport;
	out->dport = v->sport;
	out->proto = proto;
}

/* Whether a node socket would take replies from the backend to node:port (an
 * established socket on that 4-tuple, or one bound to the port). */
static __always_inline int snat_port_in_use(struct __sk_buff *skb, __u8 proto, __be32 be_addr,
					    __be32 node_addr, __be16 tport, __be16 port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	t.ipv4.saddr = be_addr;
	t.ipv4.daddr = node_addr;
	t.ipv4.sport = tport;
	t.ipv4.dport = port;
	if (proto == IPPROTO_TCP)
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

#define E2BIG 7

/*
 * Takes the SNAT reply key `rkey` over from a flow that has ended (its forward
 * half is closed or gone): its port is free again at once, as a TIME_WAIT port
 * is for a new connection, rather than after the close timeout. 0 when taken.
 */
static __always_inline int ct_take_ended(const struct warren_ct_key *rkey,
					 const struct warren_ct_value *rval)
{
	struct warren_ct_key fkey = {};
	struct warren_ct_value *old, *f;

	old = bpf_map_lookup_elem(&warren_ct_v2, rkey);
	if (!old || !(old->flags & WARREN_CT_F_REPLY))
		return -1;
	ct_other_key(old, rkey->proto, &fkey);
	f = bpf_map_lookup_elem(&warren_ct_v2, &fkey);
	if (f) {
		if (!ct_closed(f->flags))
			return -1;
		if (f->daddr == rkey->saddr && f->sport == rkey->dport)
			bpf_map_delete_elem(&warren_ct_v2, &fkey);
	}
	return bpf_map_update_elem(&warren_ct_v2, rkey, rval, BPF_EXIST) == 0 ? 0 : -1;
}

/*
 * Creates the two connection-tracking entries of a new flow to a published port
 * and returns the forward translation in *fwd, or the drop reason. With SNAT the
 * source port comes from the reserved range, free of flows (the reply entry is
 * created with BPF_NOEXIST) and of node sockets.
 */
static __always_inline int ct_create(struct __sk_buff *skb, const struct warren_ct_key *key,
				     __be32 be_addr, __be16 tport, __u32 svc_id, __u32 be_id, int snat,
				     struct warren_ct_value *fwd)
{
	struct warren_ct_key rkey = {};
	struct warren_ct_value rval = {};
	__u64 now = bpf_ktime_get_ns();
	__u32 span = warren_snat_span, start;
	int i, err;

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
		if (bpf_map_update_elem(&warren_ct_v2, &rkey, &rval, BPF_ANY) < 0)
			return WARREN_DROP_CT_FULL;
	} else {
		if (!span)
			span = 1;
		start = bpf_get_prandom_u32() % span;
		for (i = 0; i < SNAT_TRIES; i++) {
			__be16 p = bpf_htons(warren_snat_min + (start + i) % span);

			if (snat_port_in_use(skb, key->proto, be_addr, key->daddr, tport, p))
				continue;
			rkey.dport = p;
			err = bpf_map_update_elem(&warren_ct_v2, &rkey, &rval, BPF_NOEXIST);
			if (err == 0) {
				fwd->sport = p;
				break;
			}
			if (err == -E2BIG)
				return WARREN_DROP_CT_FULL;
			if (ct_take_ended(&rkey, &rval) == 0) {
				fwd->sport = p;
				break;
			}
		}
		if (i == SNAT_TRIES)
			return WARREN_DROP_SNAT_EXHAUSTED;
	}
	if (bpf_map_update_elem(&warren_ct_v2, key, fwd, BPF_ANY) < 0) {
		bpf_map_delete_elem(&warren_ct_v2, &rkey);
		return WARREN_DROP_CT_FULL;
	}
	return -1;
}

/*
 * An ICMP error (destination unreachable, fragmentation needed, time exceeded)
 * about a packet Warren translated towards a backend: the quoted header is made
 * the client's again and the error sent on to the client. The inner addresses
 * change together with the inner IP checksum, which leaves the ICMP checksum
 * as it was; the inner ports are fixed into it. (The quoted L4 checksum is left:
 * no receiver checks it.)
 */
static __always_inline int tc_icmp(struct __sk_buff *skb, const struct iphdr *iph, __u32 l4off)
{
	struct warren_ct_key key = {};
	struct warren_ct_value *ct, r;
	struct iphdr in;
	__u8 type;
	__be16 ports[2];
	__be32 saddr;
	__u32 inoff = l4off + 8, inl4, icmp_csum = l4off + 2;
	__u32 in_csum = inoff + offsetof(struct iphdr, check);

	if (bpf_skb_load_bytes(skb, l4off, &type, 1) < 0)
		return TC_ACT_OK;
	if (type != ICMP_DEST_UNREACH && type != ICMP_TIME_EXCEEDED)
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, inoff, &in, sizeof(in)) < 0)
		return TC_ACT_OK;
	if (in.version != 4 || (in.protocol != IPPROTO_TCP && in.protocol != IPPROTO_UDP))
		return TC_ACT_OK;
	inl4 = inoff + (in.ihl & 0xf) * 4;
	if (bpf_skb_load_bytes(skb, inl4, ports, sizeof(ports)) < 0)
		return TC_ACT_OK;
	/* The quoted packet went node -> backend: its reverse is a reply entry. */
	key.saddr = in.daddr;
	key.daddr = in.saddr;
	key.sport = ports[1];
	key.dport = ports[0];
	key.proto = in.protocol;
	ct = bpf_map_lookup_elem(&warren_ct_v2, &key);
	if (!ct || !(ct->flags & WARREN_CT_F_REPLY))
		return TC_ACT_OK;
	r = *ct;
	/* A backend's own error would show its address: the client sees the node's. */
	saddr = iph->saddr == in.daddr ? r.saddr : iph->saddr;

	if (in.saddr != r.daddr &&
	    (bpf_l3_csum_replace(skb, in_csum, in.saddr, r.daddr, 4) < 0 ||
	     bpf_skb_store_bytes(skb, inoff + offsetof(struct iphdr, saddr), &r.daddr, 4, 0) < 0))
		return TC_ACT_SHOT;
	if (in.daddr != r.saddr &&
	    (bpf_l3_csum_replace(skb, in_csum, in.daddr, r.saddr, 4) < 0 ||
	     bpf_skb_store_bytes(skb, inoff + offsetof(struct iphdr, daddr), &r.saddr, 4, 0) < 0))
		return TC_ACT_SHOT;
	if (ports[0] != r.dport &&
	    (bpf_l4_csum_replace(skb, icmp_csum, ports[0], r.dport, 2) < 0 ||
	     bpf_skb_store_bytes(skb, inl4, &r.dport, 2, 0) < 0))
		return TC_ACT_SHOT;
	if (ports[1] != r.sport &&
	    (bpf_l4_csum_replace(skb, icmp_csum, ports[1], r.sport, 2) < 0 ||
	     bpf_skb_store_bytes(skb, inl4 + 2, &r.sport, 2, 0) < 0))
		return TC_ACT_SHOT;
	if (iph->daddr != r.daddr &&
	    (bpf_l3_csum_replace(skb, IP_CSUM_OFF, iph->daddr, r.daddr, 4) < 0 ||
	     bpf_skb_store_bytes(skb, IP_DST_OFF, &r.daddr, 4, 0) < 0))
		return TC_ACT_SHOT;
	if (iph->saddr != saddr &&
	    (bpf_l3_csum_replace(skb, IP_CSUM_OFF, iph->saddr, saddr, 4) < 0 ||
	     bpf_skb_store_bytes(skb, IP_SRC_OFF, &saddr, 4, 0) < 0))
		return TC_ACT_SHOT;
	count_packet(r.svc_id, r.backend_id, skb->len);
	if (!(r.flags & WARREN_CT_F_SNAT))
		return TC_ACT_OK; /* to a client the stack routes, as the flow's replies */
	r.saddr = saddr;
	r.sport = 0;
	r.dport = 0;
	return tc_send(skb, iph, &r, r.svc_id, r.daddr, r.sport);
}

static __always_inline int tc_handle(struct __sk_buff *skb, int ingress)
{
	struct iphdr iph;
	__be16 ports[2];
	__u8 tcp_flags = 0;
	__u32 l4off, svc_id, be_id, bits;
	struct warren_ct_key key = {}, other = {};
	struct warren_ct_value *ct, *peer, fwd = {};
	struct warren_svc_value *svc;
	struct warren_svc_state *st;
	struct warren_backend *be = NULL;
	__be16 tport;
	__u64 now;
	int reason, stale = 0;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &iph, sizeof(iph)) < 0)
		return TC_ACT_OK;
	if (iph.version != 4)
		return TC_ACT_OK;
	/* Fragments after the first carry no ports (not translated). */
	if (iph.frag_off & bpf_htons(0x3fff))
		return TC_ACT_OK;
	l4off = ETH_HLEN + (iph.ihl & 0xf) * 4;
	if (iph.protocol == IPPROTO_ICMP)
		return ingress ? tc_icmp(skb, &iph, l4off) : TC_ACT_OK;
	if (iph.protocol != IPPROTO_TCP && iph.protocol != IPPROTO_UDP)
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, l4off, ports, sizeof(ports)) < 0)
		return TC_ACT_OK;
	if (iph.protocol == IPPROTO_TCP && bpf_skb_load_bytes(skb, l4off + 13, &tcp_flags, 1) < 0)
		return TC_ACT_OK;

	key.saddr = iph.saddr;
	key.daddr = iph.daddr;
	key.sport = ports[0];
	key.dport = ports[1];
	key.proto = iph.protocol;

	ct = bpf_map_lookup_elem(&warren_ct_v2, &key);
	if (ct && !(ct->flags & WARREN_CT_F_REPLY)) {
		/* The backend left the service (or its id went to another task): a new
		 * flow picks another one; anything else reaches the node untranslated
		 * and is reset, so the client retries. A SYN on an ended flow's tuple
		 * is a new connection. */
		if (!ct_backend_alive(ct) ||
		    ((tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN && ct_closed(ct->flags))) {
			ct_other_key(ct, key.proto, &other);
			stale = 1;
			ct = NULL;
		}
	}
	if (ct) {
		now = bpf_ktime_get_ns();
		if (ct->flags & WARREN_CT_F_REPLY) {
			bits = WARREN_CT_S_REPLIED;
			if (tcp_flags & TCP_FLAG_FIN)
				bits |= WARREN_CT_S_FIN_REPLY;
			if (tcp_flags & TCP_FLAG_RST)
				bits |= WARREN_CT_S_RST;
			if ((ct->flags & bits) != bits) {
				/* The flow's state lives in its forward entry. */
				ct_other_key(ct, key.proto, &other);
				peer = bpf_map_lookup_elem(&warren_ct_v2, &other);
				if (peer)
					ct_set(peer, bits);
				ct_set(ct, bits);
			}
		} else if (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) {
			ct_set(ct, (tcp_flags & TCP_FLAG_FIN ? WARREN_CT_S_FIN_FWD : 0) |
					   (tcp_flags & TCP_FLAG_RST ? WARREN_CT_S_RST : 0));
		}
		if (now - ct->last_seen_ns > WARREN_CT_REFRESH_NS)
			ct->last_seen_ns = now;
		count_packet(ct->svc_id, ct->backend_id, skb->len);
		fwd = *ct;
		if (tc_rewrite(skb, l4off, key.proto, &key, &fwd) < 0)
			return TC_ACT_SHOT;
		if (!ingress || !(fwd.flags & (WARREN_CT_F_SNAT | WARREN_CT_F_REPLY)))
			return TC_ACT_OK;
		if (fwd.flags & WARREN_CT_F_REPLY)
			return tc_send(skb, &iph, &fwd, fwd.svc_id, fwd.daddr, fwd.sport);
		return tc_send(skb, &iph, &fwd, fwd.svc_id, key.saddr, key.dport);
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
	be_id = pick_backend(svc_id, st, svc_kind(svc, st),
			     flow_hash(iph.saddr, iph.daddr, ports[0], ports[1], iph.protocol), &be);
	if (!be_id || !be) {
		drop(svc_id, WARREN_DROP_NO_BACKEND, iph.saddr, ports[1], key.proto, WARREN_SRC_TC);
		return TC_ACT_SHOT;
	}
	if (stale) {
		/* The ended flow's reply half goes with it (when it still is its own). */
		peer = bpf_map_lookup_elem(&warren_ct_v2, &other);
		if (peer && peer->daddr == key.saddr && peer->dport == key.sport)
			bpf_map_delete_elem(&warren_ct_v2, &other);
	}
	tport = svc->target_port ? svc->target_port : ports[1];
	reason = ct_create(skb, &key, be->addr, tport, svc_id, be_id, !(be->flags & WARREN_BE_F_LOCAL), &fwd);
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
	return tc_send(skb, &iph, &fwd, svc_id, key.saddr, key.dport);
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
