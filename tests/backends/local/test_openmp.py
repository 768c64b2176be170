"""The engine thread keeps the only OpenMP pool (backends/openmp.py).

With more pooled OpenMP threads than CPUs, libgomp stops spinning between ops and every op of a
decode step pays a sleep and wake (2 vCPUs: 8 rows decoded 20% slower). These run in a fresh
interpreter, where no other test has touched OpenMP, and count the process's threads: a thread
that still holds a pool starts no new worker when it runs a parallel op again.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

_COMMON = """
import asyncio, os, time, torch
torch.set_num_threads(2)

def threads():
    return len(os.listdir("/proc/self/task"))

def settle(expect):
    # A released pool's workers exit just after the call returns.
    for _ in range(200):
        if threads() == expect:
            return expect
        time.sleep(0.005)
    return threads()

def parallel_op():
    x = torch.randn(512, 512)
    (x @ x).sum()
"""


def _run(script: str) -> str:
    code = _COMMON + textwrap.dedent(script)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_release_pool_stops_the_calling_threads_workers_and_a_new_op_starts_them_again():
    out = _run(
        """
        from gptoss_space.backends.local.openmp import release_pool
        base = threads()
        parallel_op()
        with_pool = threads()
        released = release_pool()
        after = settle(base)
        parallel_op()
        print(base, with_pool, released, after, threads())
        """
    )
    base, with_pool, released, after, again = out.split()
    assert released == "True"
    assert int(with_pool) == int(base) + 1  # two torch threads: this one and one worker
    assert int(after) == int(base)
    assert int(again) == int(base) + 1


def test_after_start_up_neither_the_loop_thread_nor_the_loader_thread_keeps_a_pool():
    """The real model loads on a worker thread and the runner is built on the loop's thread; then a request runs."""
    out = _run(
        """
        from tests.conftest import make_settings
        from gptoss_space.backends.base import GenerationRequest
        from gptoss_space.backends.local.backend import LocalBackend

        async def main():
            backend = LocalBackend(make_settings(torch_threads=2))
            await backend.start()
            req = GenerationRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
            async for _ in backend.stream(req):
                pass
            time.sleep(0.5)  # the loader's and the loop's workers, had they been kept, are asleep by now
            n0 = threads()
            parallel_op()  # on the loop's thread
            n1 = threads()
            await asyncio.to_thread(parallel_op)  # on the default executor's one thread: the loader
            n2 = threads()
            print(n0, n1, n2)
            await backend.close()

        asyncio.run(main())
        """
    )
    n0, n1, n2 = map(int, out.split())
    assert n1 == n0 + 1, "the event loop's thread still had OpenMP workers after start-up"
    assert n2 == n1 + 1, "the thread that loaded the model still had OpenMP workers"
