"""The PyTorch peer of ``smallsample bench``: the same workloads in learn2learn 0.2.0.

Runs in the peer venv made by ``benchmarks/install_peer.sh`` (torch 2.13 CPU, learn2learn 0.2.0),
never in the project's environment::

    /tmp/l2lvenv/bin/python benchmarks/l2l_peer.py maml-omniglot-5w1s --steps 5 --json out.json

Each workload is one meta-training step written as learn2learn's own examples write it (MAML:
``maml.clone()``, ``learner.adapt(loss)``, query loss ``.backward()`` per task, gradients divided by
the meta-batch, Adam; ANIL: the body once, a MAML-wrapped linear head; ProtoNet: prototypes and
squared distances) on synthetic tensors of the workload's shapes, pre-made so that data handling
costs nothing (the JAX side samples its episodes inside the step, so the comparison favours the
peer slightly). Models: ``l2l.vision.models.OmniglotCNN`` (stride-2 Conv-4) for the Omniglot MAML
workloads, ``ConvBase(max_pool=True)`` for max-pool Conv-4 (ProtoNet; MAML on 84x84 with width 32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn


def import_learn2learn():
    """learn2learn's ``algorithms`` and ``vision.models``, the only parts used here.

    ``import learn2learn`` imports its dataset modules, which import torchvision; PyPI's
    torchvision wheels are CUDA builds whose extension does not load beside torch's CPU build
    ("operator torchvision::nms does not exist"), so torchvision is not installed. Instead the two
    subpackages are imported under empty parent packages, skipping ``learn2learn/__init__.py`` and
    ``learn2learn/vision/__init__.py``: the code that runs is learn2learn's own, nothing is stubbed.
    """
    import importlib  # noqa: PLC0415
    import importlib.metadata  # noqa: PLC0415
    import importlib.util  # noqa: PLC0415
    import types  # noqa: PLC0415

    try:
        import learn2learn  # noqa: PLC0415
        return learn2learn
    except ModuleNotFoundError as e:
        if e.name != "torchvision":
            raise
    for name in [m for m in sys.modules if m.startswith("learn2learn")]:
        del sys.modules[name]
    root = os.path.dirname(importlib.util.find_spec("learn2learn").origin)
    pkg = types.ModuleType("learn2learn")
    pkg.__path__ = [root]
    pkg.__version__ = importlib.metadata.version("learn2learn")
    vision = types.ModuleType("learn2learn.vision")
    vision.__path__ = [os.path.join(root, "vision")]
    sys.modules["learn2learn"], sys.modules["learn2learn.vision"] = pkg, vision
    pkg.vision = vision
    pkg.algorithms = importlib.import_module("learn2learn.algorithms")
    vision.models = importlib.import_module("learn2learn.vision.models")
    return pkg


l2l = import_learn2learn()

# name: (learner, backbone, (H, W, C), ways, shots, queries, meta_batch, inner_steps,
#        inner_lr, width)
WORKLOADS = {
    "maml-omniglot-5w1s": ("maml", "stride", (28, 28, 1), 5, 1, 15, 32, 1, 0.4, 64),
    "fomaml-omniglot-5w1s": ("fomaml", "stride", (28, 28, 1), 5, 1, 15, 32, 1, 0.4, 64),
    "anil-omniglot-5w1s": ("anil", "stride", (28, 28, 1), 5, 1, 15, 32, 1, 0.4, 64),
    "maml-omniglot-5w5s": ("maml", "stride", (28, 28, 1), 5, 5, 15, 32, 1, 0.4, 64),
    "maml-omniglot-5w1s-5steps": ("maml", "stride", (28, 28, 1), 5, 1, 15, 32, 5, 0.4, 64),
    "maml-omniglot-20w1s": ("maml", "stride", (28, 28, 1), 20, 1, 15, 16, 5, 0.1, 64),
    "protonet-omniglot-5w5s-b1": ("protonet", "pool", (28, 28, 1), 5, 5, 15, 1, 0, 0.0, 64),
    "protonet-omniglot-5w5s-b32": ("protonet", "pool", (28, 28, 1), 5, 5, 15, 32, 0, 0.0, 64),
    "protonet-omniglot-20w1s": ("protonet", "pool", (28, 28, 1), 20, 1, 15, 1, 0, 0.0, 64),
    "maml-mini-5w5s": ("maml", "pool", (84, 84, 3), 5, 5, 15, 2, 5, 0.01, 32),
    "protonet-mini-5w5s": ("protonet", "pool", (84, 84, 3), 5, 5, 15, 1, 0, 0.0, 64),
}


class Head(nn.Module):
    """Conv-4 body and, for MAML, a linear head (the spatial mean for stride-2 bodies)."""

    def __init__(self, body: nn.Module, features: int, ways: int | None, stride: bool):
        super().__init__()
        self.body, self.stride = body, stride
        self.linear = nn.Linear(features, ways) if ways else None

    def forward(self, x):
        x = self.body(x)
        x = x.mean(dim=(2, 3)) if self.stride else x.flatten(1)
        return self.linear(x) if self.linear is not None else x


def make_model(backbone, image, ways, width):
    h, _, c = image
    if backbone == "stride":
        # OmniglotCNN = ConvBase(max_pool=False) + mean over space + Linear, as in MAML/l2l.
        return l2l.vision.models.OmniglotCNN(output_size=ways, hidden_size=width, layers=4)
    body = l2l.vision.models.ConvBase(hidden=width, channels=c, max_pool=True, layers=4)
    side = h
    for _ in range(4):
        side //= 2
    return Head(body, width * side * side, ways, stride=False)


def make_step(name, steps_hint=None):
    learner, backbone, image, ways, shots, queries, batch, inner, lr, width = WORKLOADS[name]
    h, w, c = image
    g = torch.Generator().manual_seed(0)
    tasks = [(torch.rand(ways * shots, c, h, w, generator=g),
              torch.arange(ways).repeat_interleave(shots),
              torch.rand(ways * queries, c, h, w, generator=g),
              torch.arange(ways).repeat_interleave(queries)) for _ in range(batch)]
    loss_fn = nn.CrossEntropyLoss()
    if learner in ("maml", "fomaml"):
        model = make_model(backbone, image, ways, width)
        maml = l2l.algorithms.MAML(model, lr=lr, first_order=learner == "fomaml")
        opt = torch.optim.Adam(maml.parameters(), 1e-3)

        def step():
            opt.zero_grad()
            total = 0.0
            for sx, sy, qx, qy in tasks:
                fast = maml.clone()
                for _ in range(inner):
                    fast.adapt(loss_fn(fast(sx), sy))
                loss = loss_fn(fast(qx), qy)
                loss.backward()
                total += loss.item()
            for p in maml.parameters():
                p.grad.data.mul_(1.0 / batch)
            opt.step()
            return total / batch
    elif learner == "anil":
        full = make_model(backbone, image, ways, width)
        body = full.features if hasattr(full, "features") else full.body
        head = l2l.algorithms.MAML(full.classifier, lr=lr)
        opt = torch.optim.Adam(list(body.parameters()) + list(head.parameters()), 1e-3)

        def feats(x):
            f = body(x)
            return f.mean(dim=(2, 3)) if f.dim() == 4 else f

        def step():
            opt.zero_grad()
            total = 0.0
            for sx, sy, qx, qy in tasks:
                fs, fq = feats(sx), feats(qx)
                fast = head.clone()
                for _ in range(inner):
                    fast.adapt(loss_fn(fast(fs), sy))
                loss = loss_fn(fast(fq), qy)
                loss.backward()
                total += loss.item()
            for p in list(body.parameters()) + list(head.parameters()):
                p.grad.data.mul_(1.0 / batch)
            opt.step()
            return total / batch
    elif learner == "protonet":
        model = make_model(backbone, image, None, width)
        opt = torch.optim.Adam(model.parameters(), 1e-3)

        def step():
            opt.zero_grad()
            total = 0.0
            for sx, _sy, qx, qy in tasks:  # support labels are class-major: arange(ways)
                protos = model(sx).reshape(ways, shots, -1).mean(1)
                q = model(qx)
                logits = -((q[:, None, :] - protos[None]) ** 2).sum(-1)
                loss = loss_fn(logits, qy) / batch
                loss.backward()
                total += loss.item()
            opt.step()
            return total
    else:
        raise ValueError(learner)
    return step, batch


def _load(name, *parts):
    """The module at ``parts`` under the repository root, loaded by path (importing the
    ``smallsample`` package would import JAX, which the peer venv does not have)."""
    import importlib.util  # noqa: PLC0415

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", *parts)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def measure(name, steps):
    procmem = _load("memory", "smallsample", "bench", "memory.py")
    procmem.release_free_heap()
    rss_imports = procmem.current_rss_mb()
    step, batch = make_step(name)
    rss_before = procmem.peak_rss_mb()
    procmem.reset_peak_rss()  # as smallsample bench: the peak from the first step on
    t0 = time.perf_counter()
    step()  # warm-up
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    rss_run = procmem.peak_rss_mb()
    med = statistics.median(times)
    q = np.percentile(times, [25, 75])
    return {"name": name, "framework": "learn2learn", "tasks_per_s": batch / med,
            "step_ms_median": 1e3 * med, "step_ms_min": 1e3 * min(times),
            "step_ms_max": 1e3 * max(times), "step_ms_iqr": 1e3 * float(q[1] - q[0]),
            "first_step_s": first_s, "steps_timed": steps, "loss": loss,
            "rss_peak_mb": max(rss_before, rss_run), "rss_run_mb": rss_run,
            "rss_imports_mb": rss_imports,
            "torch": torch.__version__, "learn2learn": l2l.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "loadavg": list(os.getloadavg())}


def serve(name, warmup):
    """Lockstep worker for ``paired_l2l.py``: builds ``name``, runs ``warmup`` steps, then
    answers step requests through that script's ``serve``."""
    paired = _load("paired_l2l", "benchmarks", "paired_l2l.py")
    step, batch = make_step(name)
    for _ in range(warmup):
        step()
    info = {"framework": "learn2learn", "meta_batch": batch, "torch": torch.__version__,
            "learn2learn": l2l.__version__, "torch_threads": torch.get_num_threads()}
    return paired.serve(step, info)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="workloads (default: all)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--json")
    p.add_argument("--list", action="store_true")
    p.add_argument("--check", action="store_true", help="import check (install_peer.sh)")
    p.add_argument("--serve", type=int, metavar="WARMUP", help="lockstep worker for "
                   "paired_l2l.py: one workload, WARMUP untimed steps, then a step per stdin line")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(WORKLOADS))
        return 0
    if args.check:
        print("peer ok: torch", torch.__version__, "learn2learn", l2l.__version__, "cuda",
              torch.version.cuda)
        return 0
    if os.environ.get("L2L_PEER_THREADS"):
        torch.set_num_threads(int(os.environ["L2L_PEER_THREADS"]))
    if args.serve is not None:
        if len(args.names) != 1:
            p.error("--serve takes exactly one workload")
        return serve(args.names[0], args.serve)
    out = []
    for name in args.names or list(WORKLOADS):
        rec = measure(name, args.steps)
        print(f"{name:<30} {rec['tasks_per_s']:8.1f} tasks/s  step {rec['step_ms_median']:8.1f} "
              f"ms  rss {rec['rss_peak_mb']:.0f} MB", flush=True)
        out.append(rec)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
