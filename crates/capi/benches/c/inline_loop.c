/*
 * The header's inline read_begin + read_retry, compiled by a C compiler
 * as a C driver gets them: `hit_path` builds this into a shared object at
 * run time and times the loop. Nothing invalidates the interval while it
 * runs, so read_begin's slow path (a call into the library, left to lazy
 * binding here) is never taken.
 */
#include <stdint.h>

#include "mmun.h"

uint64_t mmun_bench_inline_loop(const struct mmun_interval_seq *s, uint64_t n)
{
	uint64_t retries = 0;

	for (uint64_t i = 0; i < n; i++) {
		uint64_t seq;

		mmun_interval_read_begin_inline(s, &seq);
		retries += (uint64_t)mmun_interval_read_retry_inline(s, seq);
	}
	return retries;
}
