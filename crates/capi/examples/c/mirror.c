/* A device mirror in C: it keeps the page addresses of a buffer it
 * "programmed" and drops them when the buffer's pages change, following
 * the collision-retry protocol of Documentation/mm/hmm.rst.
 *
 *   cc mirror.c $(pkg-config --cflags --libs mmun) -lpthread -o mirror && ./mirror
 */
#include <mmun.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE 4096u
#define PAGES 64u

struct mirror {
	pthread_mutex_t lock; /* the driver lock: guards ptes and read_retry */
	uintptr_t ptes[PAGES]; /* 0: not mapped */
	uint64_t start;
	int invalidations;
};

/* Runs inside the munmap/free/madvise that changes the pages, before the
 * change. No allocation here: it may run inside malloc or free. */
static int invalidate(mmun_interval *sub, const struct mmun_range *range, uint64_t cur_seq, void *arg)
{
	struct mirror *m = arg;
	if (range->flags & MMUN_RANGE_BLOCKABLE)
		pthread_mutex_lock(&m->lock);
	else if (pthread_mutex_trylock(&m->lock) != 0)
		return 0; /* may not sleep: refuse */
	mmun_interval_set_seq(sub, cur_seq);
	for (unsigned i = 0; i < PAGES; i++) {
		uint64_t va = m->start + (uint64_t)i * PAGE;
		if (va >= range->start && va < range->end)
			m->ptes[i] = 0;
	}
	m->invalidations++;
	pthread_mutex_unlock(&m->lock);
	return 1;
}

/* Maps every page of the buffer into the mirror, retrying if a change
 * raced with the walk. */
static void fault_in(struct mirror *m, mmun_interval *sub)
{
	uint64_t seq;
	uintptr_t walked[PAGES];
	do {
		if (mmun_interval_read_begin(sub, &seq) != 0)
			abort();
		for (unsigned i = 0; i < PAGES; i++) /* "walk the page tables" */
			walked[i] = m->start + (uintptr_t)i * PAGE;
		pthread_mutex_lock(&m->lock);
		if (mmun_interval_read_retry(sub, seq) == 0)
			break; /* still current: program under the lock */
		pthread_mutex_unlock(&m->lock);
	} while (1);
	memcpy(m->ptes, walked, sizeof walked);
	pthread_mutex_unlock(&m->lock);
}

static unsigned mapped(struct mirror *m)
{
	unsigned n = 0;
	pthread_mutex_lock(&m->lock);
	for (unsigned i = 0; i < PAGES; i++)
		n += m->ptes[i] != 0;
	pthread_mutex_unlock(&m->lock);
	return n;
}

int main(void)
{
	static struct mirror m = { .lock = PTHREAD_MUTEX_INITIALIZER };
	mmun_interval *sub;
	char *buf = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return 1;
	m.start = (uintptr_t)buf;
	int err = mmun_interval_insert(m.start, PAGES * PAGE, invalidate, &m, &sub);
	if (err) {
		fprintf(stderr, "mmun_interval_insert: %s\n", strerror(-err));
		return 1;
	}
	fault_in(&m, sub);
	printf("libmmun %u.%u.%u: mirrored %u pages\n", mmun_version() >> 16, (mmun_version() >> 8) & 0xff,
	       mmun_version() & 0xff, mapped(&m));
	madvise(buf, 8 * PAGE, MADV_DONTNEED);
	printf("after MADV_DONTNEED of 8 pages: %u mapped\n", mapped(&m));
	fault_in(&m, sub);
	munmap(buf, PAGES * PAGE);
	printf("after munmap: %u mapped, %d invalidations\n", mapped(&m), m.invalidations);
	mmun_interval_remove(sub);
	return mapped(&m) == 0 ? 0 : 1;
}
