/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * Warren data plane ABI: every map key and value shared between the eBPF programs
 * and the Rust loader. The Rust mirrors live in warren-common/src/lib.rs; a test reads
 * this object's BTF and fails when the two layouts diverge. A map whose layout
 * changes gets a new name (`_v<N+1>`): the loader creates it beside the pinned
 * one, switches the programs, then retires the old pin (warren-common's
 * map_names::RETIRED).
 *
 * Addresses in maps read by people (new in v2 layouts) are byte arrays, so that
 * `bpftool map dump` prints them as four numbers in order.
 *
 * Byte order: fields typed __be16/__be32 hold network byte order; everything else is
 * host order. Padding is explicit so that both compilers agree byte for byte.
 */
#ifndef WARREN_H
#define WARREN_H

#include <linux/types.h>

#define WARREN_LAYOUT_VERSION 2 /* the highest map version; each map name carries its own */

/* Limits (mirrored in warren-common). */
#define WARREN_MAX_SERVICES 16384    /* service ids are 0..WARREN_MAX_SERVICES-1 */
#define WARREN_MAX_SVC_ENTRIES 65536 /* (address, port, protocol) entries */
#define WARREN_MAX_BACKENDS 65536    /* backend ids are 1..WARREN_MAX_BACKENDS-1; 0 = none */
#define WARREN_KINDS 2               /* table kinds: all backends, local backends only */
/* Maglev tables (sized by backend count, a prime or 1) are ranges of one shared
 * pool: offset 1..WARREN_SLOT_POOL-1, 0 = none. A service uses one per kind it
 * needs, plus one while a new table is written beside the active one. */
#define WARREN_SLOT_POOL (1 << 20)
#define WARREN_MAX_NODE_ADDRS 64
#define WARREN_SOCK_ENTRIES 65536    /* reverse translation and affinity per socket */
#define WARREN_RL_ENTRIES 65536      /* token buckets */
#define WARREN_RL_MAX_RATE 1000000   /* per second per client; the API refuses more */
#define WARREN_RL_MAX_BURST 1000000
#define WARREN_CT_ENTRIES 131072     /* tc connection tracking: two entries per flow */
#define WARREN_KILL_ENTRIES 4096     /* backends whose sockets are being destroyed */
#define WARREN_EVENTS_BYTES (256 * 1024) /* ring buffer of events for the daemon's log */

/* Table kinds, the second index of a slot table. */
#define WARREN_KIND_ALL 0
#define WARREN_KIND_LOCAL 1

/* warren_svc_value.flags */
#define WARREN_SVC_F_HOST_MODE 0x01 /* pick from local backends only */
#define WARREN_SVC_F_NODEPORT 0x02  /* a published port on the node's addresses */
#define WARREN_SVC_F_WILDCARD 0x04  /* port 0: any port, same port on the backend */
#define WARREN_SVC_F_REFUSE 0x08    /* a removed service: refuse new connections */

/* warren_svc_state.flags */
#define WARREN_SVC_S_PREFER_LOCAL 0x01 /* the local table while it has backends, then all */

/* warren_backend.flags */
#define WARREN_BE_F_ACTIVE 0x01
#define WARREN_BE_F_LOCAL 0x02
#define WARREN_BE_F_CANARY 0x04

/* warren_ct_value.flags: what the entry is... */
#define WARREN_CT_F_REPLY 0x01 /* this entry translates the reply direction */
#define WARREN_CT_F_SNAT 0x02  /* the source was rewritten to the node address */
/* ...and what the flow has seen (set with an atomic or, never cleared). The
 * forward entry holds the flow's state; a reply entry only remembers that it
 * told its forward entry about the first reply. */
#define WARREN_CT_S_REPLIED 0x10   /* a packet came back: established */
#define WARREN_CT_S_FIN_FWD 0x20   /* the client sent a FIN */
#define WARREN_CT_S_FIN_REPLY 0x40 /* the backend sent a FIN */
#define WARREN_CT_S_RST 0x80       /* either side sent a RST */
/* last_seen_ns is rewritten at most this often (a write per packet is a cache
 * line bouncing between CPUs). Timeouts are the daemon's (its GC). */
#define WARREN_CT_REFRESH_NS 1000000000ULL

/* Drop reasons, the index into warren_svc_counters.drops. */
#define WARREN_DROP_RATE_LIMITED 0
#define WARREN_DROP_NO_BACKEND 1
#define WARREN_DROP_CT_FULL 2
#define WARREN_DROP_SNAT_EXHAUSTED 3
#define WARREN_DROP_NO_ROUTE 4 /* tc: no route to the backend or back to the client */
#define WARREN_DROP_REASONS 5

/* warren_svc_v1: which service answers at (addr, port, proto).
 * addr = 0 means "any node address" (a published port); port = 0 is a wildcard. */
struct warren_svc_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct warren_svc_value {
	__u32 svc_id;
	__be16 target_port; /* 0 = keep the destination port (wildcard) */
	__u8 flags;         /* WARREN_SVC_F_* */
	__u8 pad;
};

/* warren_state_v2[svc_id]: the per-service entry that flips between Maglev tables.
 * (v1: table ids of 256-slot tables.) */
