"""A lean forward pass for Llama-architecture models: pre-packed weights, a preallocated KV cache, few ops a layer.

transformers' forward costs about 12 ms of Python and dispatch a token on a small CPU model (more
than its matrix multiplies); this one runs the same arithmetic, bit for bit in bf16 for one
stream, in about 30 tensor calls a layer: q/k/v as one projection, every weight reordered once
for oneDNN (the AVX-512/AMX bf16 kernels; transformers' bf16 linear re-lays out the weight on
every call), rope from one precomputed table, one mask a step shared by all layers, and a KV
cache written in place instead of concatenated.

The cache (kv_cache.RowCache) keeps rows right-aligned in shared columns. New prompts are
prefilled packed end to end (no padding: the projections see every real token once, attention
runs per row) after copying whatever prefix they share with a recent prompt from the
PrefixStore, usually the system prompt with the date, so only the rest is computed. Prompts
arriving together that share a prefix the store lacks yet (the system prompt in a new minute)
have it computed once, in the first such row, and copied to the others layer by layer.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from gptoss_space.backends.local.kv_cache import PrefixStore, RowCache
from gptoss_space.backends.local.runners.llama_weights import LlamaWeights, config_supported
from gptoss_space.backends.local.runners.packed_linear import PackedLinear, can_pack
from gptoss_space.backends.local.runners.prefill_attention import BatchedPrefill, ColumnCopy, offset_causal, shared_prefixes

log = logging.getLogger(__name__)

# Prefill after a cached prefix: pad the new queries to full causal attention once they are this many times the prefix.
_PAD_QUERIES = 2
_BUCKET, _BUCKET_MAX = 16, 256  # prefill row counts: multiples of 16 up to 256 (all built by warm_up)


def supports(model) -> bool:
    """The architectures whose forward this reproduces exactly (the embedded SmolLM2 is one).

    `model`: a transformers model, or a LlamaWeights read from a checkpoint folder.
    """
    if isinstance(model, LlamaWeights):
        cfg, device, dtype = model.config, model.device, model.dtype
        llama = getattr(cfg, "model_type", "llama") == "llama" and getattr(cfg, "architectures", None) in (None, ["LlamaForCausalLM"])
    else:
        cfg = model.config
        try:
            device = next(model.parameters()).device
            dtype = next(model.parameters()).dtype
        except StopIteration:
            return False
        llama = type(model).__name__ == "LlamaForCausalLM"
    return llama and device.type == "cpu" and dtype in (torch.bfloat16, torch.float32) and config_supported(cfg)


class _Layer:
    __slots__ = ("ln1", "ln2", "qkv", "o", "gate", "up", "down")


class LlamaRunner:
    """Prefill and decode for a batch of rows; the engine owns which request is in which row."""

    def __init__(self, model, *, max_batch_size: int, max_context: int, prefix_entries: int = 4):
        """`model`: a transformers LlamaForCausalLM or a LlamaWeights (see `supports`)."""
        w = model if isinstance(model, LlamaWeights) else LlamaWeights.from_model(model)
        cfg = w.config
        self.dtype = w.dtype
        self.max_rows = max_batch_size
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self._norm_shape = (cfg.hidden_size,)
        self.packed = can_pack(self.dtype)
        self.embed = w["model.embed_tokens.weight"]
        self.layers = []
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            layer = _Layer()
            layer.ln1 = w[p + "input_layernorm.weight"]
            layer.ln2 = w[p + "post_attention_layernorm.weight"]
            qkv = [w[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]
            layer.qkv = PackedLinear(torch.cat(qkv), self.packed)
            layer.o = PackedLinear(w[p + "self_attn.o_proj.weight"], self.packed)
            layer.gate = PackedLinear(w[p + "mlp.gate_proj.weight"], self.packed)
            layer.up = PackedLinear(w[p + "mlp.up_proj.weight"], self.packed)
            layer.down = PackedLinear(w[p + "mlp.down_proj.weight"], self.packed)
            self.layers.append(layer)
        self.norm = w["model.norm.weight"]
        self.lm_head = PackedLinear(w.lm_head, self.packed)
        self._rope_tables(w, max_context)
        self.scale = self.head_dim**-0.5
        self.cache = RowCache(len(self.layers), max_batch_size, self.n_kv, self.head_dim, max_context, self.dtype)
        self.prefixes = PrefixStore(entries=prefix_entries)
        self._pending: list[tuple[int, list[int]]] = []  # (row, prompt) whose KV goes to the prefix store

    def _rope_tables(self, weights: LlamaWeights, length: int) -> None:
        """cos and sin for every position, sin signed so that rotate_half(x) * sin == roll(x) * sin_signed."""
        cos, sin = weights.rope(length + 1)
        half = self.head_dim // 2
        sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(self.dtype)
        self.cos = cos.contiguous()
        self.sin = (sin * sign).contiguous()

    @property
    def rows(self) -> int:
        return self.cache.rows

    def reset(self) -> None:
        self._pending.clear()
        self.cache.reset()

    def remove(self, rows: list[int]) -> list[int]:
        self._store_prefixes()
        return self.cache.remove(rows)

    def _store_prefixes(self) -> None:
        """Copies new prompts' KV into the prefix store: after their first token went out, not before."""
        c = self.cache
        for row, ids in self._pending:
            a = c.end - len(ids)
            self.prefixes.add(ids, c.k[:, row, :, a : c.end], c.v[:, row, :, a : c.end])
        self._pending.clear()

    def warm_up(self, stop=lambda: False) -> None:
        """Has oneDNN build its kernels for every decode and bucketed prefill size now, not on a request.

        About 0.3 s; `stop()` returning True (a request is waiting) ends it early.
        """
        if not self.packed:
            return
        first = self.layers[0]
        sizes = list(range(1, self.max_rows + 1)) + list(range(_BUCKET, _BUCKET_MAX + 1, _BUCKET))
        for rows in sizes:
            if stop():
                return
            for lin in (first.qkv, first.o, first.gate, first.down) + ((self.lm_head,) if rows <= self.max_rows else ()):
                lin(torch.zeros((rows, lin.w.shape[1]), dtype=self.dtype))

    # -- forward --------------------------------------------------------------------------------

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # transformers' LlamaRMSNorm bit for bit (normalized in fp32, rounded, then scaled), in 4 calls instead of 8.
        return weight * F.rms_norm(x.float(), self._norm_shape, None, self.eps).to(self.dtype)

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        h = self._rms(x, layer.ln2)
        return layer.down.add(layer.up.mul(h, layer.gate.swish(h)), x)

    def prefill(self, prompts: list[list[int]], computed: dict[int, tuple] | None = None) -> torch.Tensor:
        """Adds one row per prompt; returns their next-token logits [n, V].

        `computed`: {prompt index: (k, v, n)} for prompts whose first n tokens were computed
        already (chunked prefill, see `extend`); the others look in the prefix store.
        """
        self._store_prefixes()
        c = self.cache
        n = len(prompts)
        if c.rows + n > self.max_rows:
            raise RuntimeError("batch is full")
        c.layout(max(len(p) for p in prompts))
        end, first = c.end, c.rows
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        computed = computed or {}
        found = [computed[i] if i in computed else self.prefixes.lookup(ids) for i, ids in enumerate(prompts)]
        # (Both ways of reusing a prefix's keys and values are off with the prefix cache.)
        shares = shared_prefixes(prompts, [cached for _, _, cached in found]) if self.prefixes.entries > 0 else {}
        # Each row: its cached prefix (copied into its columns), then its new tokens, packed end to
        # end. A row that shares a longer prefix with an earlier row of this call (the system prompt
        # once its minute has changed) takes that part's keys and values from it in every layer.
        new_ids, positions, spans, masks = [], [], [], []
        copy = ColumnCopy()
        for i, (ids, (k, v, cached)) in enumerate(zip(prompts, found)):
            row, a = first + i, end - len(ids)
            if cached:
                c.k[:, row, :, a : a + cached] = k[:, :, :cached]
                c.v[:, row, :, a : a + cached] = v[:, :, :cached]
            start = cached
            if i in shares:
                leader, upto = shares[i]
                copy.add(first + leader, end - len(prompts[leader]), row, a, cached, upto)
                start = upto
            fresh = len(ids) - start
            new_ids += ids[start:]
            positions.append(torch.arange(start, len(ids)))
            spans.append((row, a, fresh))
            # After a cached prefix the new queries sit bottom-right of the keys, which SDPA's
            # is_causal (top-left) does not express. A short new part takes an explicit mask; a
            # long one is left-padded with zero queries to the full length instead, so the kernel
            # skips the masked half (an explicit mask makes it compute every block: ~1.3x slower
            # prefill at 1,000 tokens).
            masks.append(offset_causal(fresh, start, self.dtype) if 0 < start and fresh < _PAD_QUERIES * start else None)
        copy.done()
        offsets = [0]
        for _, _, fresh in spans:
            offsets.append(offsets[-1] + fresh)
        self.last_fresh = offsets[-1]  # for the engine's debug log
        extra = _bucket(offsets[-1]) - offsets[-1]  # dummy rows, so oneDNN reuses its kernels for this size
        if extra:
            new_ids += [0] * extra
            positions.append(torch.zeros(extra, dtype=torch.long))
        # Several short new parts: one attention call a layer over them all (padded to the longest,
        # one mask) instead of one per row; a long one keeps its own call, where causal skipping pays.
        fresh_max = max(f for _, _, f in spans)
        batch = BatchedPrefill(spans, end, fresh_max, offsets[-1], extra, self.dtype) if n > 1 and fresh_max <= _BUCKET_MAX else None
        pos = torch.cat(positions)
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # [S, 1, D]
        x = F.embedding(torch.tensor(new_ids, dtype=torch.long), self.embed)  # [S, hidden]
        for li, layer in enumerate(self.layers):
            h = self._rms(x, layer.ln1)
            qkv = layer.qkv(h).view(-1, H + 2 * KV, D)
            qk = qkv[:, : H + KV]
            qk = qk * cos + torch.roll(qk, D // 2, -1) * sin
            kc, vc = c.k[li], c.v[li]  # [rows, KV, capacity, D]
            if batch is not None:
                batch.write(c, li, qk, qkv, H, KV)
                copy(kc, vc)
                x = layer.o.add(batch.attend(self, c, li, qk), x)
                x = self._mlp(layer, x)
                continue
            for (row, _, fresh), o0 in zip(spans, offsets):
                kc[row, :, end - fresh : end] = qk[o0 : o0 + fresh, H:].transpose(0, 1)
                vc[row, :, end - fresh : end] = qkv[o0 : o0 + fresh, H + KV :].transpose(0, 1)
            copy(kc, vc)
            outs = []
            for (row, a, fresh), o0, mask in zip(spans, offsets, masks):
                q = qk[o0 : o0 + fresh, :H].transpose(0, 1)[None]  # [1, H, fresh, D]
                pad = end - a - fresh if mask is None else 0  # the cached prefix, when padded
                if pad:
                    q = torch.cat([q.new_zeros((1, H, pad, D)), q], dim=2)
                o = F.scaled_dot_product_attention(
                    q, kc[None, row, :, a:end], vc[None, row, :, a:end], attn_mask=mask, is_causal=mask is None,
                    enable_gqa=True, scale=self.scale,
                )
                outs.append(o[0, :, pad:].transpose(0, 1).reshape(fresh, H * D))
            if extra:
                outs.append(qk.new_zeros((extra, H * D)))
            x = layer.o.add(outs[0] if len(outs) == 1 else torch.cat(outs), x)
            x = self._mlp(layer, x)
        last = x[torch.tensor(offsets[1:]) - 1]
        logits = self.lm_head(self._rms(last, self.norm))
        c.add_rows([len(p) for p in prompts])
        self._pending += [(first + i, list(p)) for i, p in enumerate(prompts)]
        return logits

    def extend(self, ids: list[int], kv: tuple | None, upto: int) -> tuple:
        """Computes the keys and values of ids[done:upto] after the `done` already in `kv`, outside the batch.

        Chunked prefill: a long prompt is computed a chunk per engine step between decode steps,
        so other rows keep decoding; `kv` is (k, v, done) with k, v [layers, kv heads, len(ids), D],
        None to start. The last chunk goes through `prefill(..., computed=...)`, which adds the row.
        """
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        if kv is None:
            shape = (len(self.layers), KV, len(ids), D)
            kv = (torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype), 0)
        k, v, done = kv
        fresh = upto - done
        pos = torch.arange(done, upto)
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]
        x = F.embedding(torch.tensor(ids[done:upto], dtype=torch.long), self.embed)
        mask = offset_causal(fresh, done, self.dtype) if done else None
        for li, layer in enumerate(self.layers):
            h = self._rms(x, layer.ln1)
            qkv = layer.qkv(h).view(-1, H + 2 * KV, D)
            qk = qkv[:, : H + KV]
            qk = qk * cos + torch.roll(qk, D // 2, -1) * sin
            k[li, :, done:upto] = qk[:, H:].transpose(0, 1)
            v[li, :, done:upto] = qkv[:, H + KV :].transpose(0, 1)
            q = qk[:, :H].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(q, k[None, li, :, :upto], v[None, li, :, :upto], attn_mask=mask,
                                               is_causal=mask is None, enable_gqa=True, scale=self.scale)
            x = layer.o.add(o[0].transpose(0, 1).reshape(fresh, H * D), x)
            x = self._mlp(layer, x)
        return k, v, upto

    def decode(self, tokens: list[int]) -> torch.Tensor:
        """One token for every row (row order); returns next-token logits [rows, V]."""
        if self._pending:
            self._store_prefixes()
        c = self.cache
        B = c.rows
        if c.end + 1 > c.capacity:
            c.layout(0)
        T, H, KV, D, lo = c.end, self.n_heads, self.n_kv, self.head_dim, c.lo
        pos = c.pos[:B]
        mask = c.mask[:, :, :, lo : T + 1] if c.mask is not None else None
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # [B, 1, D]
        x = F.embedding(torch.tensor(tokens, dtype=torch.long), self.embed)
        for li, layer in enumerate(self.layers):
            h = self._rms(x, layer.ln1)
            qkv = layer.qkv(h).view(B, H + 2 * KV, D)
            qk = qkv[:, : H + KV]
            qk = qk * cos + torch.roll(qk, D // 2, -1) * sin
            kc, vc = c.k[li, :B], c.v[li, :B]
            kc[:, :, T] = qk[:, H:]
            vc[:, :, T] = qkv[:, H + KV :]
            # As transformers does, bit for bit: grouped heads through enable_gqa without a mask; with
            # one, a query of length group per kv head (no key/value repeat either way).
            if mask is None:
                q = qk[:, :H, None]  # [B, H, 1, D]
                o = F.scaled_dot_product_attention(q, kc[:, :, lo : T + 1], vc[:, :, lo : T + 1], scale=self.scale, enable_gqa=True)
            else:
                q = qk[:, :H].reshape(B, KV, H // KV, D)
                o = F.scaled_dot_product_attention(q, kc[:, :, lo : T + 1], vc[:, :, lo : T + 1], attn_mask=mask, scale=self.scale)
            x = layer.o.add(o.reshape(B, H * D), x)
            x = self._mlp(layer, x)
        logits = self.lm_head(self._rms(x, self.norm))
        c.end = T + 1
        c.pos[:B] += 1
        return logits


def _bucket(rows: int) -> int:
    """Prefill sizes rounded up to a multiple of 1/16 of their power of two, 16 at least (above 256: under 6.3% dummy rows).

    oneDNN builds (JIT-compiles) its kernels for each new row count: 20-40 ms the first time for a
    short prefill, about 55 ms at 1,000 rows, as much as a short prefill itself. With 16 sizes an
    octave, a server meets each size once and then reuses its kernels (warm_up builds those up to
    256 at start); a few dummy rows cost less than a build.
    """
    step = max(_BUCKET, 1 << max(0, rows.bit_length() - 5))
    return -(-rows // step) * step
