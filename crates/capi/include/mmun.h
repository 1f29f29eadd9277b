/*
 * mmun.h — MMU notifiers on the calling process, for C.
 *
 * Linux tells a secondary MMU (a device, a shadow page table, a cache of
 * registrations) that a range of a process's address space is about to
 * change, and again when the change is done.  libmmun does the same for the
 * calling process from userspace: glibc's memory calls (munmap, mmap
 * MAP_FIXED, mremap, madvise, mprotect, brk, shmdt, free() that unmaps or
 * trims, fork, ...) are bracketed by an invalidation start (before the
 * change, in the calling thread) and an end (after it).  Changes no hook
 * sees (raw system calls) arrive after the fact, marked MMUN_RANGE_LATE,
 * when the userfaultfd net runs (mmun_net_start).
 *
 * Linking:  cc prog.c $(pkg-config --cflags --libs mmun)
 * Preload:  LD_PRELOAD=libmmun_preload.so prog      (the same library)
 *
 * ------------------------------------------------------------------------
 * ABI
 *
 *   libmmun.so.MMUN_ABI_VERSION is the soname.  Within one ABI version,
 *   symbols are only added (the minor version grows) and no signature,
 *   enum value or struct layout changes.  mmun_version() gives the
 *   library's version at run time; MMUN_VERSION the header's.
 *
 *   Handles (mmun_interval, mmun_notifier, mmun_rcache) are opaque values,
 *   never dereferenced by the caller.  A handle that was removed, or that
 *   never came from this library, is rejected with -EINVAL (a removed
 *   handle's number is not reused for 2^32 later subscriptions of the same
 *   slot).  A region (mmun_region) is a pointer to an object of its cache,
 *   valid from get to put.
 *
 * Errors
 *
 *   Every function that can fail returns 0 (or a documented non-negative
 *   value) on success and a negative errno value on failure.  Nothing
 *   unwinds or aborts across this interface: a rule that the Rust library
 *   enforces with a panic is an error code here (-EDEADLK), and an internal
 *   failure is -ENOTRECOVERABLE.
 *
 * One library per process
 *
 *   libmmun.so, libmmun_preload.so (a symlink to it) and a program linked
 *   with -lmmun while preloading libmmun_preload.so all share one object,
 *   one address-space state and one set of hooks: the dynamic loader loads
 *   one file once, under every name.  A second, different copy (libmmun.a
 *   linked into a program that also loads libmmun.so) stays inert:
 *   mmun_install() returns -EEXIST there.
 *
 * Threads and reentrancy
 *
 *   All functions are thread-safe.  A handle must not be removed while
 *   another thread still uses it.
 *
 *   Callbacks run synchronously in the thread that made the memory call,
 *   possibly inside malloc() or free(), with the address space's lock
 *   held (late ones run in the userfaultfd net's thread, or in the calling
 *   thread once its outer callback returned).  A callback therefore
 *     - must not allocate (malloc, printf with a buffer, ...) or take a lock
 *       that the allocator or the thread's interrupted code may hold;
 *     - must not insert, remove, register or unregister (-EDEADLK), nor
 *       call mmun_interval_read_begin for an interval whose invalidation it
 *       is running (-EDEADLK: it would wait for itself);
 *     - may call memory functions (munmap, free, ...): those changes are
 *       delivered after the callback returns, marked MMUN_RANGE_LATE;
 *     - must return: a C++ exception or longjmp out of it is undefined
 *       behaviour.
 *   A callback may sleep only when range->flags has MMUN_RANGE_BLOCKABLE
 *   (the hooks always set it).
 *
 * fork, exit and exec
 *
 *   A fork child starts with no subscriptions, as Linux gives a child mm no
 *   notifiers: the parent's handles are invalid there (-EINVAL).  At exit()
 *   every interval is called twice for the whole address space
 *   ([0, UINT64_MAX)): MMUN_EVENT_RELEASE (mmu_notifier_release), then
 *   MMUN_EVENT_UNMAP (exit_mmap); _exit() and crashes call nothing.  exec
 *   replaces the image and everything with it.
 */
#ifndef MMUN_H
#define MMUN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version: the soname's number (libmmun.so.0). */
#define MMUN_ABI_VERSION 0

/* The header's version; mmun_version() returns the library's. */
#define MMUN_VERSION_MAJOR 0
#define MMUN_VERSION_MINOR 1
#define MMUN_VERSION_PATCH 0
#define MMUN_VERSION_NUMBER(major, minor, patch) (((major) << 16) | ((minor) << 8) | (patch))
#define MMUN_VERSION MMUN_VERSION_NUMBER(MMUN_VERSION_MAJOR, MMUN_VERSION_MINOR, MMUN_VERSION_PATCH)

