/* Run under LD_PRELOAD=libmmun_preload.so by tests/preload.rs, without
 * linking libmmun: the functions are looked up at run time. Each scenario
 * registers a list notifier, makes one change, and checks that the start
 * callback for the range ran before the change (the page still holds its
 * marker) and the end callback after it. Prints "<name> ok" per scenario;
 * exits 77 if the preload library is absent, 1 on the first failure. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <mmun.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int (*reg)(mmun_range_fn, mmun_range_fn, void *, mmun_notifier **);
static int (*unreg)(mmun_notifier *);

enum { UNMAP = 0, CLEAR = 1, PROTECTION_VMA = 2 };
#define PAGE 4096

struct seen {
	int starts, ends, event, start_resident, end_resident;
	uint64_t start, end, lo, hi;
	unsigned char *probe;
};

static int resident(void *p)
{
	unsigned char v = 0;
	return mincore((void *)((uintptr_t)p & ~(uintptr_t)(PAGE - 1)), PAGE, &v) == 0 && (v & 1);
}

/* Only the scenario's own range counts (the hooks may add a Clear of the
 * 2 MiB block around it, and other changes of the process reach a list
 * notifier too). */
static int own(struct seen *s, const struct mmun_range *r)
{
	return r->start == s->lo && r->end == s->hi;
}

static void on_start(const struct mmun_range *r, void *arg)
{
	struct seen *s = arg;
	if (!own(s, r))
		return;
	s->starts++;
	s->event = r->event;
	s->start = r->start;
	s->end = r->end;
	s->start_resident = resident(s->probe) && *s->probe == 0x5a;
}

static void on_end(const struct mmun_range *r, void *arg)
{
	struct seen *s = arg;
	if (!own(s, r))
		return;
	s->ends++;
	s->end_resident = resident(s->probe) && *s->probe == 0x5a;
}

static unsigned char *fresh(size_t len)
{
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		exit(2);
	memset(p, 0x5a, len);
	return p;
}

static int check(const char *name, struct seen *s, int event, void *lo, size_t len, int gone_at_end)
{
	if (s->starts != 1 || s->ends != 1 || s->event != event || s->start != (uintptr_t)lo ||
	    s->end != (uintptr_t)lo + len || !s->start_resident || (gone_at_end && s->end_resident)) {
		printf("%s FAILED: starts %d ends %d event %d range %#llx-%#llx start_saw %d end_saw %d\n", name,
		       s->starts, s->ends, s->event, (unsigned long long)s->start, (unsigned long long)s->end,
		       s->start_resident, s->end_resident);
		return 1;
	}
	printf("%s ok\n", name);
	return 0;
}

#define SCENARIO(name, len, event, gone, change)                                              \
	do {                                                                                    \
		unsigned char *p = fresh(len);                                                  \
		struct seen s = { .probe = p, .lo = (uintptr_t)p, .hi = (uintptr_t)p + len };   \
		mmun_notifier *h;                                                               \
		if (reg(on_start, on_end, &s, &h) != 0)                                         \
			exit(1);                                                                \
		change;                                                                         \
		unreg(h);                                                                       \
		failed |= check(name, &s, event, p, len, gone);                                 \
	} while (0)

int main(void)
{
	int failed = 0;
	reg = (int (*)(mmun_range_fn, mmun_range_fn, void *, mmun_notifier **))dlsym(RTLD_DEFAULT,
										     "mmun_notifier_register");
	unreg = (int (*)(mmun_notifier *))dlsym(RTLD_DEFAULT, "mmun_notifier_unregister");
	int (*installed)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "mmun_installed");
	if (!reg || !unreg || !installed) {
		printf("libmmun_preload.so is not loaded\n");
		return 77;
	}
	if (!installed()) {
		printf("hooks not installed\n");
		return 1;
	}
	SCENARIO("munmap", 16 * PAGE, UNMAP, 1, munmap(p, 16 * PAGE));
	SCENARIO("madvise_dontneed", 16 * PAGE, CLEAR, 1, madvise(p, 16 * PAGE, MADV_DONTNEED));
	SCENARIO("mprotect", 16 * PAGE, PROTECTION_VMA, 0, mprotect(p, 16 * PAGE, PROT_READ));
	SCENARIO("mmap_fixed", 16 * PAGE, UNMAP, 1,
		 mmap(p, 16 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
	SCENARIO("mremap_move", 16 * PAGE, UNMAP, 1, mremap(p, 16 * PAGE, 64 * PAGE, MREMAP_MAYMOVE));
	{
		/* free() of 64 MiB: glibc unmaps it from inside free. */
		size_t len = 64u << 20;
		unsigned char *p = malloc(len);
		memset(p, 0x5a, len);
		/* glibc unmaps the whole chunk: its header page too. */
		struct seen s = { .probe = p, .lo = ((uintptr_t)p & ~(uintptr_t)(PAGE - 1)) };
		s.hi = s.lo + ((len + 16 + PAGE - 1) & ~(size_t)(PAGE - 1));
		mmun_notifier *h;
		if (reg(on_start, on_end, &s, &h) != 0)
			exit(1);
		free(p);
		unreg(h);
		if (s.starts != 1 || s.ends != 1 || s.event != UNMAP || !s.start_resident || s.end_resident) {
			printf("free_64m FAILED: starts %d ends %d event %d\n", s.starts, s.ends, s.event);
			failed = 1;
		} else {
			printf("free_64m ok\n");
		}
	}
	return failed;
}
