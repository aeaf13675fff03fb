"""Pieces shared by the pretrained text encoders (:mod:`~smallsample.models.bert`,
:mod:`~smallsample.models.mpnet`): the post-LayerNorm transformer block, pooling, checksums and
the strict mapping of Hugging Face tensors onto flax parameters.

The block takes an optional additive attention bias ``[1 or n, heads, L, L]`` so that encoders
with absolute positions (BERT) and with relative position buckets (MPNet) share it; both name
their sub-modules alike (``query``, ``key``, ``value``, ``attention_output``,
``attention_LayerNorm``, ``intermediate``, ``output``, ``output_LayerNorm``), so one tensor
mapping serves both, each with its own table of Hugging Face names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # PyTorch's exact erf GELU
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def check_architecture(config: Any) -> None:
    """``ValueError`` if a config's width does not split into its heads or its activation is
    unknown (``config`` has ``hidden_size``, ``num_attention_heads``, ``hidden_act``)."""
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"hidden_size={config.hidden_size} is not divisible by "
                         f"num_attention_heads={config.num_attention_heads}")
    if config.hidden_act not in ACTIVATIONS:
        raise ValueError(f"hidden_act={config.hidden_act!r} is not supported; "
                         f"one of {sorted(ACTIVATIONS)}")


def config_fields(cls: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a Hugging Face ``config.json`` dict that are fields of dataclass ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from a file; a ``ValueError`` naming the file if it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def layer_norm(config: Any, name: str) -> nn.LayerNorm:
    # Two-pass variance, as PyTorch computes it (the fast one-pass formula loses digits).
    return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False, name=name)


class TransformerLayer(nn.Module):
    """One post-LayerNorm transformer block (BERT, MPNet).

    ``__call__(x [n, L, d], mask [n, L] bool, bias [1 or n, heads, L, L] | None) -> [n, L, d]``:
    self-attention (scores scaled by ``1/sqrt(head_dim)``, plus ``bias``, masked keys excluded),
    residual + LayerNorm, a two-layer feed-forward network, residual + LayerNorm. ``config`` has
    ``hidden_size``, ``num_attention_heads``, ``intermediate_size``, ``hidden_act`` and
    ``layer_norm_eps``.
    """

    config: Any

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads
        n, length, d = x.shape

        def split(t):  # [n, L, d] -> [n, heads, L, head_dim]
            return t.reshape(n, length, heads, head_dim).transpose(0, 2, 1, 3)

        q = split(nn.Dense(d, name="query")(x))
        k = split(nn.Dense(d, name="key")(x))
        v = split(nn.Dense(d, name="value")(x))
        scores = jnp.einsum("nhqc,nhkc->nhqk", q, k) / np.sqrt(head_dim).astype(x.dtype)
        if bias is not None:
            scores = scores + bias
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        attn = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("nhqk,nhkc->nhqc", attn, v).transpose(0, 2, 1, 3).reshape(n, length, d)
        x = layer_norm(cfg, "attention_LayerNorm")(x + nn.Dense(d, name="attention_output")(ctx))
        h = ACTIVATIONS[cfg.hidden_act](nn.Dense(cfg.intermediate_size, name="intermediate")(x))
        return layer_norm(cfg, "output_LayerNorm")(x + nn.Dense(d, name="output")(h))


def check_inputs(input_ids: jax.Array, attention_mask: jax.Array, *, max_length: int) -> None:
    """``ValueError`` unless ids and mask are both ``[n, L]`` with ``L <= max_length``."""
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and attention_mask must both be [n, L]; got "
                         f"{input_ids.shape} and {attention_mask.shape}")
    if input_ids.shape[1] > max_length:
        raise ValueError(f"sequence length {input_ids.shape[1]} is more than the {max_length} "
                         "positions the model has")


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean of the token states over unmasked tokens: ``[n, L, d], [n, L] -> [n, d]``.

    As sentence-transformers: the token count is clamped at 1e-9, so an all-padding row is zero.
    """
    m = attention_mask.astype(hidden.dtype)[..., None]
    return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)


