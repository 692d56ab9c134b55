"""4-bit weights for QLoRA (Dettmers et al. 2023, arXiv:2305.14314), written out step by step.

QLoRA keeps the frozen base model in 4 bits and trains LoRA's A and B in full precision on top.
A 4-bit weight is an index into a table of 16 **levels** in [-1, 1], times a per-block scale:

    w ≈ levels[code] · absmax(block)        one float32 absmax per block of 64 weights

The table decides the error. Three tables, all scaled to [-1, 1]:

- ``int4``: 15 evenly spaced levels k/7, k = −7..7 (symmetric integers).
- ``fp4``: a 4-bit float (1 sign, 2 exponent, 1 mantissa bit), bitsandbytes' FP4: the magnitudes
  2^e · (1 + m/2) / 12 for e = 1..3, m = 0, 1, plus 0 and a smallest value 1/192; dense near
  zero, sparse near ±1.
- ``nf4``: NormalFloat. Weights of a trained network are close to normal, so NF4 puts its levels
  at **quantiles of N(0, 1)**: each of the 16 codes is used about equally often and the expected
  error is small where weights are dense. The paper takes 8 positive quantiles (of 9 evenly
  spaced probabilities from δ to ½) and 7 negative ones (of 8), plus an exact 0, and normalises
  by the largest; δ = 1 − ½(1/30 + 1/32) ≈ 0.9677 keeps the outermost quantile finite.

A value is rounded to the nearest level (the decision boundaries are the midpoints between
neighbouring levels). **Double quantisation** stores the block scales themselves in 8 bits:
their mean is subtracted and the rest quantised in blocks of 256 with bitsandbytes' 8-bit
"dynamic" table, so a scale costs 8/64 + 32/(64·256) ≈ 0.127 bits per weight instead of 0.5.

**Training memory.** A frozen layer still needs W in its backward pass (∂L/∂x = ∂L/∂y · W).
``QuantizedLinear`` runs the matmul through ``Linear4bit``, which keeps only the 4-bit codes and
scales between forward and backward and dequantises W again when the gradient needs it, as
bitsandbytes' ``MatMul4Bit`` does; a float W kept for backward would cost what a float base costs.

Everything here matches ``bitsandbytes.functional.quantize_4bit``/``dequantize_4bit`` bit for bit
(tables, codes and dequantised weights; see tests/test_quant.py), and needs only torch. One
exception: with double quantisation, bitsandbytes' CPU kernel rounds a few block scales (under
1 %) that lie within 2e-5 of a midpoint to the farther level; here they go to the nearest.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: The outermost probability of NF4's quantiles: δ = 1 − ½ (1/30 + 1/32) (QLoRA, appendix E).
NF4_OFFSET = 0.9677083
KINDS = ("nf4", "fp4", "int4")
BLOCKSIZE, BLOCKSIZE_SCALES = 64, 256


def nf4_levels(offset: float = NF4_OFFSET) -> torch.Tensor:
    """NF4's 16 levels, ascending, from −1 to 1 (float32), computed as bitsandbytes does."""
    positive = torch.linspace(offset, 0.5, 9)[:-1].double()  # 8 probabilities above ½
    negative = torch.linspace(offset, 0.5, 8)[:-1].double()  # 7 probabilities above ½
    quantiles = torch.cat([torch.special.ndtri(positive), -torch.special.ndtri(negative)])
    levels = torch.cat([quantiles.float(), torch.zeros(1)]).sort().values
    return levels / levels.max()


def fp4_levels() -> torch.Tensor:
    """bitsandbytes' FP4, in code order: code = sign bit, 2 exponent bits e, 1 mantissa bit m;
    the magnitude is 2^(4−e)·(1 + m/2) for e = 1..3 (8, 12, 4, 6, 2, 3), and 0 or 1/16 for
    e = 0 (subnormal), all divided by the largest, 12."""
    magnitudes = []
    for code in range(8):
        e, m = code >> 1, code & 1
        magnitudes.append(2.0 ** (4 - e) * (1 + m / 2) if e else m / 16)
    values = torch.tensor(magnitudes + [-v for v in magnitudes])  # codes 8..15: negative
    return values / values.max()


def int4_levels() -> torch.Tensor:
    """Symmetric 4-bit integers k/7 in code order (7, 6, ..., 0, −0, −1, ..., −7), as
    bitsandbytes lists them: 15 distinct levels (+0 and −0 are one)."""
    values = torch.tensor([7.0 - k for k in range(8)] + [-float(k) for k in range(8)])
    return values / 7


