/* What `mmun trace` is tested on: a deterministic sequence of memory calls
 * whose ranges it prints to stdout ("NAME START END" in hex), a fork whose
 * child unmaps too, and exit code 7. With "raw" as argv[1] it also unmaps a
 * range through syscall(SYS_munmap), which no hook sees. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096UL

static char *map(unsigned long pages) {
  char *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) { perror("mmap"); exit(2); }
  memset(p, 1, pages * PAGE);
  return p;
}

static void show(const char *name, char *start, unsigned long len) {
  printf("%s %lx %lx\n", name, (unsigned long)start, (unsigned long)start + len);
}

int main(int argc, char **argv) {
  char *a = map(16);
  show("munmap", a + 4 * PAGE, 4 * PAGE);
  munmap(a + 4 * PAGE, 4 * PAGE);
  show("madvise", a, PAGE);
  madvise(a, PAGE, MADV_DONTNEED);
  show("mprotect", a + PAGE, 2 * PAGE);
  mprotect(a + PAGE, 2 * PAGE, PROT_READ);
  show("munmap", a + 8 * PAGE, 8 * PAGE);
  munmap(a + 8 * PAGE, 8 * PAGE);
  fflush(stdout);
  pid_t child = fork();
  if (child == 0) {
    char *c = map(4);
    printf("child %d\n", getpid());
    show("child-munmap", c, 4 * PAGE);
    fflush(stdout);
    munmap(c, 4 * PAGE);
    _exit(0);
  }
  int status;
  waitpid(child, &status, 0);
  if (argc > 1 && strcmp(argv[1], "raw") == 0) {
    char *r = map(8);
    show("raw-munmap", r, 8 * PAGE);
    fflush(stdout);
    syscall(SYS_munmap, r, 8 * PAGE);
  }
  printf("parent %d\n", getpid());
  return 7;
}