def l2_normalize(x: jax.Array, *, eps: float = 1e-12) -> jax.Array:
    """Rows divided by their L2 norm (clamped at ``eps``, as ``torch.nn.functional.normalize``)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def pool(hidden: jax.Array, attention_mask: jax.Array, *, pooling: str = "mean",
         normalize: bool = True) -> jax.Array:
    """Sentence embeddings ``[n, d]`` from token states ``[n, L, d]`` and mask ``[n, L]``.

    ``pooling``: ``'mean'`` (over unmasked tokens) or ``'cls'`` (the first token's state);
    ``normalize``: divide by the L2 norm.
    """
    if pooling == "mean":
        out = mean_pool(hidden, attention_mask)
    elif pooling == "cls":
        out = hidden[:, 0]
    else:
        raise ValueError(f"pooling={pooling!r} is not supported; 'mean' or 'cls'")
    return l2_normalize(out) if normalize else out


# --- weight files -----------------------------------------------------------------------------

def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(path: str | os.PathLike, expected: str | None) -> str:
    """The file's sha256; a ``ValueError`` naming the file if ``expected`` is given and differs."""
    got = file_sha256(path)
    if expected is not None and got != expected.lower():
        raise ValueError(f"{path}: sha256 {got} does not match the expected {expected}; the weight "
                         "file is corrupt or not the checkpoint asked for")
    return got


def hf_param_path(parts: list[str], layer_modules: Mapping[str, str],
                  ) -> tuple[tuple[str, ...], bool] | None:
    """Flax path of a Hugging Face encoder tensor name split at dots, or ``None`` if unknown.

    ``embeddings.X.weight`` -> ``(X, embedding)`` (``LayerNorm`` -> ``embeddings_LayerNorm``);
    ``encoder.layer.3.<module>.weight`` -> ``(layer_3, layer_modules[<module>], kernel)``,
    transposed (PyTorch's Linear stores ``[out, in]``, flax's Dense ``[in, out]``); LayerNorm
    ``weight``/``gamma``/``beta`` -> ``scale``/``bias``.
    """
    leaf = parts[-1]
    if parts[0] == "embeddings" and len(parts) == 3:
        module = "embeddings_LayerNorm" if parts[1] == "LayerNorm" else parts[1]
        path: tuple[str, ...] = ()
    elif parts[:2] == ["encoder", "layer"] and len(parts) >= 5:
        rest = ".".join(parts[3:-1])
        module = layer_modules.get(rest, rest)
        path = (f"layer_{parts[2]}",)
    else:
        return None
    if module.endswith("LayerNorm"):
        leaf = {"weight": "scale", "gamma": "scale", "beta": "bias"}.get(leaf, leaf)
        return path + (module, leaf), False
    if module.endswith("embeddings"):
        return path + (module, "embedding" if leaf == "weight" else leaf), False
    if leaf == "weight":
        return path + (module, "kernel"), True
    return path + (module, leaf), False


def params_from_tensors(tensors: Mapping[str, np.ndarray], abstract: Any, *,
                        param_path: Callable[[str], tuple[tuple[str, ...], bool]],
                        unused: Iterable[str], prefix: str = "") -> dict[str, Any]:
    """A flax parameter tree shaped like ``abstract`` from named Hugging Face tensors.

    ``param_path(name)`` gives each tensor's flax path and whether to transpose it; ``prefix``
    (e.g. ``'bert.'``) is the head-model prefix a name may carry, ignored when matching
    ``unused``. Raises ``ValueError`` listing any tensor that is neither used nor in ``unused``,
    any parameter the tensors do not provide, and any shape that does not fit ``abstract``.
    """
    wanted = {tuple(k.key for k in kp): leaf.shape
              for kp, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
    unused = set(unused)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    unexpected = []
    for name, value in tensors.items():
        path, transpose = param_path(name)
        if path not in wanted:
            if name not in unused and name.removeprefix(prefix) not in unused:
                unexpected.append(name)
            continue
        value = np.asarray(value, dtype=np.float32)
        value = value.T if transpose else value
        if value.shape != wanted[path]:
            raise ValueError(f"tensor {name!r} has shape {value.shape} (after transposing: "
                             f"{transpose}); the config needs {wanted[path]}")
        flat[path] = value
    if unexpected:
        raise ValueError(f"unexpected tensors (neither used nor listed as unused): {unexpected}")
    missing = sorted("/".join(p) for p in wanted if p not in flat)
    if missing:
        raise ValueError(f"the checkpoint lacks parameters: {missing}")
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(value)
    return tree


def model_folder(path: str | os.PathLike) -> Path:
    """``path`` as a model folder; ``FileNotFoundError`` if it has no ``config.json``."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json there; pass the folder that holds "
                                "config.json, model.safetensors and tokenizer.json")
    return folder