struct warren_svc_state {
	__u32 table_all;      /* offset in the slot pool of all backends' table; 0 = none */
	__u32 size_all;       /* its size: a prime, or 1 for one backend */
	__u32 table_local;    /* this node's backends' table; 0 = none (no host-mode port, not prefer-local) */
	__u32 size_local;
	__u16 backends_all;   /* backends in the "all" table; 0 = none */
	__u16 backends_local; /* backends in the "local" table; 0 = none */
	__u32 rate_per_sec;   /* new connections (UDP flows) per second per client; 0 = off */
	__u32 rate_burst;
	__u32 flags;          /* WARREN_SVC_S_* (older daemons wrote 0) */
};

/* warren_slot_v2[table + hash % size] = backend id */

/* warren_be_v1[backend_id] */
struct warren_backend {
	__be32 addr;
	__u32 svc_id;
	__u8 flags; /* WARREN_BE_F_* */
	__u8 pad[3];
};

/* warren_rnat_v1 and warren_aff_v2: per-socket state of the socket load balancer. */
struct warren_sock_key {
	__u64 cookie;
	__be32 addr; /* rnat: backend address; aff: service address */
	__be16 port; /* rnat: backend port; aff: service port */
	__u16 pad;
};

/* warren_rnat_v1 value: what the peer looks like to the application. */
struct warren_revnat {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/* warren_sks_v1 (socket-local storage): the translation of a socket the load
 * balancer connected (TCP, connected UDP), freed by the kernel with the socket. */
struct warren_sock_state {
	__be32 backend_addr;
	__be16 backend_port;
	__u16 pad;
	__be32 svc_addr;
	__be16 svc_port;
	__u16 pad2;
};

/* warren_aff_v2 value: the backend an unconnected UDP socket talks to, for one
 * flow: datagrams to the service address no further apart than the UDP timeout
 * (warren_udp_idle_ns). */
struct warren_affinity {
	__u32 backend_id;
	__u32 svc_id;
	__u64 last_ns; /* bpf_ktime_get_ns of the flow's last datagram, to 1/8 of the timeout */
};

/* warren_rl_v2: a token bucket per (service, client). The client is the source
 * address; for an unbound socket it is its network namespace (netns cookie).
 * (v1 held milli-tokens and a network-order client.) */
struct warren_rl_key {
	__u32 svc_id;
	__u8 client[4]; /* IPv4 address, 0.0.0.0 for an unbound socket */
	__u64 netns;
};

struct warren_rl_value {
	__u64 tokens;  /* nano-tokens: 1e9 per token (bucket.h) */
	__u64 last_ns; /* bpf_ktime_get_ns() up to which time was turned into tokens */
};

/* warren_ct_v2: tc connection tracking, a plain hash (never evicted: a full map
 * refuses new flows, counted as ct_full). Each flow is two entries, keyed by the
 * packet's tuple as it arrives in each direction; the value is the tuple to
 * rewrite it to. They are created together, and removed together by the
 * daemon's GC once the flow's state says it is over (docs/dataplane.md).
 * (v1: an LRU hash, which could evict one half of a flow.) */
struct warren_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct warren_ct_value {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 svc_id;
	__u32 backend_id; /* forward: the backend's address is daddr (checked) */
	__u32 flags;      /* WARREN_CT_F_* and WARREN_CT_S_* (v1: a __u8 and padding) */
	__u64 last_seen_ns; /* bpf_ktime_get_ns(), to WARREN_CT_REFRESH_NS */
};

/* warren_naddr_v1: the node's own addresses (published ports answer there). */
struct warren_node_addr {
	__u32 ifindex; /* informational; 0 when unknown */
	__u32 flags;
};

/* warren_svcc_v2[svc_id], per CPU. (v1: four drop reasons.) */
struct warren_svc_counters {
	__u64 conns;
	__u64 packets;
	__u64 bytes;
	__u64 drops[WARREN_DROP_REASONS];
};

/* warren_bec_v1[backend_id], per CPU. */
struct warren_backend_counters {
	__u64 conns;
	__u64 packets;
	__u64 bytes;
};

/* warren_beo_v1[backend address], per CPU, LRU: how the node's connections to a
 * backend ended, counted by the sockops program for sockets the socket load
 * balancer translated. Keyed by address (a task's address is its own while it
 * runs); the daemon names the task. */
struct warren_outcome_key {
	__u8 addr[4]; /* IPv4 address, octets in order */
};

struct warren_backend_outcomes {
	__u64 established; /* the handshake completed */
	__u64 reset;       /* established, then ended by a reset instead of a close */
	__u64 refused;     /* the connect was answered with a reset */
	__u64 timed_out;   /* the connect got no answer (SYN retransmitted, then given up) */
};

/* warren_event_v1 (ring buffer): what the daemon turns into log records. */
#define WARREN_EVENT_DROP 1 /* reason = WARREN_DROP_*; addr/port = client */

struct warren_event {
	__u64 ts_ns;   /* bpf_ktime_get_ns() */
	__u32 kind;    /* WARREN_EVENT_* */
	__u32 svc_id;
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 reason;
	__u8 source;   /* 0 = socket (connect/sendmsg), 1 = tc */
	__u8 pad[7];
};

/* warren_kill_v1: sockets connected to these backends are destroyed by the
 * iter/tcp and iter/udp programs. port = 0 matches any port. */
struct warren_kill_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

#endif /* WARREN_H */
