# Sourced by train.sh: on Linux, run the pipeline with jemalloc where it is installed.
#
# Why: glibc's allocator fragments over a long CPU training run. Every sample has its own length, so
# every step allocates activations of new sizes; by step 60 of the default recipe 16 % of the time went
# to posix_memalign searching its free lists, the steps slowed from 864 to 652 tokens/s, and resident
# memory climbed past 9 GB. Under jemalloc the same 80 steps ran at a flat ~790 tokens/s (4 % less time
# in all, and a steady speed makes the preflight's forecast hold) at a peak of 4.6 GB instead of 9.9
# (docs/hardware.md). macOS's allocator does not fragment this way, so nothing changes there.
#
# DMFORGE_ALLOCATOR=system keeps glibc's; DMFORGE_JEMALLOC names the library when it lives elsewhere.

DMFORGE_JEMALLOC_PLACES="/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 \
/usr/lib64/libjemalloc.so.2 /usr/lib/libjemalloc.so.2 /usr/local/lib/libjemalloc.so.2"

dmforge_allocator() {
  [ "$(uname -s)" = "Linux" ] || return 0
  [ "${DMFORGE_ALLOCATOR:-auto}" != "system" ] || return 0
  case "${LD_PRELOAD:-}" in *jemalloc*) return 0 ;; esac
  local lib="" candidate
  for candidate in ${DMFORGE_JEMALLOC:-} $DMFORGE_JEMALLOC_PLACES; do
    # A library the loader cannot preload (another architecture, a broken file) only prints a warning
    # and runs without it: try it on a trivial program first, and say nothing unless it loads cleanly.
    if [ -r "$candidate" ] && [ -z "$(LD_PRELOAD="$candidate" /bin/sh -c : 2>&1)" ]; then
      lib="$candidate"
      break
    fi
  done
  if [ -z "$lib" ]; then
    if [ -n "${DMFORGE_JEMALLOC:-}" ]; then
      echo "note: DMFORGE_JEMALLOC=$DMFORGE_JEMALLOC cannot be preloaded; training uses the system allocator." >&2
    elif ! command -v nvidia-smi >/dev/null 2>&1; then
      echo "tip: CPU training keeps its speed and needs about half the memory with jemalloc \
(Debian/Ubuntu: 'sudo apt install libjemalloc2'; Fedora: 'sudo dnf install jemalloc')." >&2
    fi
    return 0
  fi
  export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
  # Freed pages stay with the process (decay off) and large blocks get their own extents: the settings
  # the 80-step measurement ran with. A MALLOC_CONF of the user's own wins.
  export MALLOC_CONF="${MALLOC_CONF:-oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:9000000000,muzzy_decay_ms:9000000000}"
}
