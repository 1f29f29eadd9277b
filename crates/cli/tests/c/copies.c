/* Every way glibc makes a process, on a parent with written private
 * memory: fork(), _Fork(), clone() without CLONE_VM, clone() with
 * CLONE_VM|CLONE_VFORK, vfork(), posix_spawn() and system(). Run under
 * `mmun trace --verify-with-kernel` by tests/trace_real.rs: the copies
 * write-protect the parent's pages inside the call, and each of those
 * kernel invalidations must be covered by a hook. */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

extern pid_t _Fork(void);
extern char **environ;

static int child_fn(void *arg) { (void)arg; return 0; }

static int reap(pid_t pid, const char *what) {
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, __WALL) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
        fprintf(stderr, "copies: %s failed\n", what);
        return 1;
    }
    return 0;
}

int main(void) {
    size_t len = 64 << 20;
    char *big = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (big == MAP_FAILED) return 2;
    memset(big, 1, len);
    char *stack = malloc(1 << 20);
    int bad = 0;
    pid_t pid;

    if ((pid = fork()) == 0) _exit(0);
    bad |= reap(pid, "fork");
    if ((pid = _Fork()) == 0) _exit(0);
    bad |= reap(pid, "_Fork");
    bad |= reap(clone(child_fn, stack + (1 << 20), SIGCHLD, NULL), "clone");
    bad |= reap(clone(child_fn, stack + (1 << 20), CLONE_VM | CLONE_VFORK | SIGCHLD, NULL),
                "clone(CLONE_VM)");
    if ((pid = vfork()) == 0) _exit(0);
    bad |= reap(pid, "vfork");
    char *argv[] = {"true", NULL};
    bad |= posix_spawnp(&pid, "true", NULL, NULL, argv, environ) ? 1 : reap(pid, "posix_spawn");
    bad |= system("true") != 0;

    munmap(big, len);
    free(stack);
    puts(bad ? "copies: FAILED" : "copies: ok");
    return bad;
}
