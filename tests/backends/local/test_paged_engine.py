"""transformers' continuous batching behind the engine interface: gpt-oss (sliding + full layers) batches.

Engine level: fp32, greedy rows equal transformers' `generate` alone and batched, prompts
longer than the sliding window included; each row keeps its own sampler. App level: a real
server on a tiny random gpt-oss, 4 concurrent clients decode together.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import torch

from gptoss_space.backends.local.paged_engine import PagedEngine
from gptoss_space.backends.local.sampling import Sampler
from gptoss_space.http.app import create_app
from tests.backends.local.test_engine import Run
from tests.conftest import make_settings
from tests.support.servers import LiveServer
from tests.support.tiny_models import build_tiny_gpt_oss

NEW = 12


@pytest.fixture(scope="module")
def gpt_oss_dir(tmp_path_factory):
    return build_tiny_gpt_oss(tmp_path_factory.mktemp("tiny-gpt-oss-random"), seed=3)


@pytest.fixture(scope="module")
def gpt_oss(gpt_oss_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gpt_oss_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def ref(gpt_oss_dir):
    """A second copy for `generate`: the engine switches its model to paged attention."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gpt_oss_dir, dtype=torch.float32).eval()


@pytest.fixture
def engine(gpt_oss):
    engine = PagedEngine(gpt_oss, eos_ids=set(), max_batch_size=8, max_context=4096)
    engine.start()
    yield engine
    engine.stop()


def prompt(n: int, salt: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(salt)
    return torch.randint(20, vocab - 20, (n,), generator=g).tolist()


def reference(model, ids: list[int], new: int = NEW) -> list[int]:
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_greedy_rows_equal_generate_alone_and_batched_past_the_sliding_window(gpt_oss, ref, engine):
    vocab = gpt_oss.config.vocab_size
    assert "sliding_attention" in gpt_oss.config.layer_types and "full_attention" in gpt_oss.config.layer_types
    window = gpt_oss.config.sliding_window
    lengths = [7, 40, window + 60, 2 * window + 9]  # two prompts longer than the sliding window
    prompts = [prompt(n, i, vocab) for i, n in enumerate(lengths)]
    expected = [reference(ref, p) for p in prompts]
    alone = [Run(p, NEW) for p in prompts[:1]]
    engine.submit(alone[0].seq)
    assert alone[0].wait().tokens == expected[0] and alone[0].reason == "length"
    runs = [Run(p, NEW) for p in prompts]
    for r in runs:
        engine.submit(r.seq)
    assert [r.wait().tokens for r in runs] == expected
    assert all(r.reason == "length" for r in runs)


def test_each_row_samples_with_its_own_seed_whatever_its_neighbours(gpt_oss, ref, engine):
    vocab = gpt_oss.config.vocab_size
    seeded = prompt(30, 7, vocab)
    first = Run(seeded, NEW, Sampler(temperature=1.0, top_p=0.95, seed=42))
    engine.submit(first.seq)
    first.wait()
    crowd = [Run(prompt(20 + i, 100 + i, vocab), NEW, Sampler(temperature=1.3, top_p=1.0)) for i in range(3)]
    again = Run(seeded, NEW, Sampler(temperature=1.0, top_p=0.95, seed=42))
    greedy = Run(seeded, NEW)
    for r in [*crowd, again, greedy]:
        engine.submit(r.seq)
    assert again.wait().tokens == first.tokens
    assert greedy.wait().tokens == reference(ref, seeded)
    assert len({tuple(r.wait().tokens) for r in crowd}) == 3


def test_a_stop_from_the_caller_and_a_cancelled_row_free_their_place(gpt_oss, engine):
    vocab = gpt_oss.config.vocab_size
    stopper = Run(prompt(10, 1, vocab), 50)
    stopper.seq.on_token = lambda t: stopper.tokens.append(t) or len(stopper.tokens) == 3  # a stop sequence matched
    leaver = Run(prompt(10, 2, vocab), 10_000)
    engine.submit(stopper.seq)
    engine.submit(leaver.seq)
    assert stopper.wait().reason == "stop" and len(stopper.tokens) == 3
    while len(leaver.tokens) < 5:
        leaver.done.wait(0.01)
    leaver.seq.cancelled.set()
    engine.wake()
    assert leaver.wait().reason == "cancelled"
    for _ in range(500):
        if engine.active == 0 and engine.waiting == 0:
            break
        time.sleep(0.01)
    assert (engine.active, engine.waiting) == (0, 0)


def test_concurrent_gpt_oss_clients_decode_together_and_answer_as_alone(gpt_oss_dir):
    """4 clients at once: health shows them in one batch, far fewer forward passes, the same greedy answers."""
    app = create_app(make_settings(model=str(gpt_oss_dir)), with_ui=False)
    with LiveServer(app, ready_path="/api") as server:
        backend = app.state.service.backend
        assert type(backend.engine).__name__ == "PagedEngine"
        passes = []
        backend.engine.model.register_forward_hook(lambda *a: passes.append(1))
        bodies = [{"messages": [{"role": "user", "content": f"Question number {i}?"}], "stream": False,
                   "temperature": 0, "max_tokens": 48} for i in range(4)]

        async def together():
            seen = []

            async def watch(client):
                while len(seen) < 400:
                    seen.append((await client.get(server.url + "/api")).json()["details"]["batch"]["active"])
                    await asyncio.sleep(0.005)

            async with httpx.AsyncClient(timeout=120) as client:
                watcher = asyncio.create_task(watch(client))
                answers = await asyncio.gather(*[client.post(server.url + "/api", json=b) for b in bodies])
                watcher.cancel()
            return answers, seen

        answers, seen = asyncio.run(together())
        batched_passes = len(passes)
        passes.clear()
        alone = [httpx.post(server.url + "/api", json=b, timeout=120) for b in bodies]
        alone_passes = len(passes)
    assert max(seen) > 1, seen
    assert [a.json()["choices"][0]["message"] for a in answers] == [a.json()["choices"][0]["message"] for a in alone]
    assert [a.json()["usage"] for a in answers] == [a.json()["usage"] for a in alone]
    # One pass serves every row: 4 clients alone need about 4x the passes of 4 together.
    assert batched_passes <= 0.5 * alone_passes, (batched_passes, alone_passes)