def dynamic_levels() -> torch.Tensor:
    """The 256 levels of bitsandbytes' signed 8-bit "dynamic" type (``create_dynamic_map``),
    used for the block scales: a sign, a run of zeros that sets the power of ten (10^-6 .. 1),
    and the remaining bits as an evenly spaced fraction in [0.1, 1]."""
    values = [0.0, 1.0]
    for i in range(7):  # exponent 10^(i − 6); 2^i fractions between 0.1 and 1
        edges = torch.linspace(0.1, 1, 2**i + 1)
        means = ((edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 6)).tolist()
        values += means + [-m for m in means]
    return torch.tensor(sorted(values))


LEVELS = {"nf4": nf4_levels, "fp4": fp4_levels, "int4": int4_levels}


@functools.cache
def _table(kind: str) -> torch.Tensor:
    """A table built once per process (every forward of a ``QuantizedLinear`` looks it up);
    ``kind`` is a key of ``LEVELS`` or ``"dynamic"``. Read only: never modified in place."""
    return dynamic_levels() if kind == "dynamic" else LEVELS[kind]()


def quantize_blockwise(
    x: torch.Tensor, levels: torch.Tensor, blocksize: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax): ``x`` flattened into blocks of ``blocksize`` (the last may be shorter),
    each scaled by its largest |value| into [-1, 1] and rounded to the nearest of ``levels``
    (a table in code order; a value exactly between two levels goes to the lower, as
    bitsandbytes does). The code is the index of the level in ``levels``."""
    flat = x.reshape(-1).float()
    n_blocks = math.ceil(flat.numel() / blocksize)
    padded = F.pad(flat, (0, n_blocks * blocksize - flat.numel())).view(n_blocks, blocksize)
    absmax = padded.abs().amax(dim=1)
    scaled = torch.clamp(padded * (1.0 / absmax.clamp(min=1e-38))[:, None], -1, 1)
    order = torch.argsort(levels)  # the codes from the smallest level to the largest
    ascending = levels[order]
    boundaries = (ascending[:-1] + ascending[1:]) / 2  # midpoints between neighbouring levels
    codes = order[torch.bucketize(scaled.reshape(-1)[: flat.numel()], boundaries)]
    return codes.to(torch.uint8), absmax


def dequantize_blockwise(
    codes: torch.Tensor, absmax: torch.Tensor, levels: torch.Tensor, blocksize: int
) -> torch.Tensor:
    """``levels[code] · absmax(block)``, flat, float32."""
    values = levels[codes.long()]
    n = values.numel()
    padded = F.pad(values, (0, absmax.numel() * blocksize - n)).view(-1, blocksize)
    return (padded * absmax[:, None]).reshape(-1)[:n]


@dataclass
class Quantized4bit:
    """A tensor in 4 bits: two codes per byte, and its block scales (float32, or 8-bit with
    double quantisation: ``scale_codes``, ``scale_absmax`` and ``scale_offset``)."""

    packed: torch.Tensor  # uint8, ceil(n / 2): the first code of each pair in the high 4 bits
    absmax: torch.Tensor | None  # float32 per block (None with double quantisation)
    shape: tuple[int, ...]
    kind: str
    blocksize: int
    scale_codes: torch.Tensor | None = None  # uint8 per block
    scale_absmax: torch.Tensor | None = None  # float32 per 256 blocks
    scale_offset: float = 0.0

    def nbytes(self) -> int:
        """Bytes it occupies (codes and scales)."""
        parts = (self.packed, self.absmax, self.scale_codes, self.scale_absmax)
        return sum(t.numel() * t.element_size() for t in parts if t is not None) + 4 * bool(
            self.scale_codes is not None
        )

    def scales(self) -> torch.Tensor:
        """The block scales, dequantised if they are stored in 8 bits."""
        if self.absmax is not None:
            return self.absmax
        levels = _table("dynamic").to(self.scale_absmax.device)
        scales = dequantize_blockwise(self.scale_codes, self.scale_absmax, levels, BLOCKSIZE_SCALES)
        return scales + self.scale_offset


def quantize_4bit(
    weight: torch.Tensor,
    kind: str = "nf4",
    blocksize: int = BLOCKSIZE,
    double_quant: bool = False,
    *,
    name: str | None = None,
) -> Quantized4bit:
    """``weight`` in 4 bits with the ``kind`` table (``nf4``, ``fp4``, ``int4``) in blocks of
    ``blocksize``; ``double_quant`` also stores the block scales in 8 bits (QLoRA's default).

    A weight holding NaN or Inf raises ValueError (naming ``name``, the layer, if given): its
    block's absmax would be non-finite, and with double quantisation the mean of all the block
    scales too, so one bad value would turn every weight of the tensor into NaN."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 2:
        raise ValueError(f"blocksize must be an int >= 2 (QLoRA: 64), got {blocksize!r}")
    if not weight.is_floating_point():
        raise ValueError(f"quantize_4bit takes a floating-point tensor, got {weight.dtype}")
    _refuse_non_finite(weight, name, double_quant)
    levels = _table(kind).to(weight.device)
    codes, absmax = quantize_blockwise(weight.detach(), levels, blocksize)
    if codes.numel() % 2:  # an odd count: the last byte holds one code and the code of 0
        codes = F.pad(codes, (0, 1), value=int(levels.abs().argmin()))
    packed = (codes[0::2] << 4) | codes[1::2]
    result = Quantized4bit(packed, absmax, tuple(weight.shape), kind, blocksize)
    if double_quant:
        offset = absmax.mean()
        result.scale_codes, result.scale_absmax = quantize_blockwise(
            absmax - offset, _table("dynamic").to(weight.device), BLOCKSIZE_SCALES
        )
        result.absmax, result.scale_offset = None, offset.item()
    return result


def _refuse_non_finite(weight: torch.Tensor, name: str | None, double_quant: bool) -> None:
    finite = torch.isfinite(weight.detach())
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(weight.detach()).sum())
    n_bad = weight.numel() - int(finite.sum())
    first = tuple(int(i) for i in (~finite).nonzero()[0].tolist())
    where = f"layer {name!r}" if name else "a tensor"
    spoils = "every weight of the tensor" if double_quant else "every weight of its block"
    raise ValueError(
        f"cannot quantise {where} (weight of shape {tuple(weight.shape)}): {n_bad} of "
        f"{weight.numel()} values are non-finite ({n_nan} NaN, {n_bad - n_nan} Inf; the first at "
        f"index {first}). Its block's absmax would be non-finite and turn {spoils} into NaN. "
        "Fix the weights first (a diverged run? an overflowing cast to float16?)"
    )


