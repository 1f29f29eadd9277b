/* Every function of mmun.h, misuse included. Built against the installed
 * library by tests/c/run.sh (and so by `cargo test -p mmun-capi` and
 * .ci/run). Callbacks only record (no allocation inside them); the checks
 * run afterwards. Exits 1 at the first failed check, naming its line. */
#define _GNU_SOURCE
#include <errno.h>
#include <mmun.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096u
#define CHECK(cond)                                                                    \
	do {                                                                           \
		if (!(cond)) {                                                         \
			printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);       \
			_exit(1); /* no atexit: exit would run callbacks */ \
		}                                                                      \
	} while (0)
#define CHECK_EQ(got, want)                                                            \
	do {                                                                           \
		long long got_ = (long long)(got), want_ = (long long)(want);          \
		if (got_ != want_) {                                                   \
			printf("FAILED %s:%d: %s = %lld, want %s = %lld\n", __FILE__,  \
			       __LINE__, #got, got_, #want, want_);                    \
			_exit(1); /* no atexit: exit would run callbacks */ \
		}                                                                      \
	} while (0)

static void *fresh(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED);
	memset(p, 0x5a, len);
	return p;
}

/* --- a well-behaved interval: sets the seq, counts ------------------------ */

struct counted {
	int calls;
	uint64_t last_cur_seq;
};

static int counting(mmun_interval *sub, const struct mmun_range *range, uint64_t cur_seq, void *arg)
{
	struct counted *c = arg;
	(void)range;
	c->calls++;
	c->last_cur_seq = cur_seq;
	return mmun_interval_set_seq(sub, cur_seq) == 0;
}

static void versions_and_install(void)
{
	CHECK_EQ(mmun_version(), MMUN_VERSION);
	CHECK_EQ(MMUN_VERSION, MMUN_VERSION_NUMBER(MMUN_VERSION_MAJOR, MMUN_VERSION_MINOR, MMUN_VERSION_PATCH));
	CHECK_EQ(mmun_install(), 0);
	CHECK_EQ(mmun_install(), 0); /* idempotent */
	CHECK_EQ(mmun_installed(), 1);
	CHECK(mmun_install_error() == NULL);
}

/* exit(): every interval hears the release, then the unmap, of the whole
 * address space. */
static int exit_pipe = -1;

static int report_to_pipe(mmun_interval *sub, const struct mmun_range *r, uint64_t cur_seq, void *arg)
{
	(void)arg;
	mmun_interval_set_seq(sub, cur_seq);
	(void)!write(exit_pipe, r, sizeof *r); /* a system call: no allocation */
	return 1;
}

static void exit_unmaps_everything(void)
{
	int fds[2];
	struct mmun_range r = { 0 };
	CHECK_EQ(pipe(fds), 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		mmun_interval *sub;
		char *p = fresh(PAGE);
		close(fds[0]);
		exit_pipe = fds[1];
		CHECK_EQ(mmun_interval_insert((uintptr_t)p, PAGE, report_to_pipe, NULL, &sub), 0);
		exit(0);
	}
	close(fds[1]);
	int status;
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	const uint32_t events[] = { MMUN_EVENT_RELEASE, MMUN_EVENT_UNMAP };
	for (int i = 0; i < 2; i++) {
		CHECK_EQ(read(fds[0], &r, sizeof r), sizeof r);
		CHECK_EQ(r.event, events[i]);
		CHECK_EQ(r.start, 0);
		CHECK(r.end == UINT64_MAX);
	}
	CHECK_EQ(read(fds[0], &r, sizeof r), 0); /* nothing more */
	close(fds[0]);
	printf("exit ok\n");
}

/* Last: once the net runs, late duplicates of hooked changes may reach the
 * intervals from its thread, which the exact counts above do not expect. */
static void net(void)
{
	int net = mmun_net_start();
	CHECK(net == 0 || net == -ENOTSUP);
	CHECK_EQ(mmun_net_start(), net); /* idempotent */
	printf("net %s\n", net == 0 ? "started" : "unavailable (-ENOTSUP)");
}

