/* Real changes of this process reach the callbacks with the right event and
 * range, the start before the change and the end after it. Linked with
 * libmmun.so, or statically with libmmun.a (then mmun_install() is what
 * installs the hooks). Callbacks only record; checks run afterwards.
 * Prints "<scenario> ok" per scenario, exits 1 at the first failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <mmun.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define MARK 0x5a
#define FAIL(...)                                                   \
	do {                                                        \
		printf("FAILED %s:%d: ", __FILE__, __LINE__);       \
		printf(__VA_ARGS__);                                \
		printf("\n");                                       \
		_exit(1);                                          \
	} while (0)

static int devzero;

/* What a page looks like at one instant, read without allocating. */
struct look {
	int resident; /* present, holding the marker */
	int writable; /* the kernel may write to it */
};

static struct look look_at(unsigned char *page)
{
	unsigned char v = 0;
	struct look l = { 0, 0 };
	if (mincore(page, PAGE, &v) == 0 && (v & 1))
		l.resident = page[0] == MARK;
	/* read(2) into the page's last byte fails with EFAULT unless the page
	 * is mapped writable. */
	l.writable = read(devzero, page + PAGE - 1, 1) == 1;
	return l;
}

/* One scenario's record: the interval's calls, the list notifier's starts
 * and ends overlapping the range, and the page as each saw it. */
static struct seen {
	uint64_t lo, hi;
	unsigned char *probe;
	_Atomic int interval_calls, starts, ends, late_calls;
	struct mmun_range interval_first, start_first;
	struct look at_interval, at_start, at_end;
} s;

static int overlaps(const struct mmun_range *r)
{
	return r->start < s.hi && r->end > s.lo;
}

static int invalidate(mmun_interval *sub, const struct mmun_range *r, uint64_t cur_seq, void *arg)
{
	(void)arg;
	mmun_interval_set_seq(sub, cur_seq);
	if (r->flags & MMUN_RANGE_LATE) {
		s.late_calls++;
		return 1;
	}
	if (s.interval_calls++ == 0) {
		s.interval_first = *r;
		s.at_interval = look_at(s.probe);
	}
	return 1;
}

static void on_start(const struct mmun_range *r, void *arg)
{
	(void)arg;
	if (!overlaps(r) || (r->flags & MMUN_RANGE_LATE))
		return;
	if (s.starts++ == 0) {
		s.start_first = *r;
		s.at_start = look_at(s.probe);
	}
}

static void on_end(const struct mmun_range *r, void *arg)
{
	(void)arg;
	if (!overlaps(r) || (r->flags & MMUN_RANGE_LATE))
		return;
	/* the last end: after every range of the call changed */
	s.ends++;
	s.at_end = look_at(s.probe);
}

static mmun_interval *sub;
static mmun_notifier *list;

static void subscribe(void *p, size_t len)
{
	memset(&s, 0, sizeof s);
	s.lo = (uintptr_t)p;
	s.hi = (uintptr_t)p + len;
	s.probe = p;
	if (mmun_interval_insert(s.lo, len, invalidate, NULL, &sub) != 0)
		FAIL("insert");
}

static void unsubscribe(void)
{
	if (mmun_interval_remove(sub) != 0)
		FAIL("remove");
}

static unsigned char *fresh(size_t len)
{
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		FAIL("mmap");
	memset(p, MARK, len);
	return p;
}

/* The first range each callback saw is the call's own: event and bounds
 * exact (the hooks may add a Clear of a surrounding 2 MiB block after it). */
static void check(const char *name, int event, uint64_t lo, uint64_t hi, struct look want_end)
{
	if (s.interval_calls < 1 || s.starts < 1 || s.starts != s.ends)
		FAIL("%s: interval calls %d, starts %d, ends %d", name, s.interval_calls, s.starts, s.ends);
	const struct mmun_range *rs[] = { &s.interval_first, &s.start_first };
	for (int i = 0; i < 2; i++) {
		if (rs[i]->event != (uint32_t)event || rs[i]->start != lo || rs[i]->end != hi ||
		    rs[i]->flags != MMUN_RANGE_BLOCKABLE)
			FAIL("%s: %s saw event %u [%#llx, %#llx) flags %u, want event %d [%#llx, %#llx)", name,
			     i ? "start" : "interval", rs[i]->event, (unsigned long long)rs[i]->start,
			     (unsigned long long)rs[i]->end, rs[i]->flags, event, (unsigned long long)lo,
			     (unsigned long long)hi);
	}
	if (!s.at_interval.resident || !s.at_interval.writable || !s.at_start.resident || !s.at_start.writable)
		FAIL("%s: the change happened before its callbacks", name);
	if (s.at_end.resident != want_end.resident || s.at_end.writable != want_end.writable)
		FAIL("%s: at the end resident %d writable %d, want %d %d", name, s.at_end.resident,
		     s.at_end.writable, want_end.resident, want_end.writable);
	printf("%s ok\n", name);
}