/* MMUN_VERSION_NUMBER(major, minor, patch) of the loaded library. */
unsigned int mmun_version(void);

/* --- installation -------------------------------------------------------- */

/*
 * Patches glibc's memory calls in this process, once; later calls return
 * the first outcome.  libmmun.so and libmmun_preload.so call it when they
 * load, so a dynamically linked program need not; a program linked with
 * libmmun.a calls it before subscribing.
 *
 * Returns 0, or
 *   -ENOTSUP  glibc or the loader is not a build the hooks know (the reason
 *             is in mmun_install_error());
 *   -EEXIST   another copy of libmmun is loaded in this process and owns
 *             the hooks.
 */
int mmun_install(void);

/* 1 if glibc is patched in this process, else 0. */
int mmun_installed(void);

/*
 * Why mmun_install() failed, as text, or NULL if it succeeded or never ran.
 * The string lives as long as the process.
 */
const char *mmun_install_error(void);

/*
 * Starts the userfaultfd net: changes no hook sees (raw system calls,
 * static code) on subscribed intervals are reported after the fact, marked
 * MMUN_RANGE_LATE.  Idempotent.  Returns 0, or -ENOTSUP if userfaultfd is
 * unavailable (no permission, vm.unprivileged_userfaultfd=0, old kernel):
 * the hooks work without it.
 */
int mmun_net_start(void);

/* --- ranges -------------------------------------------------------------- */

/* Why a range changes: Linux's enum mmu_notifier_event, same values. */
enum mmun_event {
	MMUN_EVENT_UNMAP = 0,           /* munmap, mremap's old range, MAP_FIXED over it, exit */
	MMUN_EVENT_CLEAR = 1,           /* pages dropped, mapping stays (MADV_DONTNEED, ...) */
	MMUN_EVENT_PROTECTION_VMA = 2,  /* mprotect */
	MMUN_EVENT_PROTECTION_PAGE = 3, /* pages write-protected (fork's copy-on-write) */
	MMUN_EVENT_SOFT_DIRTY = 4,
	MMUN_EVENT_RELEASE = 5,
	MMUN_EVENT_MIGRATE = 6,
	MMUN_EVENT_EXCLUSIVE = 7,
};

/* range->flags bits. */
#define MMUN_RANGE_BLOCKABLE 0x1u /* the callback may sleep */
#define MMUN_RANGE_LATE 0x2u      /* the change already happened (reported after the fact) */

/* The range a callback is told about: [start, end), the whole range of the
 * change (not clipped to the subscription). */
struct mmun_range {
	uint64_t start;
	uint64_t end;
	uint32_t event; /* enum mmun_event */
	uint32_t flags; /* MMUN_RANGE_* */
};

/* --- interval subscriptions ---------------------------------------------- */

/*
 * An interval subscription: Linux's mmu_interval_notifier.  A mirror of
 * [start, start+length) follows the collision-retry protocol:
 *
 *   again:
 *     mmun_interval_read_begin(sub, &seq);
 *     ... look up the pages, no driver lock held ...
 *     lock(driver);
 *     if (mmun_interval_read_retry(sub, seq) == 1) { unlock(driver); goto again; }
 *     ... program the mirror ...
 *     unlock(driver);
 *
 * and its invalidate callback takes the same driver lock, calls
 * mmun_interval_set_seq(sub, cur_seq), drops what it mirrors of the range,
 * unlocks and returns 1.
 */
typedef struct mmun_interval mmun_interval;

/*
 * Called before a change that overlaps the interval (or after it, with
 * MMUN_RANGE_LATE).  Returns nonzero when done; 0 only if the range is not
 * MMUN_RANGE_BLOCKABLE and the callback would have to sleep.
 */
typedef int (*mmun_interval_invalidate_fn)(mmun_interval *sub, const struct mmun_range *range,
					   uint64_t cur_seq, void *arg);

/*
 * Subscribes [start, start+length) with `invalidate` (called with `arg`),
 * and stores the handle in *out.
 *
 * Returns 0, or
 *   -EINVAL     out or invalidate is NULL;
 *   -EOVERFLOW  length is 0 or start+length wraps past 2^64;
 *   -EDEADLK    called from a callback;
 *   -ENOMEM     no handle left (2^20 live subscriptions).
 */