static void interval_misuse(void)
{
	struct counted c = { 0 };
	mmun_interval *sub = NULL;
	uint64_t seq = 0, start = 0, len = 0;
	struct mmun_interval_seq words;
	char *p = fresh(4 * PAGE);

	CHECK_EQ(mmun_interval_insert((uintptr_t)p, 4 * PAGE, counting, &c, NULL), -EINVAL);
	CHECK_EQ(mmun_interval_insert((uintptr_t)p, 4 * PAGE, NULL, &c, &sub), -EINVAL);
	CHECK_EQ(mmun_interval_insert((uintptr_t)p, 0, counting, &c, &sub), -EOVERFLOW);
	CHECK_EQ(mmun_interval_insert(UINT64_MAX - 10, 100, counting, &c, &sub), -EOVERFLOW);
	CHECK(sub == NULL); /* failed inserts leave *out alone */

	mmun_interval *bogus[] = { NULL, (mmun_interval *)(uintptr_t)1, (mmun_interval *)(uintptr_t)0x1234567,
				   (mmun_interval *)(uintptr_t)UINT64_MAX };
	for (size_t i = 0; i < sizeof bogus / sizeof bogus[0]; i++) {
		CHECK_EQ(mmun_interval_remove(bogus[i]), -EINVAL);
		CHECK_EQ(mmun_interval_read_begin(bogus[i], &seq), -EINVAL);
		CHECK_EQ(mmun_interval_read_retry(bogus[i], seq), -EINVAL);
		CHECK_EQ(mmun_interval_check_retry(bogus[i], seq), -EINVAL);
		CHECK_EQ(mmun_interval_set_seq(bogus[i], 1), -EINVAL);
		CHECK_EQ(mmun_interval_range(bogus[i], &start, &len), -EINVAL);
		CHECK_EQ(mmun_interval_seq_get(bogus[i], &words), -EINVAL);
	}

	CHECK_EQ(mmun_interval_insert((uintptr_t)p, 4 * PAGE, counting, &c, &sub), 0);
	CHECK(sub != NULL);
	CHECK_EQ(mmun_interval_range(sub, &start, &len), 0);
	CHECK_EQ(start, (uintptr_t)p);
	CHECK_EQ(len, 4 * PAGE);
	CHECK_EQ(mmun_interval_range(sub, NULL, &len), -EINVAL);
	CHECK_EQ(mmun_interval_range(sub, &start, NULL), -EINVAL);
	CHECK_EQ(mmun_interval_read_begin(sub, NULL), -EINVAL);
	CHECK_EQ(mmun_interval_seq_get(sub, NULL), -EINVAL);
	CHECK_EQ(mmun_interval_seq_get(sub, &words), 0);
	CHECK(words.sub == sub);
	/* set_seq outside the interval's own callback */
	CHECK_EQ(mmun_interval_read_begin(sub, &seq), 0);
	CHECK_EQ(mmun_interval_set_seq(sub, seq), -EINVAL);

	CHECK_EQ(mmun_interval_remove(sub), 0);
	CHECK_EQ(mmun_interval_remove(sub), -EINVAL); /* double remove */
	CHECK_EQ(mmun_interval_read_begin(sub, &seq), -EINVAL);
	CHECK_EQ(mmun_interval_read_retry(sub, seq), -EINVAL);
	CHECK_EQ(mmun_interval_range(sub, &start, &len), -EINVAL);
	CHECK_EQ(mmun_interval_seq_get(sub, &words), -EINVAL);

	/* the slot is reused by the next insert; the old handle still fails */
	mmun_interval *again = NULL;
	CHECK_EQ(mmun_interval_insert((uintptr_t)p, PAGE, counting, &c, &again), 0);
	CHECK(again != sub);
	CHECK_EQ(mmun_interval_remove(sub), -EINVAL);
	CHECK_EQ(mmun_interval_remove(again), 0);
	munmap(p, 4 * PAGE);
	CHECK_EQ(c.calls, 0); /* removed before the munmap */
	printf("interval misuse ok\n");
}

/* The collision-retry protocol: a change between read_begin and read_retry
 * makes read_retry (and check_retry) say "retry"; a fresh read_begin does
 * not. */