def dequantize_4bit(q: Quantized4bit) -> torch.Tensor:
    """The float32 tensor that ``q`` stands for (of ``q.shape``)."""
    codes = torch.stack([q.packed >> 4, q.packed & 0xF], dim=1).reshape(-1)
    levels = _table(q.kind).to(q.packed.device)
    n = math.prod(q.shape)
    return dequantize_blockwise(codes[:n], q.scales(), levels, q.blocksize).view(q.shape)


def quantize_nf4(weight: torch.Tensor, double_quant: bool = False) -> Quantized4bit:
    """``weight`` in NF4, blocks of 64 (QLoRA's storage format)."""
    return quantize_4bit(weight, "nf4", BLOCKSIZE, double_quant)


def dequantize_nf4(q: Quantized4bit) -> torch.Tensor:
    """The float32 weights of an NF4 tensor."""
    if q.kind != "nf4":
        raise ValueError(f"this tensor is quantised with {q.kind!r}, not NF4; use dequantize_4bit")
    return dequantize_4bit(q)


#: the tensors of a ``Quantized4bit`` (codes, then scales); None where a part is not used
STORED = ("packed", "absmax", "scale_codes", "scale_absmax")


class Linear4bit(torch.autograd.Function):
    """``y = x Wᵀ + b`` with W (d_out, d_in) held in 4 bits, saving only the codes and scales.

    The base weight is frozen, so its backward needs no weight gradient, only

        ∂L/∂x = ∂L/∂y · W        (..., d_out) @ (d_out, d_in) → (..., d_in)

    ``F.linear(x, W)`` would keep the float W for that (4 bytes a weight, as much as a
    full-precision base). Here the forward dequantises W, uses it and drops it; the backward
    dequantises it again from the codes (bitsandbytes' ``MatMul4Bit`` does the same). What stays
    between the passes is the 4-bit tensor: 0.5 byte a weight plus its scales. ``x`` is not
    saved (only a weight gradient would need it). The price is time: W is dequantised twice a
    training step instead of once.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, q: Quantized4bit, dtype: torch.dtype, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.q, ctx.dtype, ctx.x_dtype = q, dtype, x.dtype
        # Through save_for_backward, so autograd (and saved_tensors_hooks) sees what is kept.
        ctx.save_for_backward(*(getattr(q, part) for part in STORED))
        return F.linear(x, _dequantize(q, dtype, x.dtype), bias)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """∂L/∂x = ∂L/∂y · W (W dequantised again), and ∂L/∂b = Σ ∂L/∂y if the bias trains."""
        q = replace(ctx.q, **dict(zip(STORED, ctx.saved_tensors, strict=True)))
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:  # in grad_y's dtype (bfloat16 under autocast), as F.linear
            grad_x = (grad_y @ _dequantize(q, ctx.dtype, grad_y.dtype)).to(ctx.x_dtype)
        if ctx.needs_input_grad[3]:  # a bias that trains (the base's own stays frozen)
            grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
        return grad_x, None, None, grad_bias


def _dequantize(q: Quantized4bit, dtype: torch.dtype, compute: torch.dtype) -> torch.Tensor:
    """W in float32, rounded to the layer's dtype, then cast to the dtype of the matmul."""
    return dequantize_4bit(q).to(dtype).to(compute)


