/* The registration cache with user mem_reg/mem_dereg: every function of
 * the rcache part of mmun.h, misuse included, against real changes of this
 * process. mem_dereg only records (it may run inside munmap or free).
 * Exits 1 at the first failed check, naming its line. */
#define _GNU_SOURCE
#include <errno.h>
#include <mmun.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define MARK 0x5a
#define CHECK(cond)                                                                    \
	do {                                                                           \
		if (!(cond)) {                                                         \
			printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);       \
			_exit(1);                                                      \
		}                                                                      \
	} while (0)
#define CHECK_EQ(got, want)                                                            \
	do {                                                                           \
		long long got_ = (long long)(got), want_ = (long long)(want);          \
		if (got_ != want_) {                                                   \
			printf("FAILED %s:%d: %s = %lld, want %s = %lld\n", __FILE__,  \
			       __LINE__, #got, got_, #want, want_);                    \
			_exit(1);                                                      \
		}                                                                      \
	} while (0)

/* The device: counts, and what dereg saw of the first registered page. */
static struct device {
	_Atomic int regs, deregs;
	uint64_t next_memh;
	uint64_t refuse_addr; /* mem_reg fails with -EPERM for a range holding it */
	uint64_t last_addr, last_len, last_memh;
	int first_byte_at_dereg;
	/* what dereg gets back from calls it must not make */
	int probe_in_dereg, get_in_dereg, create_in_dereg, destroy_in_dereg;
	mmun_rcache *cache;
} dev;

static int mem_reg(void *arg, uint64_t addr, uint64_t len, uint64_t *memh)
{
	CHECK(arg == &dev);
	CHECK(addr % PAGE == 0 && len % PAGE == 0 && len > 0);
	if (dev.refuse_addr && addr <= dev.refuse_addr && dev.refuse_addr < addr + len)
		return -EPERM;
	dev.regs++;
	*memh = ++dev.next_memh;
	return 0;
}

static void mem_dereg(void *arg, uint64_t addr, uint64_t len, uint64_t memh)
{
	(void)arg;
	dev.deregs++;
	dev.last_addr = addr;
	dev.last_len = len;
	dev.last_memh = memh;
	unsigned char v = 0;
	dev.first_byte_at_dereg = mincore((void *)addr, PAGE, &v) == 0 && (v & 1) ? *(unsigned char *)addr : -1;
	if (dev.probe_in_dereg) {
		mmun_region *r;
		mmun_rcache *c;
		dev.probe_in_dereg = 0;
		dev.get_in_dereg = mmun_rcache_get(dev.cache, 0x100000, PAGE, &r);
		dev.create_in_dereg = mmun_rcache_create(mem_reg, mem_dereg, &dev, 8, UINT64_MAX, &c);
		dev.destroy_in_dereg = mmun_rcache_destroy(dev.cache);
	}
}

static unsigned char *fresh(size_t len)
{
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED);
	memset(p, MARK, len);
	return p;
}

