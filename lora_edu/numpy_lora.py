"""LoRA from scratch in numpy: forward, hand-derived backward, a layer, two optimizers, a toy problem.

LoRA (Hu et al. 2021) freezes a pretrained weight ``W`` and learns a low-rank update::

    y = x Wᵀ + scaling · (x Aᵀ) Bᵀ          (the paper's h = W0 x + (α/r) B A x, for row vectors x)

Shapes (as in the paper and in Hugging Face PEFT)::

    x : (..., d_in)     any number of leading batch dimensions
    W : (d_out, d_in)   frozen
    A : (r, d_in)       trainable, random at initialisation
    B : (d_out, r)      trainable, zero at initialisation
    y : (..., d_out)
    scaling = alpha / r           (rsLoRA: alpha / sqrt(r))

The product ``B A`` (d_out, d_in) is never formed during training: ``x`` goes through ``A`` to an
r-dimensional bottleneck and back out through ``B``, which costs r·(d_in + d_out) multiplications
per row of ``x`` instead of d_in·d_out.

Backward, with ``G = ∂L/∂y`` (..., d_out) and ``h = x Aᵀ`` (..., r), sums over all leading dims::

    ∂L/∂x = G W + scaling · (G B) A          (..., d_in)
    ∂L/∂B = scaling · Gᵀ h                   (d_out, r)
    ∂L/∂A = scaling · (G B)ᵀ x               (r, d_in)

This module needs numpy only (no torch), so the first notebooks run without a deep-learning library.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

INITS = ("gaussian", "kaiming", "zeros", "pissa")
OPTIMIZERS = ("adam", "sgd")
SPLITS = ("train", "val")


# --------------------------------------------------------------------------------------------
# Input checks: every public function fails early with a message that names what it received


def _check_rank(r: int, d_in: int, d_out: int, context: str = "") -> None:
    if r < 1:
        raise ValueError(f"{context}r={r} is not a valid rank: r must be at least 1")
    if r > min(d_in, d_out):
        raise ValueError(
            f"{context}r={r} exceeds min(d_in, d_out) = min({d_in}, {d_out}) = {min(d_in, d_out)}; "
            f"B A can never have rank above {min(d_in, d_out)}, so a larger r adds parameters but "
            f"no expressiveness. Use 1 <= r <= {min(d_in, d_out)}"
        )


def _check_scaling(scaling: float) -> float:
    try:
        value = float(scaling)
    except (TypeError, ValueError):
        raise ValueError(
            f"scaling must be a real number, got {scaling!r} (scaling = alpha / r)"
        ) from None
    if not math.isfinite(value):
        raise ValueError(
            f"scaling must be finite, got {scaling!r}; scaling = alpha / r (rsLoRA: alpha / sqrt(r)), "
            "so check alpha and r"
        )
    return value


def _check_lora(x: np.ndarray, W: np.ndarray, A: np.ndarray, B: np.ndarray) -> None:
    """Raise ValueError unless x (..., d_in), W (d_out, d_in), A (r, d_in), B (d_out, r)."""
    if W.ndim != 2:
        raise ValueError(f"W has shape {W.shape} but must be 2-D: (d_out, d_in)")
    d_out, d_in = W.shape
    if x.ndim < 1 or x.shape[-1] != d_in:
        raise ValueError(
            f"x has shape {x.shape} but W has shape {W.shape}, i.e. d_in={d_in}: "
            f"x must be (..., d_in) = (..., {d_in})"
        )
    if A.ndim != 2 or A.shape[1] != d_in:
        raise ValueError(
            f"A has shape {A.shape} but x and W have d_in={d_in}: A must be (r, d_in) = (r, {d_in})"
        )
    r = A.shape[0]
    _check_rank(r, d_in, d_out, context=f"A has shape {A.shape}: ")
    if B.shape != (d_out, r):
        raise ValueError(
            f"B has shape {B.shape} but must be (d_out, r) = ({d_out}, {r}) "
            f"(d_out={d_out} from W {W.shape}, r={r} from A {A.shape})"
        )


def _as_float(a: np.ndarray | float) -> np.ndarray:
    """An array of floats (integers and lists become float64; float32 stays float32)."""
    a = np.asarray(a)
    return a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float64)


# --------------------------------------------------------------------------------------------
# Pure functions: forward, backward, gradient check, parameter counts


def lora_forward(
    x: np.ndarray, W: np.ndarray, A: np.ndarray, B: np.ndarray, scaling: float
) -> np.ndarray:
    """``y = x Wᵀ + scaling · (x Aᵀ) Bᵀ`` for x (..., d_in); returns y (..., d_out).

    ``B A`` is never materialised: the LoRA path costs r·(d_in + d_out) per row, not d_in·d_out.
    """
    x, W, A, B = map(_as_float, (x, W, A, B))
    _check_lora(x, W, A, B)
    s = _check_scaling(scaling)
    return x @ W.T + s * ((x @ A.T) @ B.T)


def lora_backward(
    x: np.ndarray,
    W: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    scaling: float,
    grad_y: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a loss L through ``lora_forward``, derived by hand (W is frozen: no ∂L/∂W).

    Given ``grad_y = ∂L/∂y`` with y's shape (..., d_out), returns ``(grad_x, grad_A, grad_B)``::

        grad_x = G W + s (G B) A      (..., d_in)
        grad_A = s (G B)ᵀ x           (r, d_in)     summed over all leading dims
        grad_B = s Gᵀ (x Aᵀ)          (d_out, r)    summed over all leading dims
    """
    x, W, A, B, grad_y = map(_as_float, (x, W, A, B, grad_y))
    _check_lora(x, W, A, B)
    s = _check_scaling(scaling)
    y_shape = x.shape[:-1] + (W.shape[0],)
    if grad_y.shape != y_shape:
        raise ValueError(
            f"grad_y has shape {grad_y.shape} but y = lora_forward(x, W, A, B, scaling) has shape "
            f"{y_shape} (x {x.shape}, W {W.shape}): grad_y must have y's shape"
        )
    # Flatten the leading dims so the parameter gradients sum over every row in one matmul.
    x2 = x.reshape(-1, x.shape[-1])
    G = grad_y.reshape(-1, grad_y.shape[-1])
    GB = G @ B  # (n, r): the gradient arriving at the bottleneck h = x Aᵀ, before scaling
    grad_x = G @ W + s * (GB @ A)
    grad_A = s * (GB.T @ x2)
    grad_B = s * (G.T @ (x2 @ A.T))
    return grad_x.reshape(x.shape), grad_A, grad_B


