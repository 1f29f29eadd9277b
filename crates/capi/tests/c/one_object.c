/* Linked with -lmmun and run with LD_PRELOAD=libmmun_preload.so: one
 * object, one set of hooks, each invalidation seen once.
 *
 *   one_object PRELOAD_PATH LIBMMUN_PATH
 *
 * Exits 0 if both paths name the same loaded object and a munmap reaches a
 * list notifier exactly once; 3 if they are two objects (or one is not
 * loaded); 1 on any other failure. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <mmun.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define LEN (16 * 4096u)

static uint64_t lo, hi;
static int starts, ends;

static void on_start(const struct mmun_range *r, void *arg)
{
	(void)arg;
	starts += r->start == lo && r->end == hi;
}

static void on_end(const struct mmun_range *r, void *arg)
{
	(void)arg;
	ends += r->start == lo && r->end == hi;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		printf("usage: one_object PRELOAD_PATH LIBMMUN_PATH\n");
		return 1;
	}
	void *preloaded = dlopen(argv[1], RTLD_LAZY | RTLD_NOLOAD);
	void *linked = dlopen(argv[2], RTLD_LAZY | RTLD_NOLOAD);
	if (!preloaded || !linked || preloaded != linked) {
		printf("two objects: %s -> %p, %s -> %p\n", argv[1], preloaded, argv[2], linked);
		return 3;
	}
	if (mmun_install() != 0 || !mmun_installed()) {
		printf("not installed: %s\n", mmun_install_error());
		return 1;
	}
	mmun_notifier *n;
	if (mmun_notifier_register(on_start, on_end, NULL, &n) != 0)
		return 1;
	unsigned char *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(p, 1, LEN);
	lo = (uintptr_t)p;
	hi = lo + LEN;
	munmap(p, LEN);
	mmun_notifier_unregister(n);
	if (starts != 1 || ends != 1) {
		printf("munmap seen %d times (starts), %d (ends)\n", starts, ends);
		return 1;
	}
	printf("one object ok\n");
	return 0;
}
