// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
/*
 * Destroys the sockets connected to backends that left their service (listed in
 * warren_kill_v1), so that clients notice at once and reconnect through the VIP
 * instead of talking to a dead task (the bug class of cilium#12859). Runs as
 * iter/tcp and iter/udp programs; needs the bpf_sock_destroy kfunc (Linux 6.5+).
 * The loader runs the iterators in every network namespace with translated sockets.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include "warren.h"

#ifndef LIBBPF_PIN_BY_NAME
#define LIBBPF_PIN_BY_NAME 1
#endif

#define AF_INET 2
#define AF_INET6 10

/* An AF_INET6 socket talking to an IPv4-mapped address has its IPv4 peer in
 * skc_daddr too (a native IPv6 one has 127.0.0.6 there, never a backend). */
static __always_inline int inet_family(unsigned short family)
{
	return family == AF_INET || family == AF_INET6;
}
#define TCP_TIME_WAIT 6
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

/*
 * The placeholder for the BTF id of bpf_sock_destroy in the kernel's BTF: the
 * loader patches this immediate before loading, because the aya version in use
 * does not resolve `__ksym` externs. Mirrored as SOCK_DESTROY_KFUNC_MAGIC in
 * warren-ebpf/src/lib.rs.
 */
#define WARREN_KFUNC_MAGIC 0x0badc0de

char _license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WARREN_KILL_ENTRIES);
	__type(key, struct warren_kill_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_kill_v1 SEC(".maps");

/* Just the kernel fields used here; CO-RE relocates them against vmlinux BTF. */
struct bpf_iter_meta {
	void *seq;
	__u64 session_id;
	__u64 seq_num;
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be16 skc_dport;
	unsigned short skc_family;
	volatile unsigned char skc_state;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct inet_sock {
	struct sock sk;
} __attribute__((preserve_access_index));

struct udp_sock {
	struct inet_sock inet;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	__u32 uid;
} __attribute__((preserve_access_index));

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
	__u32 uid;
	int bucket;
} __attribute__((preserve_access_index));

/* A kfunc call (src_reg = BPF_PSEUDO_KFUNC_CALL) spelled out as raw bytes. */
static __always_inline long sock_destroy(struct sock_common *sk)
{
	register long r1 asm("r1") = (long)sk;
	register long r0 asm("r0");

	asm volatile(".byte 0x85, 0x20, 0x00, 0x00\n\t.long 0x0badc0de"
		     : "=r"(r0), "+r"(r1)
		     :
		     : "r2", "r3", "r4", "r5", "memory");
	return r0;
}

static __always_inline int marked(__be32 daddr, __be16 dport, __u8 proto)
{
	struct warren_kill_key key = {};

	key.addr = daddr;
	key.port = dport;
	key.proto = proto;
	if (bpf_map_lookup_elem(&warren_kill_v1, &key))
		return 1;
	key.port = 0;
	return bpf_map_lookup_elem(&warren_kill_v1, &key) != NULL;
}

SEC("iter/tcp")
int warren_kill_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *sk = ctx->sk_common;
	unsigned char state;

	if (!sk || !inet_family(sk->skc_family))
		return 0;
	state = sk->skc_state;
	if (state == TCP_TIME_WAIT || state == TCP_LISTEN || state == TCP_NEW_SYN_RECV)
		return 0;
	if (marked(sk->skc_daddr, sk->skc_dport, IPPROTO_TCP))
		sock_destroy(sk);
	return 0;
}

SEC("iter/udp")
int warren_kill_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *udp = ctx->udp_sk;
	struct sock_common *sk;

	if (!udp)
		return 0;
	sk = (struct sock_common *)udp;
	if (!inet_family(udp->inet.sk.__sk_common.skc_family))
		return 0;
	if (marked(udp->inet.sk.__sk_common.skc_daddr, udp->inet.sk.__sk_common.skc_dport, IPPROTO_UDP))
		sock_destroy(sk);
	return 0;
}