static void retry_protocol(void)
{
	struct counted c = { 0 };
	mmun_interval *sub;
	uint64_t seq, seq2;
	char *p = fresh(8 * PAGE);
	CHECK_EQ(mmun_interval_insert((uintptr_t)p, 8 * PAGE, counting, &c, &sub), 0);
	CHECK_EQ(mmun_interval_read_begin(sub, &seq), 0);
	CHECK_EQ(mmun_interval_read_retry(sub, seq), 0);
	CHECK_EQ(mmun_interval_check_retry(sub, seq), 0);
	CHECK_EQ(madvise(p + PAGE, PAGE, MADV_DONTNEED), 0);
	/* 1, or 2 when the hooks also clear the 2 MiB block around it (a
	 * huge page the kernel would split) */
	CHECK(c.calls >= 1);
	int calls = c.calls;
	CHECK(c.last_cur_seq & 1); /* a cur_seq is odd */
	CHECK_EQ(mmun_interval_read_retry(sub, seq), 1);
	CHECK_EQ(mmun_interval_check_retry(sub, seq), 1);
	CHECK_EQ(mmun_interval_read_begin(sub, &seq2), 0);
	CHECK(seq2 != seq);
	CHECK_EQ(mmun_interval_read_retry(sub, seq2), 0);
	/* a change outside the interval does not disturb it */
	char *q = fresh(PAGE);
	munmap(q, PAGE);
	CHECK_EQ(mmun_interval_read_retry(sub, seq2), 0);
	CHECK_EQ(c.calls, calls);
	CHECK_EQ(mmun_interval_remove(sub), 0);
	munmap(p, 8 * PAGE);
	printf("retry protocol ok\n");
}

/* The same protocol through the header's inline functions: the same
 * answers as the checked calls, before and after a change. */
static void retry_protocol_inline(void)
{
	struct counted c = { 0 };
	struct mmun_interval_seq s;
	mmun_interval *sub;
	uint64_t seq, seq2, checked;
	char *p = fresh(8 * PAGE);
	CHECK_EQ(mmun_interval_insert((uintptr_t)p, 8 * PAGE, counting, &c, &sub), 0);
	CHECK_EQ(mmun_interval_seq_get(sub, &s), 0);
	CHECK_EQ(mmun_interval_read_begin_inline(&s, &seq), 0);
	CHECK_EQ(mmun_interval_read_begin(sub, &checked), 0);
	CHECK_EQ(seq, checked);
	CHECK_EQ(mmun_interval_read_retry_inline(&s, seq), 0);
	CHECK_EQ(madvise(p + PAGE, PAGE, MADV_DONTNEED), 0);
	CHECK(c.calls >= 1);
	CHECK_EQ(mmun_interval_read_retry_inline(&s, seq), 1);
	CHECK_EQ(mmun_interval_read_begin_inline(&s, &seq2), 0);
	CHECK(seq2 != seq);
	CHECK_EQ(mmun_interval_read_retry(sub, seq2), 0);
	CHECK_EQ(mmun_interval_read_retry_inline(&s, seq2), 0);
	CHECK_EQ(mmun_interval_remove(sub), 0);
	munmap(p, 8 * PAGE);
	printf("retry protocol inline ok\n");
}

/* --- inside a callback: what would wait for itself is -EDEADLK ------------ */

static struct inside {
	mmun_interval *self, *other;
	mmun_notifier *notifier;
	uint64_t outer_seq, lo, hi;
	int calls;
	int read_begin_before_set_seq, set_seq_wrong, set_seq_other, set_seq, read_begin_after_set_seq;
	int insert, remove_self, remove_other, reg, unreg, net, read_retry;
	int list_calls, list_read_begin;
	struct mmun_interval_seq self_words;
	int inline_before_set_seq, inline_after_set_seq, inline_retry;
} in;

static int nothing(mmun_interval *sub, const struct mmun_range *r, uint64_t s, void *a)
{
	(void)r, (void)a;
	return mmun_interval_set_seq(sub, s) == 0;
}

static void list_nothing(const struct mmun_range *r, void *a)
{
	(void)r, (void)a;
}

