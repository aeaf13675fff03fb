"""Run configurations: one frozen dataclass, named presets, and ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Config:
    """Everything that defines a run. Presets (:data:`PRESETS`) override the defaults."""

    # data
    dataset: str = "omniglot"         # omniglot | mini-imagenet | tiered-imagenet | cifar-fs
                                      # | fc100 | cub | folder | tfds:NAME (smallsample.registry)
    data_path: str = ""               # the data set's folder (folder: required; benchmarks:
                                      # default <data>/<dataset>; tfds: its data_dir)
    split: str = "vinyals"            # omniglot: vinyals | maml | lake
    train_part: str = "train"
    val_part: str = "val"             # "" for none
    test_part: str = "test"
    image_size: int = 28
    per_class: int = 0                # only the first N drawings per training class (0: all)
    # episodes
    ways: int = 5                     # evaluation ways
    shots: int = 1
    queries: int = 15                 # evaluation queries per class
    train_ways: int = 0               # 0: same as ways
    train_shots: int = 0              # 0: same as shots
    train_queries: int = 15
    meta_batch: int = 1
    pretrain_batch: int = 64          # images per step of supervised pre-training (baselines)
    rotate: bool = False              # random 90-degree rotation of whole classes while training
    augment: str = ""                 # augmentation pipeline spec (smallsample.augment)
    # learner
    learner: str = "protonet"         # protonet | maml | fomaml | anil | metasgd | reptile | imaml
                                      # | matching | r2d2 | baseline | baseline++
    backbone: str = "conv4"           # conv4 | conv4-stride | resnet12
    width: int = 64
    conv_impl: str = "auto"           # auto | xla | im2col | shift | onednn (models/layers.py)
    conv_bias: bool = False           # conv4: a bias per conv (learn2learn; BatchNorm cancels it)
    norm: str = "separate"            # protonet batch statistics: separate | support | joint
    inner_steps: int = 1
    test_inner_steps: int = 0         # 0: same as inner_steps
    inner_lr: float = 0.4
    remat: bool = False
    # distillation from a trained run (smallsample.train.step.distill_task_loss_and_grad)
    teacher: str = ""                 # the teacher's run folder ("" : no teacher)
    distill_weight: float = 0.5       # alpha: (1 - alpha) CE + alpha KD on the query logits
    distill_temperature: float = 4.0  # T of the KD term (T^2 KL(teacher || student))
    distill_loss: str = "kd"          # kd (Hinton) | dkd (decoupled KD, TCKD + 8 NCKD)
    chunks: int = 0                   # sequential chunks of the meta-batch; 0: auto (CPU: one
                                      # task at a time, fastest there; GPU/TPU: all vmapped)
    devices: int = 0                  # devices the meta-batch is split over; 0: auto (CPU and
                                      # small tasks: the CPU devices, one per core from the
                                      # smallsample command; else 1), N: at most N
    # optimisation
    steps: int = 2000
    lr: float = 1e-3
    lr_decay_every: int = 0           # halve the rate every N steps (0: constant)
    steps_per_call: int = 10          # training steps fused into one device call (lax.scan)
    # evaluation and logging
    eval_every: int = 500
    val_episodes: int = 200
    test_episodes: int = 600
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3         # the latest checkpoints kept (a corrupt one falls back)
    seed: int = 0
    eval_seed: int = 1234
    notes: str = field(default="", compare=False)

    @property
    def effective_train_ways(self) -> int:
        return self.train_ways or self.ways

    @property
    def effective_train_shots(self) -> int:
        return self.train_shots or self.shots

    @property
    def effective_test_inner_steps(self) -> int:
        return self.test_inner_steps or self.inner_steps

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """The config as JSON. The distillation settings are left out while they all have their
        defaults (no teacher): a run without one has the same config (and checkpoint header) as
        before they existed, so such runs resume, and :meth:`from_json` fills them in."""
        values = dataclasses.asdict(self)
        default = Config()
        if all(getattr(self, name) == getattr(default, name) for name in DISTILL_FIELDS):
            for name in DISTILL_FIELDS:
                values.pop(name)
        return json.dumps(values, indent=2, sort_keys=True)

    def check(self) -> Config:
        """Raises a ``ValueError`` naming the first setting out of its range (names of learners,
        backbones and data sets are checked by :func:`smallsample.registry.validate`, which
        calls this); returns the config."""
        positive = ("ways", "shots", "queries", "train_queries", "meta_batch", "pretrain_batch",
                    "image_size", "width", "inner_steps", "steps", "steps_per_call",
                    "eval_every", "log_every", "checkpoint_every", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("train_ways", "train_shots", "per_class", "test_inner_steps", "chunks",
                     "devices", "lr_decay_every", "val_episodes", "test_episodes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("ways", "train_ways"):
            if getattr(self, name) == 1:
                raise ValueError(f"{name}=1: an episode needs at least 2 classes")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr} must be a finite number > 0")
        if not math.isfinite(self.inner_lr):
            raise ValueError(f"inner_lr={self.inner_lr} must be finite")
        if not (math.isfinite(self.distill_weight) and 0 <= self.distill_weight <= 1):
            raise ValueError(f"distill_weight={self.distill_weight} must be in [0, 1] (the "
                             f"weight of the KD term; 1 - it weighs the cross-entropy)")
        if not (math.isfinite(self.distill_temperature) and self.distill_temperature > 0):
            raise ValueError(f"distill_temperature={self.distill_temperature} must be a finite "
                             f"number > 0")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose from "
                                 f"{', '.join(allowed)}")
        spc = self.call_steps
        for name in ("steps", "log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) % spc:
                raise ValueError(f"{name}={getattr(self, name)} must be a multiple of "
                                 f"steps_per_call={spc}")
        return self

    @property
    def call_steps(self) -> int:
        """Training steps fused into one device call: ``steps_per_call``, at most ``log_every``."""
        return max(1, min(self.steps_per_call, self.log_every))

    @classmethod
    def from_json(cls, text: str) -> Config:
        """The config saved by :meth:`to_json`; a ``ValueError`` naming the field (or saying the
        text is not a JSON object) for anything else."""
        try:
            values = json.loads(text)
        except (ValueError, RecursionError) as e:  # also huge numbers, deep nesting
            raise ValueError(f"config is not valid JSON ({type(e).__name__}: {e})") from None
        if not isinstance(values, dict):
            raise ValueError(f"config JSON must be an object, got {type(values).__name__}")
        # saved before the field existed: Conv-4 then always had conv biases, and so do the
        # run's checkpoints
        values.setdefault("conv_bias", True)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        for name, value in values.items():
            values[name] = _json_value(fields[name].type, value, name)
        return cls(**values)


#: The allowed values of the settings that are names (learners, backbones and data sets are the
#: registry's tables).
CHOICES: dict[str, tuple[str, ...]] = {
    "split": ("vinyals", "maml", "lake"),
    "norm": ("separate", "support", "joint"),
    "conv_impl": ("auto", "xla", "im2col", "shift", "onednn"),
    "distill_loss": ("kd", "dkd"),
}

#: The settings of distillation from a teacher run (``teacher`` and its weights).
DISTILL_FIELDS = ("teacher", "distill_weight", "distill_temperature", "distill_loss")

#: Settings that may change when a run is resumed: they change how long it runs, what it logs
#: and evaluates, or how its step is laid out on the hardware, not the training trajectory.
RESUMABLE = frozenset({"steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                       "val_episodes", "test_episodes", "steps_per_call", "devices", "chunks",
                       "notes"})


def resume_config(saved: Config, requested: Config) -> Config:
    """The config a resumed run continues with: ``saved`` with the :data:`RESUMABLE` settings of
    ``requested``. Any other difference is a ``ValueError`` naming the settings, since it would
    change the run (start a new run for that)."""
    changed = sorted(f.name for f in dataclasses.fields(Config)
                     if getattr(saved, f.name) != getattr(requested, f.name))
    refused = [k for k in changed if k not in RESUMABLE]
    if refused:
        raise ValueError(
            "cannot change " + ", ".join(f"{k} ({getattr(saved, k)!r} -> "
                                         f"{getattr(requested, k)!r})" for k in refused)
            + " when resuming: it would change the run; start a new run folder instead "
              f"(settings that can change on resume: {', '.join(sorted(RESUMABLE))})")
    return saved.replace(**{k: getattr(requested, k) for k in changed})


PRESETS: dict[str, dict] = {
    # Quick start: prototypical networks on Omniglot, a few minutes on a laptop CPU.
    "quickstart": dict(learner="protonet", ways=5, shots=1, train_ways=20, train_queries=5,
                       steps=1000, lr_decay_every=0, eval_every=500, val_episodes=100,
                       test_episodes=600, log_every=50),
    # Snell et al. 2017: trained with 60-way episodes, 5 queries, Adam 1e-3 halved every 2000.
    "omniglot-protonet-5w1s": dict(learner="protonet", ways=5, shots=1, train_ways=60,
                                   train_queries=5, steps=10000, lr_decay_every=2000),
    "omniglot-protonet-5w5s": dict(learner="protonet", ways=5, shots=5, train_ways=60,
                                   train_queries=5, steps=10000, lr_decay_every=2000),
    "omniglot-protonet-20w1s": dict(learner="protonet", ways=20, shots=1, train_ways=60,
                                    train_queries=5, steps=10000, lr_decay_every=2000),
    "omniglot-protonet-20w5s": dict(learner="protonet", ways=20, shots=5, train_ways=60,
                                    train_queries=5, steps=10000, lr_decay_every=2000),
    # Finn et al. 2017: 1200 training characters, rotations, meta-batch 32 (5-way) / 16 (20-way),
    # inner rate 0.4 (5-way) / 0.1 (20-way), 1 (5-way) / 5 (20-way) inner steps, 60,000 steps.
    "omniglot-maml-5w1s": dict(learner="maml", split="maml", val_part="", backbone="conv4-stride",
                               ways=5, shots=1, train_queries=15, meta_batch=32, inner_steps=1,
                               test_inner_steps=3, inner_lr=0.4, rotate=True, steps=60000),
    "omniglot-maml-5w5s": dict(learner="maml", split="maml", val_part="", backbone="conv4-stride",
                               ways=5, shots=5, train_queries=15, meta_batch=32, inner_steps=1,
                               test_inner_steps=3, inner_lr=0.4, rotate=True, steps=60000),
    "omniglot-maml-20w1s": dict(learner="maml", split="maml", val_part="",
                                backbone="conv4-stride", ways=20, shots=1, train_queries=15,
                                meta_batch=16, inner_steps=5, inner_lr=0.1, rotate=True,
                                steps=60000),
    "omniglot-maml-20w5s": dict(learner="maml", split="maml", val_part="",
                                backbone="conv4-stride", ways=20, shots=5, train_queries=15,
                                meta_batch=16, inner_steps=5, inner_lr=0.1, rotate=True,
                                steps=60000),
    # mini-ImageNet (Ravi & Larochelle's split, 84x84). MAML (Finn et al. 2017): Conv-4 with 32
    # filters and max-pooling, 5 inner steps at 0.01 (10 at test), meta-batch 4 (1-shot) / 2
    # (5-shot), 60,000 steps, 15 queries. Prototypical networks (Snell et al. 2017): Conv-4,
    # 30-way (1-shot) / 20-way (5-shot) training episodes, 15 queries, Adam 1e-3 halved every
    # 2,000 steps. ResNet-12 (as in MetaOptNet, Lee et al. 2019, with the ProtoNet head).
    "mini-imagenet-maml-5w1s": dict(dataset="mini-imagenet", image_size=84, learner="maml",
                                    backbone="conv4", width=32, ways=5, shots=1,
                                    train_queries=15, meta_batch=4, inner_steps=5,
                                    test_inner_steps=10, inner_lr=0.01, steps=60000,
                                    val_episodes=100),
    "mini-imagenet-maml-5w5s": dict(dataset="mini-imagenet", image_size=84, learner="maml",
                                    backbone="conv4", width=32, ways=5, shots=5,
                                    train_queries=15, meta_batch=2, inner_steps=5,
                                    test_inner_steps=10, inner_lr=0.01, steps=60000,
                                    val_episodes=100),
    "mini-imagenet-protonet-5w1s": dict(dataset="mini-imagenet", image_size=84,
                                        learner="protonet", ways=5, shots=1, train_ways=30,
                                        train_queries=15, steps=20000, lr_decay_every=2000),
    "mini-imagenet-protonet-5w5s": dict(dataset="mini-imagenet", image_size=84,
                                        learner="protonet", ways=5, shots=5, train_ways=20,
                                        train_queries=15, steps=20000, lr_decay_every=2000),
    "mini-imagenet-protonet-resnet12-5w1s": dict(dataset="mini-imagenet", image_size=84,
                                                 learner="protonet", backbone="resnet12", ways=5,
                                                 shots=1, train_ways=5, train_queries=15,
                                                 steps=40000, lr_decay_every=10000),
    "mini-imagenet-protonet-resnet12-5w5s": dict(dataset="mini-imagenet", image_size=84,
                                                 learner="protonet", backbone="resnet12", ways=5,
                                                 shots=5, train_ways=5, train_queries=15,
                                                 steps=40000, lr_decay_every=10000),
    # CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 classes 64 / 16 / 20, 32x32
    "cifar-fs-protonet-5w1s": dict(dataset="cifar-fs", image_size=32, learner="protonet",
                                   ways=5, shots=1, train_ways=30, train_queries=15,
                                   steps=20000, lr_decay_every=2000),
    "cifar-fs-protonet-5w5s": dict(dataset="cifar-fs", image_size=32, learner="protonet",
                                   ways=5, shots=5, train_ways=20, train_queries=15,
                                   steps=20000, lr_decay_every=2000),
}


def _json_value(field_type, value, name: str):
    """``value`` read from JSON for a setting of ``field_type``; a ``ValueError`` naming the
    setting if it is not of that type (an int is taken for a float)."""
    kind = field_type if isinstance(field_type, str) else getattr(field_type, "__name__", "")
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"config field {name}: a number too large for a float") from None
    expected = {"int": int, "float": float, "bool": bool, "str": str}.get(kind)
    if expected is not None and (not isinstance(value, expected)
                                 or (expected is not bool and isinstance(value, bool))):
        raise ValueError(f"config field {name}={value!r:.60}: expected a {kind}")
    return value


def _parse_value(field_type, text: str, name: str):
    kind = field_type if isinstance(field_type, str) else getattr(field_type, "__name__", "")
    try:
        if kind == "bool":
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ValueError(f"setting {name}={text!r}: expected a {kind}") from None
    return text


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """``['steps=100', 'rotate=true']`` -> ``{'steps': 100, 'rotate': True}``, each value parsed
    as its setting's type; an unknown setting or a bad value is a ``ValueError`` naming it."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    values = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in fields:
            raise ValueError(f"unknown setting {key!r}; settings are: {', '.join(fields)}")
        values[key] = _parse_value(fields[key].type, text.strip(), key)
    return values


def make_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: Config | None = None) -> Config:
    """``base`` (default: the defaults), updated by ``preset`` and then by ``key=value``
    strings."""
    values: dict = {}
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    values.update(parse_overrides(overrides))
    return (base or Config()).replace(**values)
