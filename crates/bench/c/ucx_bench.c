/* The UCX side of `mmun bench`: UCX's own memory hooks (libucm) and its
 * registration cache (ucs_rcache), measured in their own process the way
 * the Rust side measures ours (interleaved rounds, medians). Built by
 * `mmun bench` only where Debian's libucx-dev is installed, never by the
 * default build. Prints one `name median_ns` line per measurement.
 *
 *   ucm_munmap_bare      raw munmap of 16 populated pages (syscall)
 *   ucm_munmap_hooked    the same through libc, with a UCM VM_UNMAPPED
 *                        handler installed (UCX's default hook mode)
 *   rcache_hit           ucs_rcache_get + ucs_rcache_region_put of a
 *                        registered 64 KiB buffer
 *   rcache_miss          get + put of a buffer not in the cache (its pages
 *                        were unmapped and mapped again in between)
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <ucm/api/ucm.h>
#include <ucs/memory/rcache.h>

#define LEN (16 * 4096)

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, n, sizeof(double), cmp_double);
    return v[n / 2];
}

static void populate(char *at) {
    void *p = mmap(at, LEN, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_POPULATE, -1, 0);
    if (p != at) {
        perror("mmap");
        exit(2);
    }
}

static char *reserve(void) {
    char *p = mmap(NULL, 3 * LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    return p + LEN;
}

static unsigned long unmapped_events;

static void on_unmap(ucm_event_type_t type, ucm_event_t *event, void *arg) {
    (void)type; (void)event; (void)arg;
    unmapped_events++;
}

static void munmap_rows(int rounds) {
    char *bare_at = reserve(), *hooked_at = reserve();
    double *bare = calloc(rounds, sizeof(double)), *hooked = calloc(rounds, sizeof(double));
    if (ucm_set_event_handler(UCM_EVENT_VM_UNMAPPED, 0, on_unmap, NULL) != UCS_OK) {
        fprintf(stderr, "ucm_set_event_handler failed\n");
        exit(2);
    }
    for (int i = 0; i < rounds; i++) {
        populate(bare_at);
        double t = now_ns();
        syscall(SYS_munmap, bare_at, LEN);
        bare[i] = now_ns() - t;
        populate(hooked_at);
        t = now_ns();
        munmap(hooked_at, LEN);
        hooked[i] = now_ns() - t;
    }
    if (unmapped_events == 0) {
        fprintf(stderr, "UCM saw no unmap: its hooks are not installed\n");
        exit(2);
    }
    printf("ucm_munmap_bare %.1f\n", median(bare, rounds));
    printf("ucm_munmap_hooked %.1f\n", median(hooked, rounds));
    free(bare);
    free(hooked);
}

static ucs_status_t mem_reg(void *context, ucs_rcache_t *rcache, void *arg,
                            ucs_rcache_region_t *region, uint16_t flags) {
    (void)context; (void)rcache; (void)arg; (void)region; (void)flags;
    return UCS_OK;
}

static void mem_dereg(void *context, ucs_rcache_t *rcache, ucs_rcache_region_t *region) {
    (void)context; (void)rcache; (void)region;
}

static void dump_region(void *context, ucs_rcache_t *rcache, ucs_rcache_region_t *region,
                        char *buf, size_t max) {
    (void)context; (void)rcache; (void)region;
    snprintf(buf, max, "bench");
}

static const ucs_rcache_ops_t ops = {mem_reg, mem_dereg, dump_region};

static void rcache_rows(int rounds) {
    ucs_rcache_params_t params;
    memset(&params, 0, sizeof(params));
    params.region_struct_size = sizeof(ucs_rcache_region_t);
    params.alignment = 4096;
    params.max_alignment = 4096;
    params.ucm_events = UCM_EVENT_VM_UNMAPPED;
    params.ucm_event_priority = 1000;
    params.ops = &ops;
    params.flags = UCS_RCACHE_FLAG_NO_PFN_CHECK;
    params.max_regions = (unsigned long)-1;
    params.max_size = (size_t)-1;
    params.max_unreleased = (size_t)-1;
    ucs_rcache_t *rcache;
    if (ucs_rcache_create(&params, "mmun-bench", NULL, &rcache) != UCS_OK) {
        fprintf(stderr, "ucs_rcache_create failed\n");
        exit(2);
    }
    char *buf = reserve();
    populate(buf);
    ucs_rcache_region_t *region;
    if (ucs_rcache_get(rcache, buf, LEN, PROT_READ | PROT_WRITE, NULL, &region) != UCS_OK) {
        fprintf(stderr, "ucs_rcache_get failed\n");
        exit(2);
    }
    ucs_rcache_region_put(rcache, region);

    enum { BATCH = 1000 };
    double *hit = calloc(rounds, sizeof(double)), *miss = calloc(rounds, sizeof(double));
    char *other = reserve();
    for (int i = 0; i < rounds; i++) {
        double t = now_ns();
        for (int k = 0; k < BATCH; k++) {
            ucs_rcache_get(rcache, buf, LEN, PROT_READ | PROT_WRITE, NULL, &region);
            ucs_rcache_region_put(rcache, region);
        }
        hit[i] = (now_ns() - t) / BATCH;
        /* A miss: the buffer's old registration was invalidated by the
         * unmap (UCM event), so the next get registers again. */
        munmap(other, LEN);
        populate(other);
        t = now_ns();
        ucs_rcache_get(rcache, other, LEN, PROT_READ | PROT_WRITE, NULL, &region);
        ucs_rcache_region_put(rcache, region);
        miss[i] = now_ns() - t;
    }
    printf("rcache_hit %.2f\n", median(hit, rounds));
    printf("rcache_miss %.1f\n", median(miss, rounds));
    ucs_rcache_destroy(rcache);
    free(hit);
    free(miss);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 2000;
    if (rounds < 1) rounds = 1;
    munmap_rows(rounds);
    rcache_rows(rounds);
    return 0;
}