static const struct look GONE = { 0, 0 }, READ_ONLY = { 1, 0 };

static void wait_for_late(const char *name)
{
	for (int i = 0; i < 500 && s.late_calls == 0; i++) {
		struct timespec ten_ms = { 0, 10 * 1000 * 1000 };
		nanosleep(&ten_ms, NULL);
	}
	if (s.late_calls == 0)
		FAIL("%s: no late invalidation within 5 s", name);
	printf("%s ok\n", name);
}

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	devzero = open("/dev/zero", O_RDONLY);
	if (devzero < 0)
		FAIL("open /dev/zero");
	int installed = mmun_install();
	if (installed != 0)
		FAIL("mmun_install: %d (%s)", installed, mmun_install_error());
	if (mmun_notifier_register(on_start, on_end, NULL, &list) != 0)
		FAIL("register");

	size_t len = 16 * PAGE;
	unsigned char *p = fresh(len);
	subscribe(p, len);
	munmap(p, len);
	unsubscribe();
	check("munmap", MMUN_EVENT_UNMAP, (uintptr_t)p, (uintptr_t)p + len, GONE);

	p = fresh(len);
	subscribe(p, len);
	madvise(p, len, MADV_DONTNEED);
	unsubscribe();
	check("madvise_dontneed", MMUN_EVENT_CLEAR, (uintptr_t)p, (uintptr_t)p + len,
	      (struct look){ 0, 1 });
	munmap(p, len);

	p = fresh(len);
	subscribe(p, len);
	mprotect(p, len, PROT_READ);
	unsubscribe();
	check("mprotect", MMUN_EVENT_PROTECTION_VMA, (uintptr_t)p, (uintptr_t)p + len, READ_ONLY);
	munmap(p, len);

	p = fresh(len);
	subscribe(p, len);
	unsigned char *moved = mremap(p, len, 4 * len, MREMAP_MAYMOVE);
	unsubscribe();
	if (moved == MAP_FAILED)
		FAIL("mremap");
	check("mremap_move", MMUN_EVENT_UNMAP, (uintptr_t)p, (uintptr_t)p + len, GONE);
	munmap(moved, 4 * len);

	/* free() of 64 MiB: glibc unmaps the whole chunk, header included. */
	size_t big = 64u << 20;
	p = malloc(big);
	memset(p, MARK, big);
	uintptr_t block = (uintptr_t)p;
	subscribe(p, big);
	s.probe = (unsigned char *)((block + PAGE) & ~(uintptr_t)(PAGE - 1));
	free(p);
	unsubscribe();
	uint64_t lo = s.interval_first.start, hi = s.interval_first.end;
	if (lo > block || hi < block + big || hi - lo > big + 2 * PAGE)
		FAIL("free_64m: unmapped [%#llx, %#llx) for a block at %#llx", (unsigned long long)lo,
		     (unsigned long long)hi, (unsigned long long)block);
	check("free_64m", MMUN_EVENT_UNMAP, lo, hi, GONE);

	if (mmun_net_start() == 0) {
		/* A raw system call no hook sees: the userfaultfd net reports it
		 * after the fact, from its own thread, marked late. */
		p = fresh(len);
		subscribe(p, len);
		syscall(SYS_munmap, p, len);
		wait_for_late("raw_munmap_late");
		unsubscribe();
	} else {
		printf("raw_munmap_late SKIPPED: userfaultfd unavailable\n");
	}
	if (mmun_notifier_unregister(list) != 0)
		FAIL("unregister");
	printf("invalidations ok\n");
	return 0;
}
