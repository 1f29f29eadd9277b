#!/usr/bin/env bash
# Builds the C tests and the C example against an installed libmmun
# (scripts/install-capi) with gcc and pkg-config, and runs them.
#
#   crates/capi/tests/c/run.sh PREFIX [WORKDIR]
#
# Covers: every function of mmun.h with its misuse (api; rcache for the
# registration cache with user mem_reg/mem_dereg), real changes
# reaching the callbacks in order (invalidations, linked with libmmun.so and
# statically with libmmun.a), one object under -lmmun + LD_PRELOAD, a
# second copy staying inert (-EEXIST), and the example. Exit 1 on failure.
set -euo pipefail
prefix=$(cd "$1" && pwd)
work=${2:-$(mktemp -d)}
mkdir -p "$work"
here=$(cd "$(dirname "$0")" && pwd)
lib=$prefix/lib
export PKG_CONFIG_PATH=$lib/pkgconfig
cflags="-O1 -Wall -Wextra -Werror $(pkg-config --cflags mmun)"
shared="$(pkg-config --libs mmun) -Wl,-rpath,$lib"
# The static archive by path (a -l would pick the .so beside it), then
# what it needs: pkg-config's Libs.private.
static="$lib/libmmun.a $(pkg-config --static --libs-only-l mmun | sed 's/-lmmun\b//')"

build() { # NAME SOURCE LINK...
  local name=$1 src=$2
  shift 2
  gcc $cflags -o "$work/$name" "$src" "$@"
}
# Each program under a hang detector (they take well under a second).
run() { # LABEL COMMAND...
  local label=$1
  shift
  echo "--- $label"
  timeout 60 "$@"
}

build api "$here/api.c" $shared
build invalidations "$here/invalidations.c" $shared
build invalidations_static "$here/invalidations.c" $static
build one_object "$here/one_object.c" $shared -ldl
build rcache "$here/rcache.c" $shared -lpthread
build rcache_static "$here/rcache.c" $static
build threads "$here/threads.c" $shared -lpthread
build mirror "$here/../../examples/c/mirror.c" $shared -lpthread

run "api (libmmun.so)" "$work/api"
run "invalidations (libmmun.so)" "$work/invalidations"
run "invalidations (libmmun.a)" "$work/invalidations_static"
run "rcache (libmmun.so)" "$work/rcache"
run "rcache (libmmun.a)" "$work/rcache_static"
run "threads at once (libmmun.so)" "$work/threads"
run "api under LD_PRELOAD=libmmun_preload.so as well" \
  env LD_PRELOAD="$lib/libmmun_preload.so" "$work/api"
run "one object: -lmmun + LD_PRELOAD=libmmun_preload.so" \
  env LD_PRELOAD="$lib/libmmun_preload.so" "$work/one_object" "$lib/libmmun_preload.so" "$lib/libmmun.so.0"

echo "--- the one-object check tells two objects apart (a copy of the file)"
mkdir -p "$work/copy"
cp "$lib/libmmun.so.0" "$work/copy/libmmun_preload.so"
set +e
timeout 60 env LD_PRELOAD="$work/copy/libmmun_preload.so" "$work/one_object" \
  "$work/copy/libmmun_preload.so" "$lib/libmmun.so.0"
status=$?
set -e
if [ "$status" != 3 ]; then
  echo "one_object with a copied library: exit $status, want 3 (two objects)" >&2
  exit 1
fi

echo "--- libmmun.a beside a preloaded libmmun.so stays inert (-EEXIST)"
set +e
out=$(timeout 60 env LD_PRELOAD="$lib/libmmun_preload.so" "$work/invalidations_static" 2>&1)
status=$?
set -e
if [ "$status" = 0 ] || ! grep -q "mmun_install: -17" <<< "$out"; then
  echo "static copy under the preload: exit $status, want mmun_install -EEXIST:" >&2
  echo "$out" >&2
  exit 1
fi
echo "mmun_install returned -EEXIST"

run "example: mirror" "$work/mirror"
echo "C tests ok"
