/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * The BTF-defined maps of the Warren data plane. Every map is pinned by name under
 * the node's bpffs directory, so that the loader adopts it after a restart.
 * (warren_kill_v1 lives in sock_destroy.bpf.c, its only user.)
 */
#ifndef WARREN_MAPS_H
#define WARREN_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "warren.h"

/* libbpf's enum value; the header that defines it is not BPF-side. */
#ifndef LIBBPF_PIN_BY_NAME
#define LIBBPF_PIN_BY_NAME 1
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WARREN_MAX_SVC_ENTRIES);
	__type(key, struct warren_svc_key);
	__type(value, struct warren_svc_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_svc_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WARREN_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct warren_svc_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_state_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WARREN_SLOT_POOL);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_slot_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WARREN_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct warren_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_be_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WARREN_SOCK_ENTRIES);
	__type(key, struct warren_sock_key);
	__type(value, struct warren_revnat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_rnat_v1 SEC(".maps");

/* Connected sockets' translations live with the socket, so nothing is left behind
 * when it closes; warren_rnat_v1 keeps unconnected UDP (one socket, many peers)
 * and sockets connected by a daemon that predates this map. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct warren_sock_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_sks_v1 SEC(".maps");

/* Set by the loader when sock_addr and sockops programs may use socket-local
 * storage (5.10+, where sockops has `sk`); before, every translation goes to the
 * warren_rnat_v1 LRU. Dead code to the verifier when 0. */
volatile const __u32 warren_sk_storage = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WARREN_SOCK_ENTRIES);
	__type(key, struct warren_sock_key);
	__type(value, struct warren_affinity);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_aff_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WARREN_RL_ENTRIES);
	__type(key, struct warren_rl_key);
	__type(value, struct warren_rl_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_rl_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WARREN_CT_ENTRIES);
	__type(key, struct warren_ct_key);
	__type(value, struct warren_ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_ct_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WARREN_MAX_NODE_ADDRS);
	__type(key, __be32);
	__type(value, struct warren_node_addr);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_naddr_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WARREN_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct warren_svc_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_svcc_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WARREN_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct warren_backend_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_bec_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, WARREN_MAX_BACKENDS);
	__type(key, struct warren_outcome_key);
	__type(value, struct warren_backend_outcomes);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_beo_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WARREN_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} warren_event_v1 SEC(".maps");

#endif /* WARREN_MAPS_H */