int mmun_interval_insert(uint64_t start, uint64_t length, mmun_interval_invalidate_fn invalidate,
			 void *arg, mmun_interval **out);

/*
 * Unsubscribes, after any running invalidate callback of it returned.  The
 * handle is invalid afterwards.
 *
 * Returns 0, or -EINVAL (not a live handle: NULL, removed, foreign),
 * -EDEADLK (called from a callback: it would wait for itself).
 */
int mmun_interval_remove(mmun_interval *sub);

/*
 * mmu_interval_read_begin: stores in *seq the sequence number to pass to
 * mmun_interval_read_retry; waits first if an invalidation covering the
 * interval is running.
 *
 * Returns 0, or -EINVAL (not a live handle, seq NULL), -EDEADLK (it would
 * wait for an invalidation this thread is running: called from the
 * interval's own callback after set_seq, or from another callback of a
 * covering change).
 */
int mmun_interval_read_begin(mmun_interval *sub, uint64_t *seq);

/*
 * mmu_interval_read_retry: 1 if an invalidation started since read_begin
 * gave `seq` (retry), 0 if not.  Reliable under the driver lock that the
 * callback takes around set_seq.  -EINVAL for a handle that is not live.
 */
int mmun_interval_read_retry(mmun_interval *sub, uint64_t seq);

/* mmu_interval_check_retry: the same without the lock; 1 is reliable, 0 a hint. */
int mmun_interval_check_retry(mmun_interval *sub, uint64_t seq);

/*
 * mmu_interval_set_seq: from the interval's invalidate callback, under the
 * driver lock, with the cur_seq the callback was given.
 *
 * Returns 0, or -EINVAL when not called from `sub`'s own invalidate
 * callback on this thread or with another cur_seq.
 */
int mmun_interval_set_seq(mmun_interval *sub, uint64_t cur_seq);

/* First byte and length of the interval; -EINVAL for a handle that is not live. */
int mmun_interval_range(mmun_interval *sub, uint64_t *start, uint64_t *length);

/*
 * read_begin and read_retry inline, for a fault path that runs them
 * millions of times a second: mmun_interval_seq_get fills `s` once, after
 * insert, and the two functions below read the interval's words with
 * atomic loads instead of calling into the library (the same loads the
 * library makes; read_begin still calls it when it has to wait).
 *
 * They give up the checked handle: `s` must not be used after
 * mmun_interval_remove(s->sub) (its word may then belong to a later
 * interval), as freed memory must not be.  The checked functions above
 * keep returning -EINVAL for a removed handle.  A fork child must not use
 * the parent's `s` (nor its handles).
 */
struct mmun_interval_seq {
	const uint64_t *interval;     /* the interval's sequence word */
	const uint64_t *invalidating; /* the sequence of the running invalidation */
	mmun_interval *sub;           /* for read_begin's slow path */
};

/* Fills *s for `sub`.  Returns 0, or -EINVAL (not a live handle, s NULL). */
int mmun_interval_seq_get(mmun_interval *sub, struct mmun_interval_seq *s);

/* mmun_interval_read_begin through `s`: the same results. */
static inline int mmun_interval_read_begin_inline(const struct mmun_interval_seq *s, uint64_t *seq)
{
	uint64_t v = __atomic_load_n(s->interval, __ATOMIC_ACQUIRE);

	if (v == __atomic_load_n(s->invalidating, __ATOMIC_ACQUIRE))
		return mmun_interval_read_begin(s->sub, seq); /* a covering invalidation runs: wait */
	*seq = v;
	return 0;
}

/* mmun_interval_read_retry through `s`, under the driver lock: 1 to retry, 0 if not. */
static inline int mmun_interval_read_retry_inline(const struct mmun_interval_seq *s, uint64_t seq)
{
	return __atomic_load_n(s->interval, __ATOMIC_RELAXED) != seq;
}

/* --- list notifiers ------------------------------------------------------ */

/*
 * A whole-address-space notifier: Linux's mmu_notifier with
 * invalidate_range_start and invalidate_range_end.  Every change of the
 * process reaches it, each start followed by its end.
 */
typedef struct mmun_notifier mmun_notifier;

/* A start or end callback. */
typedef void (*mmun_range_fn)(const struct mmun_range *range, void *arg);

/*
 * Registers a notifier with `start` and/or `end` (one may be NULL) called
 * with `arg`, and stores the handle in *out.
 *
 * Returns 0, or -EINVAL (out NULL, both callbacks NULL), -EDEADLK (called
 * from a callback), -ENOMEM (no handle left).
 */