static void misuse(void)
{
	mmun_rcache *c = NULL;
	mmun_region *r = NULL;
	CHECK_EQ(mmun_rcache_create(NULL, mem_dereg, &dev, 8, UINT64_MAX, &c), -EINVAL);
	CHECK_EQ(mmun_rcache_create(mem_reg, NULL, &dev, 8, UINT64_MAX, &c), -EINVAL);
	CHECK_EQ(mmun_rcache_create(mem_reg, mem_dereg, &dev, 8, UINT64_MAX, NULL), -EINVAL);
	CHECK(c == NULL);
	mmun_rcache *bogus = (mmun_rcache *)(uintptr_t)0x4242;
	CHECK_EQ(mmun_rcache_get(bogus, 0x1000, 1, &r), -EINVAL);
	CHECK_EQ(mmun_rcache_get(NULL, 0x1000, 1, &r), -EINVAL);
	CHECK_EQ(mmun_rcache_destroy(bogus), -EINVAL);
	CHECK_EQ(mmun_rcache_destroy(NULL), -EINVAL);
	CHECK_EQ(mmun_rcache_purge(bogus), -EINVAL);
	CHECK_EQ(mmun_rcache_put(NULL), -EINVAL);
	CHECK_EQ(mmun_region_start(NULL), 0);
	CHECK_EQ(mmun_region_length(NULL), 0);
	CHECK_EQ(mmun_region_memh(NULL), 0);

	CHECK_EQ(mmun_rcache_create(mem_reg, mem_dereg, &dev, 8, UINT64_MAX, &c), 0);
	CHECK_EQ(mmun_rcache_get(c, 0x1000, 1, NULL), -EINVAL);
	CHECK_EQ(mmun_rcache_get(c, 0x1000, 0, &r), -EOVERFLOW);
	CHECK_EQ(mmun_rcache_get(c, UINT64_MAX - 10, 100, &r), -EOVERFLOW);
	CHECK(r == NULL);
	CHECK_EQ(mmun_rcache_destroy(c), 0);
	CHECK_EQ(mmun_rcache_destroy(c), -EINVAL); /* double destroy */
	CHECK_EQ(mmun_rcache_get(c, 0x1000, 1, &r), -EINVAL);
	printf("misuse ok\n");
}