def gradient_check(
    x: np.ndarray,
    W: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    scaling: float,
    *,
    eps: float = 1e-6,
    seed: int = 0,
) -> dict[str, float]:
    """Compare ``lora_backward`` with central finite differences; return relative errors.

    The scalar loss is ``L = sum(y * R)`` with a seeded standard-normal ``R`` of y's shape, so
    ``∂L/∂y = R``. Every entry of x, A and B is nudged by ±eps (in float64 copies) and
    ``(L(+eps) - L(-eps)) / (2 eps)`` is the numeric gradient. Returns, for "x", "A" and "B"::

        ||g_analytic - g_numeric|| / max(||g_analytic|| + ||g_numeric||, tiny)

    L is linear in each single entry, so the central difference has no truncation error and the
    relative errors are pure rounding: ~1e-9 or less in float64. A wrong formula gives ~1.
    """
    eps = float(eps)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite positive step, got {eps!r}; try eps=1e-6")
    # float64 copies: we write into them, and float32 rounding would swamp a 1e-6 step.
    x, W, A, B = (np.array(a, dtype=np.float64) for a in (x, W, A, B))
    _check_lora(x, W, A, B)
    s = _check_scaling(scaling)
    R = np.random.default_rng(seed).standard_normal(x.shape[:-1] + (W.shape[0],))

    def loss() -> float:
        return float(np.sum(lora_forward(x, W, A, B, s) * R))

    grad_x, grad_A, grad_B = lora_backward(x, W, A, B, s, R)
    errors = {}
    for name, param, analytic in (("x", x, grad_x), ("A", A, grad_A), ("B", B, grad_B)):
        numeric = np.zeros_like(param)
        flat = param.reshape(-1)  # a view: writing flat[i] perturbs the array lora_forward reads
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            plus = loss()
            flat[i] = old - eps
            minus = loss()
            flat[i] = old
            numeric.flat[i] = (plus - minus) / (2 * eps)
        diff = np.linalg.norm(analytic - numeric)
        norm_sum = np.linalg.norm(analytic) + np.linalg.norm(numeric)
        errors[name] = float(diff / max(norm_sum, np.finfo(np.float64).tiny))
    return errors