static int misbehaving(mmun_interval *sub, const struct mmun_range *range, uint64_t cur_seq, void *arg)
{
	uint64_t seq;
	mmun_interval *made = NULL;
	mmun_notifier *n = NULL;
	(void)range, (void)arg;
	in.calls++;
	/* Not yet covered by this callback's set_seq: read_begin does not wait. */
	in.read_begin_before_set_seq = mmun_interval_read_begin(sub, &seq);
	in.inline_before_set_seq = mmun_interval_read_begin_inline(&in.self_words, &seq);
	in.set_seq_wrong = mmun_interval_set_seq(sub, cur_seq + 2);
	in.set_seq_other = mmun_interval_set_seq(in.other, cur_seq);
	in.set_seq = mmun_interval_set_seq(sub, cur_seq);
	in.read_begin_after_set_seq = mmun_interval_read_begin(sub, &seq);
	/* covered now: the inline one takes the slow path, which refuses */
	in.inline_after_set_seq = mmun_interval_read_begin_inline(&in.self_words, &seq);
	in.read_retry = mmun_interval_read_retry(sub, in.outer_seq);
	in.inline_retry = mmun_interval_read_retry_inline(&in.self_words, in.outer_seq);
	in.insert = mmun_interval_insert(0x10000, PAGE, nothing, NULL, &made);
	in.remove_self = mmun_interval_remove(sub);
	in.remove_other = mmun_interval_remove(in.other);
	in.reg = mmun_notifier_register(list_nothing, NULL, NULL, &n);
	in.unreg = mmun_notifier_unregister(in.notifier);
	in.net = mmun_net_start();
	return 1;
}

/* A list notifier's start runs after the interval callbacks set their seq:
 * read_begin of a covered interval would wait for this very change. */
static void list_reads_covered(const struct mmun_range *range, void *arg)
{
	uint64_t seq;
	(void)arg;
	if (range->end <= in.lo || range->start >= in.hi)
		return; /* another change of the process */
	in.list_calls++;
	in.list_read_begin = mmun_interval_read_begin(in.self, &seq);
}

static void inside_callbacks(void)
{
	char *p = fresh(4 * PAGE), *o = fresh(PAGE);
	mmun_notifier *reader = NULL;
	in.lo = (uintptr_t)p;
	in.hi = (uintptr_t)p + 4 * PAGE;
	CHECK_EQ(mmun_interval_insert((uintptr_t)p, 4 * PAGE, misbehaving, NULL, &in.self), 0);
	CHECK_EQ(mmun_interval_insert((uintptr_t)o, PAGE, nothing, NULL, &in.other), 0);
	CHECK_EQ(mmun_notifier_register(list_nothing, list_nothing, NULL, &in.notifier), 0);
	CHECK_EQ(mmun_interval_seq_get(in.self, &in.self_words), 0);
	CHECK_EQ(mmun_interval_read_begin(in.self, &in.outer_seq), 0);
	CHECK_EQ(mprotect(p, PAGE, PROT_READ), 0);
	CHECK_EQ(in.calls, 1);
	CHECK_EQ(in.read_begin_before_set_seq, 0);
	CHECK_EQ(in.set_seq_wrong, -EINVAL);
	CHECK_EQ(in.set_seq_other, -EINVAL);
	CHECK_EQ(in.set_seq, 0);
	CHECK_EQ(in.read_begin_after_set_seq, -EDEADLK);
	CHECK_EQ(in.read_retry, 1);
	CHECK_EQ(in.inline_before_set_seq, 0);
	CHECK_EQ(in.inline_after_set_seq, -EDEADLK);
	CHECK_EQ(in.inline_retry, 1);
	CHECK_EQ(in.insert, -EDEADLK);
	CHECK_EQ(in.remove_self, -EDEADLK);
	CHECK_EQ(in.remove_other, -EDEADLK);
	CHECK_EQ(in.reg, -EDEADLK);
	CHECK_EQ(in.unreg, -EDEADLK);
	CHECK_EQ(in.net, -EDEADLK);
	/* everything refused is still live */
	CHECK_EQ(mmun_notifier_unregister(in.notifier), 0);
	CHECK_EQ(mmun_interval_remove(in.other), 0);

	CHECK_EQ(mmun_notifier_register(list_reads_covered, NULL, NULL, &reader), 0);
	CHECK_EQ(mprotect(p, PAGE, PROT_READ | PROT_WRITE), 0);
	CHECK_EQ(in.list_calls, 1);
	CHECK_EQ(in.list_read_begin, -EDEADLK);
	CHECK_EQ(mmun_notifier_unregister(reader), 0);
	CHECK_EQ(mmun_interval_remove(in.self), 0);
	munmap(p, 4 * PAGE);
	munmap(o, PAGE);
	printf("inside callbacks ok\n");
}

/* --- list notifiers ------------------------------------------------------- */

/* Counts the hooked changes that touch [lo, hi) (a list notifier hears
 * every change of the process; late ones come from the net's thread). */
