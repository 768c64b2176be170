"""One OpenMP thread pool in the process: the engine thread's.

torch's CPU kernels run on OpenMP (libgomp in the pip wheels), which keeps a pool of worker
threads for every thread that has ever run a parallel op. Once the pools hold more threads than
there are CPUs, libgomp "throttles": between two ops its workers spin 100 times instead of
300,000 and then sleep, so each of the ~300 ops of a decode step pays a futex sleep and wake. The
model loads in a worker thread and the runner is built in the event loop's thread; with their
pools alive beside the engine thread's, 2 vCPUs decoded 8 rows 20% slower (16.5 vs 20.2 steps/s,
medians of 8 interleaved pairs). Each of those threads drops its pool here once its torch work is
done, so the engine thread's pool is the only one.
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger(__name__)

_OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: workers stopped and freed, restarted by the next parallel op


@functools.cache
def _runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime torch loaded (libgomp, or libiomp on some builds), if it exposes OpenMP 5's pause."""
    import torch  # noqa: F401  (loads the runtime)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(maxsplit=5)[-1].strip() for line in maps if "omp" in line and ".so" in line}
    except OSError:  # not Linux
        return None
    for path in sorted(paths):
        name = path.rsplit("/", 1)[-1]
        if not (name.startswith("libgomp") or name.startswith("libiomp")):
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, "omp_pause_resource_all"):
            return lib
    return None


def release_pool() -> bool:
    """Stops the calling thread's OpenMP worker threads; True when the runtime did (or had none to stop).

    A later parallel op on this thread starts a new pool, so call it after the thread's last torch work.
    """
    lib = _runtime()
    if lib is None:
        return False
    ok = lib.omp_pause_resource_all(_OMP_PAUSE_SOFT) == 0
    if not ok:
        log.debug("OpenMP refused to release this thread's pool")
    return ok
