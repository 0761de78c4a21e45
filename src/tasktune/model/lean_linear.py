"""The lean forward's projections (model/lean.py): the projections of one input as one prepacked oneDNN matmul,
plus LoRA deltas kept factored, and the additions and activations around them as the matmul's post-ops.

- `FusedProjection`: several projections of one input as one matmul (q, k and v; gate and up), a folded LoRA
  delta as two more (all its down-projections stacked, then the up-projections as one block-diagonal matrix
  whose zero blocks add exact zeros), and each named peft adapter's pair over the rows that name it (S-LoRA's
  idea on a small scale). Prepacked, a folded delta's up-projections are extra columns of the main matmul
  instead, its down-projections' outputs appended to the input (`appended`): one matmul and one addition
  fewer.
- `FusedProjection.add_to`: the residual stream plus a projection (o, down) with the sum done by the matmul
  (oneDNN's `add` post-op) instead of another pass over the hidden states.
- `SwiGLU`: the MLP's `silu(gate(x)) * up(x)` as two matmuls whose post-ops apply the SiLU and the product,
  the LoRA deltas' up-projections appended to their input dimension ([x, down(x)] against [W, up]) so that
  they are added before the SiLU, inside the matmul (demo adapter, one layer's MLP, 1,415 positions:
  21.8 -> 20.5 ms; 80 positions: 1.41 -> 1.27 ms).

The post-ops round once where the unfused path rounds the matmul's output first (the same operations, up to
rounding); they need prepacked bf16 weights and no per-row adapters, and the unfused path serves the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tasktune.model.fold import LowRankDelta, lora_factors


def packable(dtype: torch.dtype) -> bool:
    """Whether weights of `dtype` can be prepacked for oneDNN here (bf16 with oneDNN's bf16 support)."""
    return (dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass
class LowRankStack:
    """The LoRA deltas of the projections of one input as two matmuls: their down-projections stacked, then
    their (scaled) up-projections as one block-diagonal matrix whose zero blocks add exact zeros."""

    down: torch.Tensor
    """[ranks, in] (prepacked for oneDNN where the projection is)."""
    up: torch.Tensor
    """[outputs, ranks]: each projection's up-projection on its own rows and columns."""
    up_bias: torch.Tensor | None


@dataclass
class FusedProjection:
    """Several projections of one input as one matmul (their weights stacked), plus the LoRA deltas: a folded
    adapter's for every row (`delta`), and each named peft adapter's for the rows that ask for it (`adapters`),
    added in place."""

    weight: torch.Tensor
    """[outputs, in] (+ ranks where `appended`), prepacked for oneDNN where `packed`."""
    bias: torch.Tensor | None
    delta: LowRankStack | None
    adapters: dict[str, LowRankStack]
    packed: bool
    appended: torch.Tensor | None = None
    """[ranks, in], prepacked: a folded delta's down-projections stacked, whose outputs are appended to the input
    of the one matmul whose `weight` holds the up-projections as extra columns ([W, up]); `delta` is None then
    (one matmul and no addition fewer: qkv of 1,415 positions 4.6 -> 4.5 ms, o 2.6 -> 2.5 ms)."""

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return F.linear(x, weight, bias)

    def _low_rank(self, x: torch.Tensor, stack: LowRankStack) -> torch.Tensor:
        return self._linear(self._linear(x, stack.down, None), stack.up, stack.up_bias)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """`x`, with the outputs of the `appended` down-projections after its columns where there are some."""
        return x if self.appended is None else _with_down(x, self.appended)

    def __call__(self, x: torch.Tensor, groups: Sequence[tuple[str, torch.Tensor | None]] = ()) -> torch.Tensor:
        """The projections of `x` [positions, in]; `groups`: (adapter name, the positions that use it, None for
        all), from `LeanForward._groups`."""
        y = self._linear(self._input(x), self.weight, self.bias)
        # base(x) + up(down(x)) with the same roundings; the down-projections are not stacked under the base
        # weights: that made the base output strided and its width odd (a 64-row step of gate/up 660 -> 640 us)
        if self.delta is not None:
            y.add_(self._low_rank(x, self.delta))
        for name, index in groups:
            stack = self.adapters.get(name)
            if stack is None:  # this adapter leaves these projections alone
                continue
            if index is None:
                y.add_(self._low_rank(x, stack))
            else:
                y.index_add_(0, index, self._low_rank(x.index_select(0, index), stack))
        return y

    def add_to(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """`residual` + the projections of `x`, the sum done by the matmul (its `add` post-op): a new tensor.
        Prepacked weights only, and no per-row adapters."""
        if self.delta is not None:
            residual = self._low_rank(x, self.delta).add_(residual)
        return torch.ops.mkldnn._linear_pointwise.binary(self._input(x), residual, self.weight, self.bias, "add")


@dataclass
class SwiGLU:
    """`silu(gate(x)) * up(x)` as two prepacked matmuls, the SiLU and the product their post-ops; a folded LoRA
    delta's up-projections are columns appended to the weights, for the down-projections' outputs appended to
    `x` (zero blocks where a delta is the other projection's)."""

    down: torch.Tensor | None
    """[ranks, in]: the deltas' down-projections stacked, prepacked; None without a delta."""
    gate: torch.Tensor
    """[intermediate, in + ranks], prepacked."""
    up: torch.Tensor
    """[intermediate, in + ranks], prepacked."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.down is not None:
            x = _with_down(x, self.down)
        gate = torch.ops.mkldnn._linear_pointwise(x, self.gate, None, "swish", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, gate, self.up, None, "mul")


def fuse_swiglu(gate: nn.Module, up: nn.Module, pack: bool) -> SwiGLU | None:
    """The `SwiGLU` of an MLP's gate and up projections (each an nn.Linear or a LowRankDelta over one), or
    None where its post-ops cannot serve (weights that cannot be prepacked, biases, anything else)."""
    parts = [_folded(layer) for layer in (gate, up)]
    if any(part is None for part in parts):
        return None
    bases, folded = [base for base, _ in parts], [delta for _, delta in parts]
    if not (pack and packable(bases[0].weight.dtype)) or any(base.bias is not None for base in bases):
        return None
    delta = _stack(bases, folded, False)  # its block-diagonal up-projection: the gate's rows, then up's
    if delta is not None and delta.up_bias is not None:
        return None
    reorder = torch.ops.mkldnn._reorder_linear_weight
    weights = [base.weight.detach() for base in bases]
    if delta is None:
        return SwiGLU(None, *(reorder(weight) for weight in weights))
    rows = bases[0].out_features
    return SwiGLU(reorder(delta.down), reorder(torch.cat([weights[0], delta.up[:rows]], dim=1)),
                  reorder(torch.cat([weights[1], delta.up[rows:]], dim=1)))


def _with_down(x: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """[x, down(x)] (`down` prepacked): the input of a matmul whose weight holds a delta's up-projections as
    extra columns."""
    return torch.cat([x, torch.ops.mkldnn._linear_pointwise(x, down, None, "none", [], "")], dim=1)


def _folded(layer: nn.Module) -> tuple[nn.Linear, tuple | None] | None:
    """(base Linear, (down, scaled up, up bias) of a folded delta or None) of an nn.Linear or a LowRankDelta over
    one; None for anything else."""
    if isinstance(layer, LowRankDelta) and type(layer.base) is nn.Linear:
        bias = None if layer.up_bias is None else layer.up_bias.detach()
        return layer.base, (layer.down.detach(), layer.up.detach(), bias)
    if type(layer) is nn.Linear:
        return layer, None
    return None


def _prepacked(stack: LowRankStack) -> LowRankStack:
    reorder = torch.ops.mkldnn._reorder_linear_weight
    return LowRankStack(reorder(stack.down), reorder(stack.up), stack.up_bias)


def _stack(bases: Sequence[nn.Linear], factors: Sequence[tuple | None], pack: bool) -> LowRankStack | None:
    """One `LowRankStack` of the (down, scaled up, up bias) factors of each base layer (None: no delta there),
    in the bases' dtype; None when no layer has one."""
    if all(f is None for f in factors):
        return None
    dtype = bases[0].weight.dtype
    down = torch.cat([f[0].to(dtype) for f in factors if f is not None])
    up = torch.zeros((sum(b.out_features for b in bases), down.shape[0]), dtype=dtype)
    row = column = 0
    for base, factor in zip(bases, factors, strict=True):
        if factor is not None:
            rank = factor[0].shape[0]
            up[row:row + base.out_features, column:column + rank] = factor[1].to(dtype)
            column += rank
        row += base.out_features
    up_bias = None
    if any(f is not None and f[2] is not None for f in factors):
        up_bias = torch.cat([f[2].to(dtype) if f is not None and f[2] is not None
                             else torch.zeros(b.out_features, dtype=dtype)
                             for b, f in zip(bases, factors, strict=True)])
    stack = LowRankStack(down, up, up_bias)
    return _prepacked(stack) if pack else stack


def fuse_projections(layers: Sequence[nn.Module], pack: bool, adapters: Sequence[str] = ()) -> FusedProjection:
    """One `FusedProjection` for `layers` of one input: nn.Linear, model/fold.py's LowRankDelta over one, or a
    peft LoRA Linear whose named `adapters` become per-row deltas (TypeError for anything else)."""
    bases, folded, named = [], [], {name: [] for name in adapters}
    for layer in layers:
        plain, lora = _folded(layer), False
        if plain is not None:
            base, delta = plain
        elif hasattr(layer, "lora_A") and type(getattr(layer, "base_layer", None)) is nn.Linear:
            base, delta, lora = layer.base_layer, None, True
        else:
            raise TypeError(f"{type(layer).__name__} cannot be fused")
        for name, factors in named.items():
            factor = lora_factors(layer, name) if lora else None
            if factor is None and lora and name in layer.lora_A:
                raise TypeError(f"adapter {name!r} of {type(layer).__name__} is not a plain LoRA (DoRA, merged)")
            factors.append(factor)
        bases.append(base)
        folded.append(delta)
    dtype = bases[0].weight.dtype
    weight = torch.cat([b.weight.detach() for b in bases])
    bias = None
    if any(b.bias is not None for b in bases):
        bias = torch.cat([b.bias.detach() if b.bias is not None else torch.zeros(b.out_features, dtype=dtype)
                          for b in bases])
    packed = pack and packable(dtype)
    delta = _stack(bases, folded, False)
    if packed and delta is not None and delta.up_bias is None and not named:  # appended to the one matmul
        weight = torch.cat([weight, delta.up], dim=1)
        reorder = torch.ops.mkldnn._reorder_linear_weight
        return FusedProjection(reorder(weight), bias, None, {}, True, reorder(delta.down))
    if packed:
        weight = torch.ops.mkldnn._reorder_linear_weight(weight)
        delta = None if delta is None else _prepacked(delta)
    stacks = {name: _stack(bases, factors, packed) for name, factors in named.items()}
    return FusedProjection(weight, bias, delta, {name: stack for name, stack in stacks.items() if stack is not None},
                           packed)
