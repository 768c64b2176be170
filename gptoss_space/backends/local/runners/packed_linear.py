"""A linear layer whose weight oneDNN reorders once (bf16 on AVX-512/AMX CPUs), for the lean Llama runner.

transformers' bf16 linear re-lays out the weight on every call; a packed weight is read as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The row count oneDNN lays the packed weights out for: the same speed as 1 for one decoding row,
# 1.3x faster for prefill-sized inputs (a layout for 1 row gets re-laid out on every large call).
_PACK_ROWS = 64


class PackedLinear:
    """y = x @ W.T with W reordered once for oneDNN (bf16/AMX), or plain F.linear where that is unavailable."""

    __slots__ = ("w", "packed")

    def __init__(self, weight: torch.Tensor, pack: bool):
        weight = weight.detach().contiguous()
        self.packed = pack
        self.w = torch.ops.mkldnn._reorder_linear_weight(weight, _PACK_ROWS) if pack else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return _mkldnn_linear(x, self.w, None, "none", [], "")
        return F.linear(x, self.w)

    # oneDNN's fused epilogues (binary add/mul, swish) measured 15-20% slower than these pairs.
    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + x @ W.T"""
        return residual + self(x)

    def mul(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """other * (x @ W.T)"""
        return self(x) * other

    def swish(self, x: torch.Tensor) -> torch.Tensor:
        """silu(x @ W.T)"""
        return F.silu(self(x))


_pointwise = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
_mkldnn_linear = _pointwise.default if _pointwise is not None else None


def can_pack(dtype: torch.dtype) -> bool:
    if _mkldnn_linear is None or not torch.backends.mkldnn.is_available():
        return False
    if dtype is torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False  # fp32: MKL's sgemm is already as fast
