/* Run under LD_PRELOAD=libmmun_preload.so by tests/preload.rs. Each
 * scenario subscribes to a range, makes one change, and checks that the
 * start callback ran before the change (the page still holds its marker)
 * and the end callback after it. Prints "<name> ok" per scenario; exits
 * 77 if the preload library is absent, 1 on the first failure. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef void (*mmun_cb)(void *, int, int, uint64_t, uint64_t, int);
static void *(*subscribe)(uint64_t, uint64_t, mmun_cb, void *);
static void (*unsubscribe)(void *);

enum { UNMAP = 0, CLEAR = 1, PROTECTION_VMA = 2 };
#define PAGE 4096

struct seen {
	int starts, ends, event, start_resident, end_resident;
	uint64_t start, end;
	unsigned char *probe;
};

static int resident(void *p)
{
	unsigned char v = 0;
	return mincore((void *)((uintptr_t)p & ~(uintptr_t)(PAGE - 1)), PAGE, &v) == 0 && (v & 1);
}

static void cb(void *arg, int phase, int event, uint64_t start, uint64_t end, int late)
{
	struct seen *s = arg;
	(void)late;
	if (phase == 0) {
		s->starts++;
		s->event = event;
		s->start = start;
		s->end = end;
		s->start_resident = resident(s->probe) && *s->probe == 0x5a;
	} else {
		s->ends++;
		s->end_resident = resident(s->probe) && *s->probe == 0x5a;
	}
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
		struct seen s = { .probe = p };                                                 \
		void *h = subscribe((uintptr_t)p, len, cb, &s);                                 \
		change;                                                                         \
		unsubscribe(h);                                                                 \
		failed |= check(name, &s, event, p, len, gone);                                 \
	} while (0)

int main(void)
{
	int failed = 0;
	subscribe = (void *(*)(uint64_t, uint64_t, mmun_cb, void *))dlsym(RTLD_DEFAULT, "mmun_subscribe");
	unsubscribe = (void (*)(void *))dlsym(RTLD_DEFAULT, "mmun_unsubscribe");
	int (*installed)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "mmun_installed");
	if (!subscribe || !unsubscribe || !installed) {
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
		struct seen s = { .probe = p };
		void *h = subscribe((uintptr_t)p, len, cb, &s);
		free(p);
		unsubscribe(h);
		if (s.starts != 1 || s.ends != 1 || s.event != UNMAP || !s.start_resident || s.end_resident) {
			printf("free_64m FAILED: starts %d ends %d event %d\n", s.starts, s.ends, s.event);
			failed = 1;
		} else {
			printf("free_64m ok\n");
		}
	}
	return failed;
}