def lora_parameter_counts(d_in: int, d_out: int, r: int) -> dict[str, int]:
    """Parameters of one LoRA-adapted linear layer without bias.

    ``trainable = r·(d_in + d_out)`` (A and B), ``frozen = d_in·d_out`` (W), which is also what full
    fine-tuning would train. Example: d_in = d_out = 4096, r = 8 → 65,536 vs 16,777,216 (0.39%).
    """
    for name, value in (("d_in", d_in), ("d_out", d_out)):
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {name}={value}")
    _check_rank(r, d_in, d_out)
    return {"trainable": r * (d_in + d_out), "frozen": d_in * d_out}


def _pissa_factors(W: np.ndarray, r: int, scaling: float) -> tuple[np.ndarray, np.ndarray]:
    """PiSSA's A (r, d_in) and B (d_out, r): ``scaling · B A`` is the best rank-r approximation
    of W (Eckart–Young), split evenly between the two factors (both get √(S_r / scaling))."""
    if not scaling > 0:
        raise ValueError(
            f"init='pissa' needs scaling > 0 (it takes √(S / scaling)), got scaling={scaling!r}; "
            "use a positive alpha"
        )
    U, S, Vt = np.linalg.svd(W.astype(np.float64), full_matrices=False)
    root = np.sqrt(S[:r] / scaling)
    return root[:, None] * Vt[:r], U[:, :r] * root


# --------------------------------------------------------------------------------------------
# A LoRA layer: the pure functions above plus the state a training loop needs


