/* Preloaded after libmmun_preload.so: subscribes a list notifier over the
 * whole address space through the C API when it loads, so that any program
 * (bash in tests/preload.rs) runs with one. */
#include <stdint.h>
#include <unistd.h>

void *mmun_subscribe(uint64_t start, uint64_t len,
                     void (*cb)(void *, int, int, uint64_t, uint64_t, int),
                     void *arg);

static void quiet(void *arg, int phase, int event, uint64_t start,
                  uint64_t end, int late)
{
    (void)arg, (void)phase, (void)event, (void)start, (void)end, (void)late;
}

__attribute__((constructor)) static void subscribe(void)
{
    static const char msg[] = "list_subscriber: mmun_subscribe failed\n";
    if (!mmun_subscribe(0, UINT64_MAX, quiet, 0)) {
        (void)!write(2, msg, sizeof msg - 1);
        _exit(70);
    }
}
