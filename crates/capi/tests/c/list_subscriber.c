/* Preloaded after libmmun_preload.so: registers a list notifier over the
 * whole address space through the C API when it loads, so that any program
 * (bash in tests/preload.rs) runs with one. */
#include <mmun.h>
#include <stdint.h>
#include <unistd.h>

static void quiet(const struct mmun_range *range, void *arg)
{
	(void)range, (void)arg;
}

__attribute__((constructor)) static void subscribe(void)
{
	static const char msg[] = "list_subscriber: mmun_notifier_register failed\n";
	mmun_notifier *n;
	if (mmun_notifier_register(quiet, quiet, 0, &n) != 0) {
		(void)!write(2, msg, sizeof msg - 1);
		_exit(70);
	}
}