class LoRALinear:
    """A frozen linear map ``W`` (d_out, d_in) with a trainable LoRA update ``scaling · B A``.

    Parameters
    ----------
    W : (d_out, d_in) frozen weight. It is held, not copied, and never written to (with
        ``init="pissa"`` the layer holds the residual ``W − scaling · B₀ A₀`` instead, a new array).
    r : rank of the update, ``1 <= r <= min(d_in, d_out)``.
    alpha : scaling numerator; ``None`` means ``alpha = r``, i.e. ``scaling = 1`` (with rsLoRA
        ``scaling = sqrt(r)``). PEFT's default is a fixed ``lora_alpha = 8`` instead.
    init : how A starts (B always starts at zero, except as noted):

        - ``"gaussian"``: A ~ N(0, σ²) with σ = 1/r. The paper only says "random Gaussian";
          σ = 1/r is what PEFT's ``init_lora_weights="gaussian"`` uses.
        - ``"kaiming"``: A ~ U(-1/√d_in, 1/√d_in), i.e. kaiming-uniform with a = √5, the
          initialisation of ``nn.Linear`` and PEFT's default (``init_lora_weights=True``).
        - ``"zeros"``: A = 0 and B = 0. Both gradients are then zero forever: it never learns
          (a teaching case for why one factor must be random).
        - ``"pissa"`` (Meng et al. 2024): A and B start on W's top-r singular directions,
          ``A = diag(√(S_r / scaling)) Vh_r``, ``B = U_r diag(√(S_r / scaling))``, and the layer
          keeps ``W_res = W − scaling · B A`` as its frozen weight, so ``W_res + scaling · B A = W``
          and the output at step 0 is unchanged (up to rounding). PEFT's formulas; needs
          ``scaling > 0``; ``seed`` is not used.
    use_rslora : ``scaling = alpha / sqrt(r)`` (rank-stabilised LoRA, Kalajdzievski 2023).
    seed : an int seed or a ``np.random.Generator`` for A's initialisation.

    ``forward(x)`` caches x; ``backward(grad_y)`` then stores ``grad_A``, ``grad_B`` and returns
    ``grad_x``. ``params()`` returns the live A and B arrays, so an optimizer's in-place update
    changes the layer.
    """

    def __init__(
        self,
        W: np.ndarray,
        r: int,
        alpha: float | None = None,
        init: str = "gaussian",
        *,
        use_rslora: bool = False,
        seed: int | np.random.Generator = 0,
    ) -> None:
        W = _as_float(W)
        if W.ndim != 2:
            raise ValueError(f"W has shape {W.shape} but must be 2-D: (d_out, d_in)")
        d_out, d_in = W.shape
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
            raise ValueError(f"r must be an integer rank, got r={r!r} ({type(r).__name__})")
        _check_rank(int(r), d_in, d_out)
        if init not in INITS:
            raise ValueError(
                f"init={init!r} is not known; expected one of {', '.join(map(repr, INITS))}"
            )
        self.W = W
        self.r = int(r)
        self.alpha = float(self.r if alpha is None else alpha)
        self.use_rslora = bool(use_rslora)
        self.scaling = _check_scaling(
            self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)
        )
        self.init = init

        rng = np.random.default_rng(seed)
        # B = 0 makes the adapted layer equal the pretrained one at step 0 (PiSSA instead moves
        # the top-r part of W into B A and keeps the rest in W).
        B = np.zeros((d_out, self.r))
        if init == "gaussian":
            A = rng.normal(0.0, 1.0 / self.r, size=(self.r, d_in))
        elif init == "kaiming":
            bound = 1.0 / math.sqrt(d_in)
            A = rng.uniform(-bound, bound, size=(self.r, d_in))
        elif init == "pissa":
            A, B = _pissa_factors(W, self.r, self.scaling)
            self.W = W - self.scaling * (B @ A).astype(W.dtype)
        else:
            A = np.zeros((self.r, d_in))
        self.A = A.astype(W.dtype)
        self.B = B.astype(W.dtype)
        self.grad_A: np.ndarray | None = None
        self.grad_B: np.ndarray | None = None
        self._x: np.ndarray | None = None

    @property
    def d_in(self) -> int:
        return self.W.shape[1]

    @property
    def d_out(self) -> int:
        return self.W.shape[0]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """y (..., d_out) for x (..., d_in); caches x for ``backward``."""
        y = lora_forward(x, self.W, self.A, self.B, self.scaling)
        self._x = _as_float(x)
        return y

    __call__ = forward

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        """Store ``grad_A`` (r, d_in) and ``grad_B`` (d_out, r); return ``grad_x`` (..., d_in)."""
        if self._x is None:
            raise ValueError(
                "backward(grad_y) needs the input of the last forward pass: call forward(x) first"
            )
        grad_x, self.grad_A, self.grad_B = lora_backward(
            self._x, self.W, self.A, self.B, self.scaling, grad_y
        )
        return grad_x

    def delta_weight(self) -> np.ndarray:
        """The learned update ``scaling · B A`` (d_out, d_in)."""
        return self.scaling * (self.B @ self.A)

    def merge(self) -> np.ndarray:
        """``W + scaling · B A`` (d_out, d_in): one matrix, so inference costs what the base did."""
        return self.W + self.delta_weight()

    def params(self) -> dict[str, np.ndarray]:
        """The trainable arrays themselves (not copies): ``{"A": A, "B": B}``."""
        return {"A": self.A, "B": self.B}

    def grads(self) -> dict[str, np.ndarray]:
        """``{"A": grad_A, "B": grad_B}`` from the last ``backward``."""
        if self.grad_A is None or self.grad_B is None:
            raise ValueError("no gradients yet: call forward(x) and then backward(grad_y)")
        return {"A": self.grad_A, "B": self.grad_B}

    def parameter_counts(self) -> dict[str, int]:
        """``{"trainable": r·(d_in + d_out), "frozen": d_in·d_out}``."""
        return lora_parameter_counts(self.d_in, self.d_out, self.r)

    @property
    def n_trainable(self) -> int:
        return self.parameter_counts()["trainable"]

    @property
    def n_frozen(self) -> int:
        return self.parameter_counts()["frozen"]

    def __repr__(self) -> str:
        return (
            f"LoRALinear(d_in={self.d_in}, d_out={self.d_out}, r={self.r}, alpha={self.alpha:g}, "
            f"scaling={self.scaling:g}, init={self.init!r}, use_rslora={self.use_rslora})"
        )