class QuantizedLinear(nn.Module):
    """A frozen ``nn.Linear`` whose weight is kept in 4 bits and dequantised when used.

    ``weight`` reads the dequantised float32 weight (a new tensor each time; assign to it, or use
    ``set_weight``, to store a new weight, rounded to 4 bits again). The bias stays in float.
    The forward runs ``Linear4bit``: no float copy of W is kept, neither on the module nor for
    the backward pass, which is QLoRA's saving in training memory.

    ``before_merge`` holds the codes and scales a LoRA merge replaced (``LoRALinear.merge``
    writes W + ΔW, rounded to 4 bits), so that ``LoRALinear.unmerge`` can put them back bit for
    bit; None while nothing is merged.
    """

    def __init__(
        self,
        linear: nn.Linear,
        kind: str = "nf4",
        double_quant: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuantizedLinear quantises an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kind, self.double_quant = kind, double_quant
        self.name = name  # the module's name in its model, for error messages (None: unknown)
        self.dtype = linear.weight.dtype
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.before_merge: Quantized4bit | None = None
        self.set_weight(linear.weight.detach())

    def set_weight(self, weight: torch.Tensor) -> None:
        """Store ``weight`` (d_out, d_in) in 4 bits (rounding it to the nearest levels)."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"weight of shape {tuple(weight.shape)} for a layer of shape "
                f"({self.out_features}, {self.in_features})"
            )
        self.quantized = quantize_4bit(
            weight, self.kind, BLOCKSIZE, self.double_quant, name=self.name
        )

    @property
    def weight(self) -> torch.Tensor:
        return dequantize_4bit(self.quantized).to(self.dtype)

    @weight.setter
    def weight(self, value: torch.Tensor) -> None:
        self.set_weight(value.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d_in) → (..., d_out), in x's dtype: ``x Wᵀ + b`` through ``Linear4bit``."""
        return Linear4bit.apply(x, self.quantized, self.dtype, self.bias)

    def _apply(self, fn, recurse: bool = True):  # .to(device) moves the codes and scales too
        super()._apply(fn, recurse)
        # Only the device follows: a dtype cast (model.half()) must not round codes or scales.
        device = fn(torch.empty(0)).device
        for q in filter(None, (self.quantized, self.before_merge)):
            for name in STORED:
                tensor = getattr(q, name)
                if tensor is not None:
                    setattr(q, name, tensor.to(device))
        return self

    def extra_repr(self) -> str:
        dq = ", double_quant" if self.double_quant else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, {self.kind}{dq}, "
            f"{self.quantized.nbytes():,} bytes"
        )


def quantize_model(
    model: nn.Module, kind: str = "nf4", double_quant: bool = True, skip: tuple[str, ...] = ()
) -> list[str]:
    """Replace every ``nn.Linear`` of ``model`` (except those whose name ends with an entry of
    ``skip``, e.g. the classifier that trains) by a frozen ``QuantizedLinear``, in place.
    Returns the names replaced. A layer with NaN or Inf weights raises ValueError naming it,
    before any layer is replaced."""
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not any(name == s or name.endswith("." + s) or name.startswith(s + ".") for s in skip)
    ]
    quantized = {
        name: QuantizedLinear(model.get_submodule(name), kind, double_quant, name=name)
        for name in names
    }
    for name, module in quantized.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)
    return names


def weight_bytes(model: nn.Module) -> int:
    """Bytes the model's weights occupy: parameters and buffers at their dtype, plus the codes
    and scales of every ``QuantizedLinear``."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    return total + sum(
        m.quantized.nbytes() for m in model.modules() if isinstance(m, QuantizedLinear)
    )