static void hit_miss_invalidate(void)
{
	mmun_rcache *c;
	mmun_region *r, *r2;
	unsigned char *p = fresh(4 * PAGE);
	memset(&dev, 0, sizeof dev);
	CHECK_EQ(mmun_rcache_create(mem_reg, mem_dereg, &dev, 8, UINT64_MAX, &c), 0);

	CHECK_EQ(mmun_rcache_get(c, (uintptr_t)p + 100, 200, &r), 0); /* miss */
	CHECK_EQ(dev.regs, 1);
	CHECK_EQ(mmun_region_start(r), (uintptr_t)p);
	CHECK_EQ(mmun_region_length(r), PAGE);
	CHECK_EQ(mmun_region_memh(r), 1);
	CHECK_EQ(mmun_rcache_get(c, (uintptr_t)p + 1000, 8, &r2), 0); /* hit, while r is held */
	CHECK_EQ(dev.regs, 1);
	CHECK_EQ(mmun_region_memh(r2), 1);
	CHECK_EQ(mmun_rcache_put(r2), 0);
	CHECK_EQ(mmun_rcache_put(r), 0);
	CHECK_EQ(mmun_rcache_put(r), -EINVAL); /* double put */
	CHECK_EQ(mmun_region_start(r), 0);    /* a put region reads as 0 */
	CHECK_EQ(mmun_region_memh(r), 0);

	/* munmap deregisters before the pages go, from inside munmap */
	CHECK_EQ(munmap(p, 4 * PAGE), 0);
	CHECK_EQ(dev.deregs, 1);
	CHECK_EQ(dev.last_addr, (uintptr_t)p);
	CHECK_EQ(dev.last_len, PAGE);
	CHECK_EQ(dev.last_memh, 1);
	CHECK_EQ(dev.first_byte_at_dereg, MARK);

	/* the next get of the same addresses registers anew */
	p = mmap(p, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	CHECK(p != MAP_FAILED);
	memset(p, MARK, 4 * PAGE);
	CHECK_EQ(mmun_rcache_get(c, (uintptr_t)p, 2 * PAGE, &r), 0);
	CHECK_EQ(dev.regs, 2);
	CHECK_EQ(mmun_region_memh(r), 2);
	CHECK_EQ(mmun_region_length(r), 2 * PAGE);
	CHECK_EQ(mmun_rcache_put(r), 0);
	/* madvise(DONTNEED) drops the pages: deregistered first */
	CHECK_EQ(madvise(p, PAGE, MADV_DONTNEED), 0);
	CHECK_EQ(dev.deregs, 2);
	CHECK_EQ(dev.first_byte_at_dereg, MARK);
	munmap(p, 4 * PAGE);

	/* free() of a large block: glibc unmaps it, mem_dereg runs first */
	size_t big = 32u << 20;
	unsigned char *b = malloc(big);
	memset(b, MARK, big);
	CHECK_EQ(mmun_rcache_get(c, (uintptr_t)b + PAGE, PAGE, &r), 0);
	uint64_t memh = mmun_region_memh(r);
	CHECK_EQ(mmun_rcache_put(r), 0);
	int before = dev.deregs;
	free(b);
	CHECK_EQ(dev.deregs, before + 1);
	CHECK_EQ(dev.last_memh, memh);
	CHECK_EQ(dev.first_byte_at_dereg, MARK);

	/* mem_reg's error is get's */
	p = fresh(PAGE);
	dev.refuse_addr = (uintptr_t)p;
	CHECK_EQ(mmun_rcache_get(c, (uintptr_t)p, 1, &r), -EPERM);
	dev.refuse_addr = 0;
	munmap(p, PAGE);
	CHECK_EQ(mmun_rcache_destroy(c), 0);
	printf("hit, miss, invalidation ok\n");
}

static void bounds_purge_destroy(void)
{
	mmun_rcache *c;
	mmun_region *r;
	unsigned char *p = fresh(8 * PAGE);
	memset(&dev, 0, sizeof dev);
	CHECK_EQ(mmun_rcache_create(mem_reg, mem_dereg, &dev, 2, UINT64_MAX, &c), 0);
	for (int i = 0; i < 3; i++) { /* three disjoint pages, two kept */
		CHECK_EQ(mmun_rcache_get(c, (uintptr_t)p + 2 * i * PAGE, 1, &r), 0);
		CHECK_EQ(mmun_rcache_put(r), 0);
	}
	CHECK_EQ(dev.regs, 3);
	CHECK_EQ(dev.deregs, 1); /* the least recently used, evicted */
	CHECK_EQ(dev.last_addr, (uintptr_t)p);

	CHECK_EQ(mmun_rcache_get(c, (uintptr_t)p + 4 * PAGE, 1, &r), 0);
	CHECK_EQ(mmun_rcache_purge(c), -EBUSY);
	CHECK_EQ(mmun_rcache_destroy(c), -EBUSY);
	CHECK_EQ(mmun_rcache_put(r), 0);
	CHECK_EQ(mmun_rcache_purge(c), 0);
	CHECK_EQ(dev.deregs, 3);
	CHECK_EQ(mmun_rcache_get(c, (uintptr_t)p, 1, &r), 0);
	CHECK_EQ(mmun_rcache_put(r), 0);
	CHECK_EQ(mmun_rcache_destroy(c), 0);
	CHECK_EQ(dev.deregs, dev.regs); /* every registration released */
	munmap(p, 8 * PAGE);
	printf("bounds, purge, destroy ok\n");
}

static void inside_dereg(void)
{
	mmun_region *r;
	unsigned char *p = fresh(PAGE);
	memset(&dev, 0, sizeof dev);
	CHECK_EQ(mmun_rcache_create(mem_reg, mem_dereg, &dev, 8, UINT64_MAX, &dev.cache), 0);
	CHECK_EQ(mmun_rcache_get(dev.cache, (uintptr_t)p, 1, &r), 0);
	CHECK_EQ(mmun_rcache_put(r), 0);
	dev.probe_in_dereg = 1;
	munmap(p, PAGE);
	CHECK_EQ(dev.deregs, 1);
	CHECK_EQ(dev.get_in_dereg, -EDEADLK);
	CHECK_EQ(dev.create_in_dereg, -EDEADLK);
	CHECK_EQ(dev.destroy_in_dereg, -EDEADLK);
	CHECK_EQ(mmun_rcache_destroy(dev.cache), 0); /* still live */
	printf("inside mem_dereg ok\n");
}

/* A held region holds off the change of its pages: another thread's munmap
 * returns only after the put, and mem_dereg runs only then. */
static struct {
	unsigned char *p;
	_Atomic int unmapped;
} race;

static void *unmapper(void *arg)
{
	(void)arg;
	munmap(race.p, PAGE);
	race.unmapped = 1;
	return NULL;
}

static void held_region_holds_off_the_change(void)
{
	mmun_rcache *c;
	mmun_region *r;
	pthread_t t;
	memset(&dev, 0, sizeof dev);
	race.p = fresh(PAGE);
	CHECK_EQ(mmun_rcache_create(mem_reg, mem_dereg, &dev, 8, UINT64_MAX, &c), 0);
	CHECK_EQ(mmun_rcache_get(c, (uintptr_t)race.p, 1, &r), 0);
	CHECK_EQ(pthread_create(&t, NULL, unmapper, NULL), 0);
	struct timespec pause = { 0, 200 * 1000 * 1000 };
	nanosleep(&pause, NULL);
	CHECK_EQ(race.unmapped, 0);
	CHECK_EQ(dev.deregs, 0);
	CHECK_EQ(race.p[0], MARK); /* still mapped: the device may still use it */
	CHECK_EQ(mmun_rcache_put(r), 0);
	CHECK_EQ(pthread_join(t, NULL), 0);
	CHECK_EQ(race.unmapped, 1);
	CHECK_EQ(dev.deregs, 1);
	CHECK_EQ(mmun_rcache_destroy(c), 0);
	printf("held region holds off munmap ok\n");
}

/* fork write-protects the parent's private pages (copy-on-write), so the
 * parent's registrations of them are released before it (a held region
 * would make fork wait: put first). The child gets none of the parent's
 * caches. */
static void fork_child_gets_nothing(void)
{
	mmun_rcache *c, *mine;
	mmun_region *r, *r2;
	unsigned char *p = fresh(PAGE);
	memset(&dev, 0, sizeof dev);
	CHECK_EQ(mmun_rcache_create(mem_reg, mem_dereg, &dev, 8, UINT64_MAX, &c), 0);
	CHECK_EQ(mmun_rcache_get(c, (uintptr_t)p, 1, &r), 0);
	CHECK_EQ(mmun_rcache_put(r), 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		CHECK_EQ(mmun_rcache_get(c, (uintptr_t)p, 1, &r2), -EINVAL);
		CHECK_EQ(mmun_rcache_purge(c), -EINVAL);
		CHECK_EQ(mmun_rcache_destroy(c), -EINVAL);
		int regs = dev.regs;
		CHECK_EQ(mmun_rcache_create(mem_reg, mem_dereg, &dev, 8, UINT64_MAX, &mine), 0);
		CHECK_EQ(mmun_rcache_get(mine, (uintptr_t)p, 1, &r2), 0);
		CHECK_EQ(dev.regs, regs + 1);
		CHECK_EQ(mmun_rcache_put(r2), 0);
		CHECK_EQ(mmun_rcache_destroy(mine), 0);
		_exit(0);
	}
	CHECK_EQ(dev.deregs, 1); /* released before the fork write-protected it */
	CHECK_EQ(dev.first_byte_at_dereg, MARK);
	int status;
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK_EQ(mmun_rcache_get(c, (uintptr_t)p, 1, &r), 0);
	CHECK_EQ(dev.regs, 2);
	CHECK_EQ(mmun_rcache_put(r), 0);
	CHECK_EQ(mmun_rcache_destroy(c), 0);
	munmap(p, PAGE);
	printf("fork ok\n");
}

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	misuse();
	hit_miss_invalidate();
	bounds_purge_destroy();
	inside_dereg();
	held_region_holds_off_the_change();
	fork_child_gets_nothing();
	printf("rcache ok\n");
	return 0;
}