# --------------------------------------------------------------------------------------------
# Optimizers: update a dict of named arrays in place


class _Optimizer:
    """Shared by SGD and Adam: the learning rate, per-parameter multipliers, input checks."""

    def __init__(self, lr: float, lr_scale: dict[str, float] | None) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite positive number, got lr={lr!r}")
        self.lr = float(lr)
        self.lr_scale = dict(lr_scale or {})
        for name, value in self.lr_scale.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"lr_scale[{name!r}] must be a finite positive multiplier, got {value!r}"
                )
        self.state: dict[str, dict[str, np.ndarray | int]] = {}

    def _check(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        if set(params) != set(grads):
            raise ValueError(
                f"params and grads must have the same names; params has {sorted(params)}, "
                f"grads has {sorted(grads)}"
            )
        unknown = set(self.lr_scale) - set(params)
        if unknown:
            raise ValueError(
                f"lr_scale names {sorted(unknown)}, which are not parameters; "
                f"the parameters are {sorted(params)}"
            )
        for name, p in params.items():
            if np.shape(grads[name]) != p.shape:
                raise ValueError(
                    f"grads[{name!r}] has shape {np.shape(grads[name])} but params[{name!r}] "
                    f"has shape {p.shape}: each gradient must have its parameter's shape"
                )

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "state")
        return f"{type(self).__name__}({settings})"

    def _lr(self, name: str) -> float:
        return self.lr * self.lr_scale.get(name, 1.0)

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self._check(params, grads)
        for name, p in params.items():
            self._update(name, p, np.asarray(grads[name]))

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError


class SGD(_Optimizer):
    """Stochastic gradient descent, with heavy-ball momentum as in ``torch.optim.SGD``::

        v ← momentum · v + g;   p ← p − lr · lr_scale[name] · v

    ``lr_scale`` multiplies the learning rate of named parameters, e.g. ``{"B": 16}`` for LoRA+.
    """

    def __init__(
        self, lr: float, momentum: float = 0.0, *, lr_scale: dict[str, float] | None = None
    ) -> None:
        super().__init__(lr, lr_scale)
        if not (0.0 <= momentum < 1.0):
            raise ValueError(f"momentum must be in [0, 1), got momentum={momentum!r}")
        self.momentum = float(momentum)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        if self.momentum:
            state = self.state.setdefault(name, {"v": np.zeros_like(p)})
            v = state["v"]
            v *= self.momentum
            v += g
            g = v
        p -= self._lr(name) * g


