/* Threads at once: each inserts, reads and removes intervals, registers
 * list notifiers, and gets and puts regions of one shared cache for its
 * own buffer, which it unmaps and maps again. Every invalidation and every
 * mem_dereg must find the buffer still mapped with its marker (they run
 * before the change), and every registration is released exactly once. */
#define _GNU_SOURCE
#include <errno.h>
#include <mmun.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096u
#define LEN (4 * PAGE)
#define THREADS 4
#define ROUNDS 400

static _Atomic long regs, deregs, stale, calls, failures;
static mmun_rcache *cache;

static int mem_reg(void *arg, uint64_t addr, uint64_t len, uint64_t *memh)
{
	(void)arg;
	regs++;
	*memh = addr ^ len;
	return 0;
}

static int marked(uint64_t addr)
{
	unsigned char v = 0;
	uint8_t want = (uint8_t)(addr >> 12) | 1;
	return mincore((void *)addr, PAGE, &v) == 0 && (v & 1) && *(uint8_t *)addr == want;
}

static void mem_dereg(void *arg, uint64_t addr, uint64_t len, uint64_t memh)
{
	(void)arg;
	deregs++;
	if (memh != (addr ^ len) || !marked(addr))
		stale++;
}

static int invalidate(mmun_interval *sub, const struct mmun_range *r, uint64_t cur_seq, void *arg)
{
	uint64_t start = (uintptr_t)arg;
	calls++;
	if (mmun_interval_set_seq(sub, cur_seq) != 0)
		failures++;
	if (r->event == MMUN_EVENT_UNMAP && r->start <= start && start < r->end && !marked(start))
		stale++;
	return 1;
}

static void nothing(const struct mmun_range *r, void *arg)
{
	(void)r, (void)arg;
}

#define OK(call)                                    \
	do {                                        \
		if ((call) != 0)                    \
			failures++;                 \
	} while (0)

static void *worker(void *arg)
{
	(void)arg;
	for (int i = 0; i < ROUNDS; i++) {
		unsigned char *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			failures++;
			return NULL;
		}
		memset(p, (uint8_t)((uintptr_t)p >> 12) | 1, LEN);
		mmun_interval *sub;
		mmun_notifier *n = NULL;
		mmun_region *r;
		uint64_t seq;
		OK(mmun_interval_insert((uintptr_t)p, LEN, invalidate, p, &sub));
		if (i % 8 == 0)
			OK(mmun_notifier_register(nothing, nothing, NULL, &n));
		OK(mmun_interval_read_begin(sub, &seq));
		if (mmun_interval_read_retry(sub, seq) < 0)
			failures++;
		OK(mmun_rcache_get(cache, (uintptr_t)p + 10, 100, &r));
		if (mmun_region_memh(r) != (mmun_region_start(r) ^ mmun_region_length(r)))
			failures++;
		OK(mmun_rcache_put(r));
		OK(munmap(p, LEN)); /* deregisters, invalidates */
		OK(mmun_interval_remove(sub));
		if (n)
			OK(mmun_notifier_unregister(n));
	}
	return NULL;
}

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	if (mmun_rcache_create(mem_reg, mem_dereg, NULL, 64, UINT64_MAX, &cache) != 0)
		return 1;
	pthread_t t[THREADS];
	for (int i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, worker, NULL);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	if (mmun_rcache_destroy(cache) != 0)
		failures++;
	printf("regs %ld deregs %ld interval calls %ld stale %ld failures %ld\n", (long)regs, (long)deregs,
	       (long)calls, (long)stale, (long)failures);
	if (failures || stale || regs != deregs || regs < THREADS * ROUNDS || calls < THREADS * ROUNDS)
		return 1;
	printf("threads ok\n");
	return 0;
}
