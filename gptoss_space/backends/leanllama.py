"""A lean forward pass for Llama-architecture models: pre-packed weights, a preallocated KV cache, few ops a layer.

transformers' forward costs about 12 ms of Python and dispatch a token on a small CPU model (more
than its matrix multiplies); this one runs the same arithmetic in about 16 tensor ops a layer:
q/k/v and gate/up read as one packed oneDNN weight each, the residual adds fused into the
projections, one additive mask and one rope table lookup a step shared by all layers.

Rows share cache columns, right-aligned: every row's newest token sits in column `T - 1`, a
row's first valid column is `start[row]`, and the columns left of it are masked. New rows are
prefilled into free row slots; a finished row is replaced by the last row (one row's copy).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_NEG = float("-inf")


def supports(model) -> bool:
    """The architectures whose forward this reproduces exactly (the embedded SmolLM2 is one)."""
    cfg = model.config
    try:
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
    except StopIteration:
        return False
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
    return (
        type(model).__name__ == "LlamaForCausalLM"
        and device.type == "cpu"
        and dtype in (torch.bfloat16, torch.float32)
        and getattr(cfg, "hidden_act", "") == "silu"
        and not getattr(cfg, "attention_bias", False)
        and not getattr(cfg, "mlp_bias", False)
        and getattr(cfg, "pretraining_tp", 1) == 1
        and rope in ("default", "linear", "llama3")  # fixed tables (dynamic NTK changes with the length)
    )


class _Linear:
    """y = x @ W.T with W reordered once for oneDNN (bf16/AMX), or plain F.linear where that is unavailable."""

    __slots__ = ("w", "packed")

    def __init__(self, weight: torch.Tensor, pack: bool):
        weight = weight.detach().contiguous()
        self.packed = pack
        self.w = torch.ops.mkldnn._reorder_linear_weight(weight, 1) if pack else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return _mkldnn_linear(x, self.w, None, "none", [], "")
        return F.linear(x, self.w)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + x @ W.T, rounded like the unfused pair (the product is rounded first)."""
        return residual + self(x)

    def swish(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self(x))


_mkldnn_linear = torch.ops.mkldnn._linear_pointwise.default if hasattr(torch.ops.mkldnn, "_linear_pointwise") else None


def _can_pack(dtype: torch.dtype) -> bool:
    if _mkldnn_linear is None or not torch.backends.mkldnn.is_available():
        return False
    if dtype is torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False  # fp32: MKL's sgemm is already as fast


class _Layer:
    __slots__ = ("ln1", "ln2", "qkv", "o", "gate", "up", "down")