class Adam(_Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, the update of ``torch.optim.Adam``::

        m ← β1 m + (1 − β1) g;   v ← β2 v + (1 − β2) g²
        p ← p − lr · lr_scale[name] · m̂ / (√v̂ + eps),   m̂ = m / (1 − β1ᵗ),  v̂ = v / (1 − β2ᵗ)

    ``lr_scale`` multiplies the learning rate of named parameters, e.g. ``{"B": 16}`` for LoRA+.
    """

    def __init__(
        self,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        *,
        lr_scale: dict[str, float] | None = None,
    ) -> None:
        super().__init__(lr, lr_scale)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got betas={betas!r}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite positive number, got eps={eps!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        b1, b2 = self.betas
        state = self.state.setdefault(name, {"t": 0, "m": np.zeros_like(p), "v": np.zeros_like(p)})
        state["t"] += 1
        t, m, v = state["t"], state["m"], state["v"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p -= self._lr(name) * m_hat / (np.sqrt(v_hat) + self.eps)


def make_optimizer(name: str, lr: float, lr_scale: dict[str, float] | None = None) -> _Optimizer:
    """``"adam"`` → ``Adam(lr)``, ``"sgd"`` → ``SGD(lr)`` (no momentum), with optional lr_scale."""
    if name == "adam":
        return Adam(lr, lr_scale=lr_scale)
    if name == "sgd":
        return SGD(lr, lr_scale=lr_scale)
    raise ValueError(
        f"optimizer={name!r} is not known; expected one of {', '.join(map(repr, OPTIMIZERS))}"
    )


# --------------------------------------------------------------------------------------------
# The toy problem: recover a rank-k update to a frozen weight by regression


@dataclass
class ToyProblem:
    """Linear regression whose answer is a known rank-k update ``delta_W_star`` of ``W0``.

    ``x ~ N(0, I)`` and ``y = x (W0 + ΔW*)ᵀ + noise · N(0, 1)``. Shapes: W0, delta_W_star
    (d_out, d_in); X_train (n_train, d_in), Y_train (n_train, d_out); likewise X_val, Y_val.
    """

    W0: np.ndarray
    delta_W_star: np.ndarray
    X_train: np.ndarray
    Y_train: np.ndarray
    X_val: np.ndarray
    Y_val: np.ndarray
    k: int
    noise: float

    @property
    def d_in(self) -> int:
        return self.W0.shape[1]

    @property
    def d_out(self) -> int:
        return self.W0.shape[0]


@dataclass
class ToyResult:
    """What a toy training run returns.

    ``losses[t]`` and ``val_losses[t]`` are the full training / validation losses *after* update
    t + 1 (so ``final_loss == losses[-1]``; the loss before training is ``toy_loss(problem, 0)``).
    ``delta_W`` (d_out, d_in) is ``scaling · B A`` for LoRA and ``W − W0`` for full fine-tuning,
    where A, B and scaling are None. With PiSSA it is ``W_res + scaling · B A − W0``, the change of
    the layer's effective weight (PiSSA's B A starts non-zero, so ``scaling · B A`` alone is not it).
    """

    losses: np.ndarray
    val_losses: np.ndarray
    delta_W: np.ndarray
    A: np.ndarray | None
    B: np.ndarray | None
    scaling: float | None
    final_loss: float
    final_val_loss: float


def make_toy_problem(
    d_in: int = 64,
    d_out: int = 64,
    k: int = 4,
    n_train: int = 512,
    n_val: int = 512,
    noise: float = 0.0,
    seed: int = 0,
    decay: float = 0.5,
) -> ToyProblem:
    """A seeded toy problem whose true update ``ΔW* = U diag(σ) Vᵀ`` has exactly rank k.

    ``W0`` has N(0, 1/d_in) entries (a "pretrained" map that keeps unit-scale outputs); U, V are
    random orthonormal (d_out, k), (d_in, k); ``σ_i = decay^(i-1)``, by default 1, 1/2, 1/4, ... —
    distinct, so the best rank-r approximation is unique, and decaying, so each extra rank buys
    less. A ``decay`` near 1 (e.g. 0.97 with k = 64) makes a task that needs many ranks.
    """
    for name, value in (("d_in", d_in), ("d_out", d_out), ("n_train", n_train), ("n_val", n_val)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    if not (1 <= k <= min(d_in, d_out)):
        raise ValueError(
            f"k={k} must be between 1 and min(d_in, d_out) = min({d_in}, {d_out}) = "
            f"{min(d_in, d_out)}: a (d_out, d_in) matrix has rank at most that"
        )
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite standard deviation >= 0, got noise={noise!r}")
    if not (math.isfinite(decay) and 0 < decay <= 1):
        raise ValueError(
            f"decay={decay!r} must be in (0, 1]: the singular values of ΔW* are decay^(i-1), "
            "i = 1..k (0.5 halves each one; 1 makes them all equal)"
        )
    rng = np.random.default_rng(seed)
    W0 = rng.standard_normal((d_out, d_in)) / math.sqrt(d_in)
    U, _ = np.linalg.qr(rng.standard_normal((d_out, k)))
    V, _ = np.linalg.qr(rng.standard_normal((d_in, k)))
    sigma = float(decay) ** np.arange(k)
    delta_W_star = (U * sigma) @ V.T
    W_star = W0 + delta_W_star

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        X = rng.standard_normal((n, d_in))
        return X, X @ W_star.T + noise * rng.standard_normal((n, d_out))

    X_train, Y_train = sample(n_train)
    X_val, Y_val = sample(n_val)
    return ToyProblem(W0, delta_W_star, X_train, Y_train, X_val, Y_val, k, float(noise))


def toy_data(problem: ToyProblem, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split == "train":
        return problem.X_train, problem.Y_train
    if split == "val":
        return problem.X_val, problem.Y_val
    raise ValueError(
        f"split={split!r} is not known; expected one of {', '.join(map(repr, SPLITS))}"
    )


def toy_loss(problem: ToyProblem, delta_W: np.ndarray | float, split: str = "train") -> float:
    """``0.5 · mean over samples of ||x (W0 + ΔW)ᵀ − y||²``; ``delta_W`` (d_out, d_in) or 0."""
    X, Y = toy_data(problem, split)
    delta_W = _as_float(delta_W)
    if delta_W.ndim == 0 and delta_W == 0:
        delta_W = np.zeros_like(problem.W0)
    if delta_W.shape != problem.W0.shape:
        raise ValueError(
            f"delta_W has shape {delta_W.shape} but W0 has shape {problem.W0.shape}: "
            "delta_W must be (d_out, d_in)"
        )
    residual = X @ (problem.W0 + delta_W).T - Y
    return 0.5 * float(np.sum(residual * residual)) / len(X)


def toy_loss_floor(problem: ToyProblem, r: int, split: str = "train") -> float:
    """The lowest ``toy_loss`` on ``split`` that any ΔW of rank ≤ r can reach (Eckart–Young).

    With ``E = Y − X W0ᵀ`` (n, d_out) and Q an orthonormal basis of X's column space
    (X = Q R), ``X ΔWᵀ = Q (R ΔWᵀ)`` and R ΔWᵀ can be any rank-≤r matrix. So::

        min ||X ΔWᵀ − E||² = Σ_{i>r} σ_i(Qᵀ E)²  +  ||E − Q Qᵀ E||²
                             (what rank r misses)    (what no linear map can fit: noise)

    divided by 2n. Without noise this is the tail of σ(ΔW* Rᵀ)²/(2n); as n → ∞ (XᵀX/n → I) it
    tends to ``½ Σ_{i>r} σ_i(ΔW*)²``. The floor is computed on the split's own data.
    """
    X, Y = toy_data(problem, split)
    _check_rank(r, problem.d_in, problem.d_out)
    E = Y - X @ problem.W0.T
    # An SVD basis instead of QR also covers n < d_in or a rank-deficient X.
    U, s, _ = np.linalg.svd(X, full_matrices=False)
    Q = U[:, s > s[0] * max(X.shape) * np.finfo(X.dtype).eps]
    QtE = Q.T @ E
    tail = np.sum(np.linalg.svd(QtE, compute_uv=False)[r:] ** 2)
    unreachable = np.sum((E - Q @ QtE) ** 2)
    return float(tail + unreachable) / (2 * len(X))


def _check_training(steps: int, batch_size: int | None, n_train: int) -> None:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got steps={steps!r}")
    if batch_size is not None and not (1 <= batch_size <= n_train):
        raise ValueError(
            f"batch_size={batch_size!r} must be between 1 and n_train={n_train} "
            "(or None for full-batch training)"
        )


def _fit(
    problem: ToyProblem,
    params: dict[str, np.ndarray],
    grads_of: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]],
    delta_weight: Callable[[], np.ndarray],
    opt: _Optimizer,
    steps: int,
    batch_size: int | None,
    rng: np.random.Generator,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training loop shared by LoRA and full fine-tuning; returns (losses, val_losses, ΔW).

    ``grads_of(X, Y)`` runs forward and backward on one batch and returns the gradients;
    ``callback(t, ΔW)``, if given, sees the update ΔW (d_out, d_in) after update t = 1, 2, ...
    """
    n = len(problem.X_train)
    losses, val_losses = np.full(steps, np.nan), np.full(steps, np.nan)
    # A too-large lr overflows to inf/nan: record that honestly, warn once, and stop.
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps):
            batch = slice(None) if batch_size is None else rng.choice(n, batch_size, replace=False)
            opt.step(params, grads_of(problem.X_train[batch], problem.Y_train[batch]))
            delta_W = delta_weight()
            losses[t] = toy_loss(problem, delta_W, "train")
            val_losses[t] = toy_loss(problem, delta_W, "val")
            if callback is not None:
                callback(t + 1, delta_W)
            if not np.isfinite(losses[t]):
                warnings.warn(
                    f"training diverged: the train loss is {losses[t]} after update {t + 1} with "
                    f"{opt!r}; the remaining losses are nan. Try a smaller lr",
                    RuntimeWarning,
                    stacklevel=3,
                )
                break
    return losses, val_losses, delta_W