struct pair {
	uint64_t lo, hi;
	int starts, ends;
	struct mmun_range first;
};

static int mine(const struct pair *s, const struct mmun_range *r)
{
	return r->start < s->hi && r->end > s->lo && !(r->flags & MMUN_RANGE_LATE);
}

static void on_start(const struct mmun_range *r, void *arg)
{
	struct pair *s = arg;
	if (mine(s, r) && s->starts++ == 0)
		s->first = *r;
}

static void on_end(const struct mmun_range *r, void *arg)
{
	struct pair *s = arg;
	s->ends += mine(s, r);
}

static void list_misuse(void)
{
	struct pair s = { 0 }, e = { 0 };
	mmun_notifier *n = NULL, *only_end = NULL;
	CHECK_EQ(mmun_notifier_register(NULL, NULL, &s, &n), -EINVAL);
	CHECK_EQ(mmun_notifier_register(on_start, on_end, &s, NULL), -EINVAL);
	CHECK(n == NULL);
	CHECK_EQ(mmun_notifier_unregister(NULL), -EINVAL);
	CHECK_EQ(mmun_notifier_unregister((mmun_notifier *)(uintptr_t)0x77), -EINVAL);
	char *p = fresh(2 * PAGE);
	s.lo = e.lo = (uintptr_t)p;
	s.hi = e.hi = (uintptr_t)p + 2 * PAGE;
	CHECK_EQ(mmun_notifier_register(on_start, on_end, &s, &n), 0);
	CHECK_EQ(mmun_notifier_register(NULL, on_end, &e, &only_end), 0);
	CHECK_EQ(munmap(p, 2 * PAGE), 0);
	CHECK(s.starts >= 1 && s.starts == s.ends);
	CHECK_EQ(s.first.start, (uintptr_t)p);
	CHECK_EQ(s.first.end, (uintptr_t)p + 2 * PAGE);
	CHECK_EQ(s.first.event, MMUN_EVENT_UNMAP);
	CHECK_EQ(s.first.flags, MMUN_RANGE_BLOCKABLE);
	CHECK_EQ(e.starts, 0);
	CHECK_EQ(e.ends, s.ends);
	CHECK_EQ(mmun_notifier_unregister(n), 0);
	CHECK_EQ(mmun_notifier_unregister(n), -EINVAL); /* double unregister */
	CHECK_EQ(mmun_notifier_unregister(only_end), 0);
	int before = s.starts;
	p = fresh(2 * PAGE);
	s.lo = (uintptr_t)p;
	s.hi = (uintptr_t)p + 2 * PAGE;
	munmap(p, 2 * PAGE);
	CHECK_EQ(s.starts, before); /* unregistered: silent */
	printf("list misuse ok\n");
}

/* --- fork: the child starts without subscriptions ------------------------- */

static void fork_child_starts_fresh(void)
{
	struct counted parent = { 0 }, child = { 0 };
	mmun_interval *sub, *mine;
	uint64_t seq;
	char *p = fresh(2 * PAGE);
	CHECK_EQ(mmun_interval_insert((uintptr_t)p, 2 * PAGE, counting, &parent, &sub), 0);
	CHECK_EQ(mmun_interval_read_begin(sub, &seq), 0);
	int calls_before = parent.calls; /* fork's write-protect reaches the parent */
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		CHECK_EQ(mmun_interval_read_retry(sub, seq), -EINVAL);
		CHECK_EQ(mmun_interval_remove(sub), -EINVAL);
		CHECK_EQ(mmun_interval_insert((uintptr_t)p, 2 * PAGE, counting, &child, &mine), 0);
		int inherited = parent.calls;
		munmap(p, PAGE);
		CHECK(child.calls >= 1);
		CHECK_EQ(parent.calls, inherited); /* the parent's callback is not called here */
		CHECK_EQ(mmun_interval_remove(mine), 0);
		_exit(0);
	}
	int status;
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(parent.calls > calls_before);
	CHECK_EQ(mmun_interval_remove(sub), 0);
	munmap(p, 2 * PAGE);
	printf("fork ok\n");
}

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	versions_and_install();
	interval_misuse();
	retry_protocol();
	retry_protocol_inline();
	inside_callbacks();
	list_misuse();
	fork_child_starts_fresh();
	exit_unmaps_everything();
	net();
	printf("api ok\n");
	return 0;
}