class LlamaRunner:
    """Prefill and decode for a batch of rows; the engine owns which request is in which row."""

    def __init__(self, model, *, max_batch_size: int, max_context: int):
        cfg = model.config
        self.dtype = next(model.parameters()).dtype
        self.max_rows = max_batch_size
        self.max_context = max_context
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        pack = _can_pack(self.dtype)
        inner = model.model
        self.embed = inner.embed_tokens.weight.detach()
        self.layers = []
        for block in inner.layers:
            att, mlp = block.self_attn, block.mlp
            layer = _Layer()
            layer.ln1 = block.input_layernorm.weight.detach()
            layer.ln2 = block.post_attention_layernorm.weight.detach()
            layer.qkv = _Linear(torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]), pack)
            layer.o = _Linear(att.o_proj.weight, pack)
            layer.gate = _Linear(mlp.gate_proj.weight, pack)
            layer.up = _Linear(mlp.up_proj.weight, pack)
            layer.down = _Linear(mlp.down_proj.weight, pack)
            self.layers.append(layer)
        self.norm = inner.norm.weight.detach()
        self.lm_head = _Linear(model.lm_head.weight, pack)
        self._rope_tables(inner.rotary_emb, max_context)
        self.scale = self.head_dim**-0.5
        # Batch state.
        self.start = torch.zeros(self.max_rows, dtype=torch.long)
        self.pos = torch.zeros(self.max_rows, dtype=torch.long)
        self.k = self.v = None  # [L, max rows, kv heads, capacity, head dim]
        self.packed = pack
        self.reset()

    def _rope_tables(self, rotary, length: int) -> None:
        """cos and sin for every position, sin signed so that rotate_half(x) * sin == roll(x) * sin_signed."""
        positions = torch.arange(length + 1)[None]
        probe = torch.zeros(1, dtype=self.dtype)
        cos, sin = rotary(probe, positions)
        half = self.head_dim // 2
        sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(self.dtype)
        self.cos = cos[0].to(self.dtype).contiguous()
        self.sin = (sin[0].to(self.dtype) * sign).contiguous()

    # -- cache bookkeeping ------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every row (the cache buffers stay allocated for the next batch)."""
        self.rows, self.end, self._starts = 0, 0, []
        self._lo, self._ragged, self._mask = 0, False, None

    def _alloc(self, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Zeros, not empty: masked columns are multiplied by 0 and must not hold NaN bit patterns.
        shape = (len(self.layers), self.max_rows, self.n_kv, capacity, self.head_dim)
        return torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype)

    def _layout(self, width: int) -> None:
        """Make the rows' common end at least `width` with room for one more column, moving live columns if needed."""
        cap = self.k.shape[3] if self.k is not None else 0
        lo = min(self._starts) if self.rows else self.end
        span = self.end - lo
        new_end = max(width, self.end)
        if new_end + 1 > cap:
            new_end = max(width, span)  # drop the columns no row uses any more
        if new_end == self.end and new_end + 1 <= cap:
            return
        k, v = self.k, self.v
        if new_end + 1 > cap:
            cap = max(new_end + 1, min(max(2 * cap, 64), self.max_context + 1))
            k, v = self._alloc(cap)
        shift = new_end - self.end
        if self.rows and span:
            src_k = self.k[:, : self.rows, :, lo : self.end]
            src_v = self.v[:, : self.rows, :, lo : self.end]
            if k is self.k:  # overlapping move inside the same buffer
                src_k, src_v = src_k.clone(), src_v.clone()
            k[:, : self.rows, :, new_end - span : new_end] = src_k
            v[:, : self.rows, :, new_end - span : new_end] = src_v
        self._starts = [s + shift for s in self._starts]
        self.k, self.v, self.end = k, v, new_end
        self._sync()

    def _sync(self) -> None:
        """Tensors derived from the row starts: the start column of each row and the additive mask."""
        self.start[: self.rows] = torch.tensor(self._starts, dtype=torch.long)
        self._lo = min(self._starts) if self.rows else self.end
        self._ragged = self.rows > 1 and any(s != self._lo for s in self._starts)
        if self._ragged:
            cap = self.k.shape[3]
            self._mask = torch.zeros((self.rows, 1, 1, cap), dtype=self.dtype)
            self._mask.masked_fill_((torch.arange(cap)[None] < self.start[: self.rows, None])[:, None, None], _NEG)
        else:
            self._mask = None

    def remove(self, rows: list[int]) -> list[int]:
        """Drops rows; returns, for each remaining slot in order, the old row it now holds."""
        order = list(range(self.rows))
        for r in sorted(rows, reverse=True):
            last = self.rows - 1
            if r != last:
                lo = self._starts[last]
                self.k[:, r, :, lo : self.end] = self.k[:, last, :, lo : self.end]
                self.v[:, r, :, lo : self.end] = self.v[:, last, :, lo : self.end]
                self._starts[r] = self._starts[last]
                self.pos[r] = self.pos[last]
                order[r] = order[last]
            order.pop()
            self._starts.pop()
            self.rows -= 1
        if self.rows == 0:
            self.reset()
        else:
            self._sync()
        return order

    # -- forward --------------------------------------------------------------------------------

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * xf.to(self.dtype)

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        h = self._rms(x, layer.ln2)
        return layer.down.add(layer.gate.swish(h) * layer.up(h), x)

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Adds one row per prompt (left-padded to a common width); returns their next-token logits [n, V]."""
        n, width = len(prompts), max(len(p) for p in prompts)
        if self.rows + n > self.max_rows:
            raise RuntimeError("batch is full")
        self._layout(width)
        first, end = self.rows, self.end
        lens = torch.tensor([len(p) for p in prompts])
        ids = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        pad = width - lens  # [n]
        pos = (torch.arange(width)[None] - pad[:, None]).clamp(min=0)  # [n, width]
        cos, sin = self.cos[pos][:, :, None], self.sin[pos][:, :, None]  # [n, width, 1, D]
        mask = None
        if bool((pad > 0).any()):
            # Causal, padding masked, and each position always sees itself (no all-masked row, no NaN).
            cols = torch.arange(width)
            allowed = (cols[None, :] <= cols[:, None])[None] & (cols[None, None, :] >= pad[:, None, None])
            allowed |= torch.eye(width, dtype=torch.bool)[None]
            mask = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill_(~allowed, _NEG)[:, None]
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        x = F.embedding(ids, self.embed).view(n * width, -1)
        lo, rows = end - width, slice(first, first + n)
        for li, layer in enumerate(self.layers):
            h = self._rms(x, layer.ln1)
            qkv = layer.qkv(h).view(n, width, H + 2 * KV, D)
            qk = qkv[:, :, : H + KV]
            qk = qk * cos + torch.roll(qk, D // 2, -1) * sin
            q = qk[:, :, :H].transpose(1, 2)
            k = qk[:, :, H:].transpose(1, 2)
            v = qkv[:, :, H + KV :].transpose(1, 2)
            self.k[li, rows, :, lo:end] = k
            self.v[li, rows, :, lo:end] = v
            if mask is None:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=self.scale)
            else:
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True, scale=self.scale)
            x = layer.o.add(o.transpose(1, 2).reshape(n * width, H * D), x)
            x = self._mlp(layer, x)
        last = x.view(n, width, -1)[:, -1]
        logits = self.lm_head(self._rms(last, self.norm))
        self.pos[rows] = lens
        self._starts += [end - len(p) for p in prompts]
        self.rows += n
        self._sync()
        return logits

    def decode(self, tokens: list[int]) -> torch.Tensor:
        """One token for every row (row order); returns next-token logits [rows, V]."""
        B = self.rows
        if self.end + 1 > self.k.shape[3]:
            self._layout(0)
        T, H, KV, D, lo = self.end, self.n_heads, self.n_kv, self.head_dim, self._lo
        pos = self.pos[:B]
        mask = self._mask[:, :, :, lo : T + 1] if self._ragged else None
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # [B, 1, D]
        x = F.embedding(torch.tensor(tokens, dtype=torch.long), self.embed)
        for li, layer in enumerate(self.layers):
            h = self._rms(x, layer.ln1)
            qkv = layer.qkv(h).view(B, H + 2 * KV, D)
            qk = qkv[:, : H + KV]
            qk = qk * cos + torch.roll(qk, D // 2, -1) * sin
            kc, vc = self.k[li, :B], self.v[li, :B]
            kc[:, :, T] = qk[:, H:]
            vc[:, :, T] = qkv[:, H + KV :]
            # Grouped query heads as a query of length group per kv head: no key/value repeat.
            q = qk[:, :H].reshape(B, KV, H // KV, D)
            o = F.scaled_dot_product_attention(q, kc[:, :, lo : T + 1], vc[:, :, lo : T + 1], attn_mask=mask, scale=self.scale)
            x = layer.o.add(o.reshape(B, H * D), x)
            x = self._mlp(layer, x)
        logits = self.lm_head(self._rms(x, self.norm))
        self.end = T + 1
        self.pos[:B] += 1
        return logits