def train_lora_toy(
    problem: ToyProblem,
    r: int,
    alpha: float | None = None,
    *,
    steps: int = 500,
    lr: float = 1e-2,
    optimizer: str = "adam",
    init: str = "gaussian",
    use_rslora: bool = False,
    lr_ratio_B: float = 1.0,
    batch_size: int | None = None,
    seed: int = 0,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> ToyResult:
    """Train a rank-r LoRA update of ``problem.W0`` on the toy regression.

    ``alpha=None`` means ``alpha = r`` (scaling 1). ``init`` is one of ``INITS`` (see
    ``LoRALinear``). ``lr_ratio_B`` multiplies B's learning rate (LoRA+ uses ~16).
    ``batch_size=None`` is full-batch; otherwise each step samples a batch without replacement.
    ``seed`` drives A's initialisation and the batch sampling. ``callback(t, delta_W)`` is called
    after every update t = 1, 2, ... with the current update (d_out, d_in), e.g. to record how
    its singular values grow; it must not modify ``delta_W``.
    """
    _check_training(steps, batch_size, len(problem.X_train))
    rng = np.random.default_rng(seed)
    layer = LoRALinear(problem.W0, r, alpha, init, use_rslora=use_rslora, seed=rng)
    opt = make_optimizer(optimizer, lr, {"B": lr_ratio_B} if lr_ratio_B != 1.0 else None)

    def grads_of(X: np.ndarray, Y: np.ndarray) -> dict[str, np.ndarray]:
        # L = 0.5 · mean_i ||ŷ_i − y_i||², so ∂L/∂ŷ = (ŷ − y) / batch size.
        layer.backward((layer.forward(X) - Y) / len(X))
        return layer.grads()

    def delta_weight() -> np.ndarray:
        if init == "pissa":
            # PiSSA moved s·B₀A₀ out of W0 into the factors: what changed is W_res + s·B A − W0.
            return layer.merge() - problem.W0
        return layer.delta_weight()

    losses, val_losses, delta_W = _fit(
        problem, layer.params(), grads_of, delta_weight, opt, steps, batch_size, rng, callback
    )
    return ToyResult(
        losses=losses,
        val_losses=val_losses,
        delta_W=delta_W,
        A=layer.A.copy(),
        B=layer.B.copy(),
        scaling=layer.scaling,
        final_loss=float(losses[-1]),
        final_val_loss=float(val_losses[-1]),
    )


def train_full_toy(
    problem: ToyProblem,
    *,
    steps: int = 500,
    lr: float = 1e-2,
    optimizer: str = "adam",
    batch_size: int | None = None,
    seed: int = 0,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> ToyResult:
    """Full fine-tuning baseline: train every entry of ``W`` (starting at W0); ∂L/∂W = Gᵀ X.

    ``callback(t, delta_W)`` is called after every update, as in ``train_lora_toy``.
    """
    _check_training(steps, batch_size, len(problem.X_train))
    rng = np.random.default_rng(seed)
    W = problem.W0.copy()
    opt = make_optimizer(optimizer, lr)

    def grads_of(X: np.ndarray, Y: np.ndarray) -> dict[str, np.ndarray]:
        return {"W": ((X @ W.T - Y) / len(X)).T @ X}

    losses, val_losses, delta_W = _fit(
        problem, {"W": W}, grads_of, lambda: W - problem.W0, opt, steps, batch_size, rng, callback
    )
    return ToyResult(
        losses=losses,
        val_losses=val_losses,
        delta_W=delta_W,
        A=None,
        B=None,
        scaling=None,
        final_loss=float(losses[-1]),
        final_val_loss=float(val_losses[-1]),
    )