int mmun_notifier_register(mmun_range_fn start, mmun_range_fn end, void *arg, mmun_notifier **out);

/*
 * Unregisters, after every running callback of it returned.
 *
 * Returns 0, or -EINVAL (not a live handle), -EDEADLK (called from a
 * callback: it would wait for itself).
 */
int mmun_notifier_unregister(mmun_notifier *notifier);

/* --- registration cache ------------------------------------------------- */

/*
 * A registration cache, as UCX's ucs_rcache: get(addr, length) returns a
 * region whose pages are registered with your device through your mem_reg
 * (once per miss; hits make no call and take no lock of the cache's), and
 * mem_dereg releases a registration before its pages change — from inside
 * the munmap, free, mremap or madvise that changes them, in the thread
 * that made that call.  Registrations overlapping a new one are merged into
 * it; beyond max_regions or max_bytes the least recently used idle ones are
 * deregistered.
 *
 * A held region (get ... put) is a use of the registration: a change of
 * its pages waits in the changing thread until the region is put.  Put a
 * region before unmapping or freeing its memory in the same thread, and
 * before fork (which write-protects private pages for copy-on-write and so
 * releases their registrations first), or that call waits forever.
 *
 * mem_dereg runs under the same rules as a callback (see "Threads and
 * reentrancy"): no allocation, no lock the interrupted code may hold, and
 * it must not fail.  mem_reg runs in the thread that called get, with no
 * lock of the cache held.
 *
 * fork: the parent's registrations of private memory are released before
 * the fork (see above); the parent's caches are invalid in the child
 * (-EINVAL, nothing is called there for them); create a new cache in the
 * child.
 */
typedef struct mmun_rcache mmun_rcache;
typedef struct mmun_region mmun_region;

/* Registers [addr, addr+length) (page-aligned), stores what names the
 * registration (a key, a pointer) in *memh; returns 0 or a negative errno,
 * which get then returns. */
typedef int (*mmun_mem_reg_fn)(void *arg, uint64_t addr, uint64_t length, uint64_t *memh);
/* Releases a registration mem_reg made, with the values it was given. */
typedef void (*mmun_mem_dereg_fn)(void *arg, uint64_t addr, uint64_t length, uint64_t memh);

/*
 * Creates a cache calling mem_reg and mem_dereg with `arg`, holding at most
 * max_regions registrations and max_bytes registered bytes (0 counts as 1;
 * UINT64_MAX for no bound).
 *
 * Returns 0, or -EINVAL (a NULL function or out), -EDEADLK (from a
 * callback), -ENOTSUP (the hooks cannot be installed: no invalidation
 * would arrive), -ENOMEM (no handle left).
 */
int mmun_rcache_create(mmun_mem_reg_fn mem_reg, mmun_mem_dereg_fn mem_dereg, void *arg,
		       uint64_t max_regions, uint64_t max_bytes, mmun_rcache **out);

/*
 * Deregisters every registration and frees the cache.
 * Returns 0, or -EINVAL (not a live cache), -EBUSY (a region is held),
 * -EDEADLK (from a callback).
 */
int mmun_rcache_destroy(mmun_rcache *rcache);

/*
 * Deregisters every registration (UCX purges before fork).
 * Returns 0, or -EINVAL, -EBUSY (a region is held), -EDEADLK.
 */
int mmun_rcache_purge(mmun_rcache *rcache);

/*
 * Holds a region covering [addr, addr+length): a live cached registration
 * or a new one.  Stores it in *region.
 *
 * Returns 0, or
 *   -EINVAL     rcache not live, region NULL;
 *   -EOVERFLOW  length 0, or addr+length wraps;
 *   -EDEADLK    a miss from inside a callback;
 *   what mem_reg returned when it failed.
 */
int mmun_rcache_get(mmun_rcache *rcache, uint64_t addr, uint64_t length, mmun_region **region);

/*
 * Releases a region get returned; it is invalid afterwards.
 * Returns 0, or -EINVAL (NULL; already put, unless get has handed the same
 * object out again since; the parent's region in a fork child).  A region
 * must not be put after its cache is destroyed (destroy refuses while one
 * is held).
 */
int mmun_rcache_put(mmun_region *region);

/* The registered range (page-aligned, covering what get asked for) and what
 * mem_reg stored, of a held region; 0 for NULL or a region already put. */
uint64_t mmun_region_start(const mmun_region *region);
uint64_t mmun_region_length(const mmun_region *region);
uint64_t mmun_region_memh(const mmun_region *region);

#ifdef __cplusplus
}
#endif

#endif /* MMUN_H */
