/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * Drop events for the daemon's log (the warren_event ring buffer). No program here.
 */
#ifndef WARREN_EVENTS_H
#define WARREN_EVENTS_H

#include "maps.h"

/* Where an event comes from (warren_event.source). */
#define WARREN_SRC_SOCK 0
#define WARREN_SRC_TC 1

/* Reports a refused connection or dropped packet to the daemon's log. Losing an
 * event when the ring is full is fine: the counters stay exact. */
static __always_inline void emit_drop(__u32 svc_id, __u32 reason, __be32 client, __be16 port,
				      __u8 proto, __u8 source)
{
	struct warren_event ev = {};

	ev.ts_ns = bpf_ktime_get_ns();
	ev.kind = WARREN_EVENT_DROP;
	ev.svc_id = svc_id;
	ev.addr = client;
	ev.port = port;
	ev.proto = proto;
	ev.reason = reason;
	ev.source = source;
	bpf_ringbuf_output(&warren_event_v1, &ev, sizeof(ev), 0);
}

/* Counts a drop and reports it. */
static __always_inline void drop(__u32 svc_id, __u32 reason, __be32 client, __be16 port, __u8 proto,
				 __u8 source)
{
	count_drop(svc_id, reason);
	emit_drop(svc_id, reason, client, port, proto, source);
}

#endif /* WARREN_EVENTS_H */
