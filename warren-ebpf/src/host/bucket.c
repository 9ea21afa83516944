// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
/*
 * include/bucket.h compiled for the host, for warren_ebpf::host (unit tests of
 * the token-bucket arithmetic the programs run). Not part of any BPF object.
 */
#include "bucket.h"

int warren_host_bucket_take(struct warren_rl_value *b, __u64 now, __u64 rate, __u64 burst, int atomics)
{
	return bucket_take(b, now, rate, burst, atomics);
}

void warren_host_bucket_init(struct warren_rl_value *b, __u64 now, __u64 burst)
{
	bucket_init(b, now, burst);
}
