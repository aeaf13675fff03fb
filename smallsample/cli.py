"""The ``smallsample`` command: train, eval, data, plot, episode, presets, bench."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from smallsample.config import PRESETS, Config, make_config


def _add_data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="data folder (default: $SMALLSAMPLE_DATA, else ~/.cache/smallsample/data)")


def _split_preset(items: list[str]) -> tuple[str | None, list[str]]:
    preset = None
    overrides = []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif preset is None:
            preset = item
        else:
            raise SystemExit(f"error: two presets given ({preset!r}, {item!r}); settings are "
                             f"key=value")
    return preset, overrides


def cmd_train(args) -> int:
    from smallsample.registry import load_data  # noqa: PLC0415
    from smallsample.train import train  # noqa: PLC0415

    preset, overrides = _split_preset(args.settings)
    if args.augment:
        overrides.append(f"augment={args.augment}")
    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.resume:
        if run_dir is None:
            raise SystemExit("error: --resume needs --run-dir")
        config = Config.from_json((run_dir / "config.json").read_text())
        if overrides:
            config = make_config(None, [f"{k}={v}" for k, v in json.loads(config.to_json())
                                        .items()] + overrides)
    else:
        config = make_config(preset or "quickstart", overrides)
        run_dir = run_dir or Path("runs") / (preset or "quickstart")
    print(f"run folder: {run_dir}")
    data = load_data(config, root=args.data)
    result = train(config, run_dir, resume=args.resume, progress=not args.no_progress, data=data)
    if result.test is not None:
        print(f"{config.ways}-way {config.shots}-shot test accuracy: "
              f"{100 * result.test.mean:.2f} +- {100 * result.test.ci95:.2f}% "
              f"({len(result.test.accuracies)} episodes, {result.seconds:.0f} s of training)")
    if args.lake:
        _print_lake(config, run_dir, args.data)
    return 0


def _restore(run_dir: Path, config: Config, ways: int, test: bool = True):
    from smallsample.registry import build_learner  # noqa: PLC0415
    from smallsample.train import load_params  # noqa: PLC0415

    learner = build_learner(config, ways=ways, test=test)
    for name in ("best.msgpack", "checkpoint.msgpack"):
        if (run_dir / name).exists():
            return learner, load_params(run_dir / name), name
    raise SystemExit(f"error: {run_dir} has no checkpoint (best.msgpack or checkpoint.msgpack)")


def _print_lake(config: Config, run_dir: Path, root) -> None:
    from smallsample.data.lake import PUBLISHED_ERROR, WAYS, load_runs  # noqa: PLC0415
    from smallsample.evaluate import lake_error  # noqa: PLC0415

    if config.learner != "protonet" and config.effective_train_ways != WAYS and \
            config.learner not in ("matching", "r2d2", "baseline", "baseline++"):
        print(f"Lake's task is 20-way; this {config.learner} run has a {config.ways}-way head: "
              f"skipped")
        return
    learner, params, _ = _restore(Path(run_dir), config, WAYS)
    res = lake_error(learner, params, load_runs(size=config.image_size, root=root))
    print(f"Lake's 20-way within-alphabet one-shot task (20 runs): error "
          f"{100 * (1 - res.mean):.1f}% +- {100 * res.ci95:.1f}")
    for who, err in PUBLISHED_ERROR.items():
        print(f"  published, {who}: {100 * err:.1f}%")


def cmd_eval(args) -> int:
    from smallsample.evaluate import evaluate  # noqa: PLC0415
    from smallsample.registry import load_data  # noqa: PLC0415

    run_dir = Path(args.run_dir)
    config = Config.from_json((run_dir / "config.json").read_text())
    ways = args.ways or config.ways
    shots = args.shots or config.shots
    learner, params, which = _restore(run_dir, config, ways)
    data = load_data(config.replace(val_part=""), root=args.data)
    import jax.numpy as jnp  # noqa: PLC0415

    res = evaluate(learner, params, jnp.asarray(data["test"]), ways=ways, shots=shots,
                   queries=config.queries, num_episodes=args.episodes, seed=config.eval_seed)
    print(f"{which}: {ways}-way {shots}-shot test accuracy {100 * res.mean:.2f} +- "
          f"{100 * res.ci95:.2f}% ({len(res.accuracies)} episodes)")
    if args.lake:
        _print_lake(config, run_dir, args.data)
    return 0


def cmd_data(args) -> int:
    from smallsample.data import omniglot  # noqa: PLC0415
    from smallsample.data.files import DataError, data_root  # noqa: PLC0415

    root = data_root(args.data)
    print(f"data folder: {root}")
    ok = True
    for name in omniglot.UPSTREAM_FILES:
        path = root / "omniglot" / name
        status = f"{path.stat().st_size:>10,d} bytes" if path.exists() else "   missing"
        print(f"  omniglot/{name:32s} {status}")
        ok &= path.exists()
    for part in ("train", "val", "test", "trainval"):
        path = root / "omniglot" / "splits" / "vinyals" / f"{part}.txt"
        print(f"  omniglot/splits/vinyals/{part + '.txt':16s} "
              f"{'present' if path.exists() else 'missing'}")
    for rel in ("text/clinc150/data_full.json", "text/banking77/train.csv",
                "text/banking77/test.csv"):
        print(f"  {rel:41s} {'present' if (root / rel).exists() else 'missing'}")
    if args.verify:
        print("verifying content (decodes every image; cached afterwards)...")
        for which in omniglot.SETS:
            try:
                s = omniglot.load_set(which, root=root, download_missing=False)
                print(f"  {which:18s} ok: {s.images.shape[0]} characters x "
                      f"{s.images.shape[1]} drawings")
            except DataError as e:
                ok = False
                print(f"  {which:18s} FAILED: {e}")
        for split, parts in (("vinyals", ("train", "val", "test")), ("maml", ("train", "test"))):
            for part in parts:
                try:
                    n = omniglot.load_split(split, part, root=root,
                                            download_missing=False).num_classes
                    print(f"  split {split}/{part}: {n} classes")
                except DataError as e:
                    ok = False
                    print(f"  split {split}/{part} FAILED: {e}")
    return 0 if ok else 1


def cmd_plot(args) -> int:
    from smallsample.plots import plot_curves  # noqa: PLC0415

    print(plot_curves(args.run_dir, args.out))
    return 0


def cmd_episode(args) -> int:
    import jax  # noqa: PLC0415

    from smallsample.episodes import sample_episode  # noqa: PLC0415
    from smallsample.plots import plot_episode  # noqa: PLC0415
    from smallsample.registry import load_data  # noqa: PLC0415

    preset, overrides = _split_preset(args.settings)
    if args.augment:
        overrides.append(f"augment={args.augment}")
    config = make_config(preset or "quickstart", overrides)
    data = load_data(config.replace(val_part="", test_part=""), root=args.data)
    ep = sample_episode(jax.random.key(args.seed), jax.numpy.asarray(data["train"]),
                        ways=config.ways, shots=config.shots, queries=min(config.queries, 5),
                        rotate=config.rotate)
    if config.augment:
        from smallsample.augment import parse_pipeline  # noqa: PLC0415
        aug = jax.vmap(parse_pipeline(config.augment))
        k1, k2 = jax.random.split(jax.random.key(args.seed + 1))
        ep = ep._replace(support_x=aug(jax.random.split(k1, len(ep.support_y)), ep.support_x),
                         query_x=aug(jax.random.split(k2, len(ep.query_y)), ep.query_x))
    print(plot_episode(ep, args.out, title=f"{preset or 'quickstart'}: {config.ways}-way "
                                           f"{config.shots}-shot training episode"))
    return 0


def cmd_presets(args) -> int:
    for name, values in PRESETS.items():
        print(f"{name:26s} " + " ".join(f"{k}={v}" for k, v in values.items()))
    return 0


def cmd_bench(args) -> int:
    from smallsample import bench  # noqa: PLC0415

    return bench.main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smallsample", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train a preset, then evaluate on test episodes")
    t.add_argument("settings", nargs="*", help="a preset name and/or key=value settings")
    t.add_argument("--run-dir", help="run folder (default runs/<preset>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--lake", action="store_true", help="also report Lake's 20-run one-shot task")
    t.add_argument("--augment", default="", help="augmentation pipeline applied inside the "
                   "training step, e.g. 'rotate(max_degrees=15),translate(max_pixels=2)'")
    _add_data_arg(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run's checkpoint on fixed test episodes")
    e.add_argument("run_dir")
    e.add_argument("--episodes", type=int, default=600)
    e.add_argument("--ways", type=int, default=0)
    e.add_argument("--shots", type=int, default=0)
    e.add_argument("--lake", action="store_true", help="also report Lake's 20-run one-shot task")
    _add_data_arg(e)
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("data", help="list (and with --verify check) the data files present")
    d.add_argument("--verify", action="store_true")
    _add_data_arg(d)
    d.set_defaults(func=cmd_data)

    pl = sub.add_parser("plot", help="learning curves of a run as a PNG")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None, help="default <run_dir>/curves.png")
    pl.set_defaults(func=cmd_plot)

    ep = sub.add_parser("episode", help="a grid of a sampled training episode as a PNG")
    ep.add_argument("settings", nargs="*", help="a preset name and/or key=value settings")
    ep.add_argument("--out", default="episode.png")
    ep.add_argument("--seed", type=int, default=0)
    ep.add_argument("--augment", default="", help="show the episode after this pipeline")
    _add_data_arg(ep)
    ep.set_defaults(func=cmd_episode)

    pr = sub.add_parser("presets", help="list the named presets")
    pr.set_defaults(func=cmd_presets)

    b = sub.add_parser("bench", help="the benchmark suite (see smallsample bench --help)",
                       add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)
    return p


def use_compile_cache(path: str | Path | None) -> None:
    """Keeps compiled programs in JAX's persistent compilation cache at ``path`` (None: off), so a
    second run of the same job loads its programs instead of compiling them: the MAML Omniglot
    5w1s step compiles in about 15 s and loads in about 2, and the compiler's transient memory
    (peak 830 MB cold, 395 MB warm) is not paid. A process-wide JAX setting:
    the command line's choice, never made by the library."""
    if path is not None:
        import jax  # noqa: PLC0415

        jax.config.update("jax_compilation_cache_dir", str(path))


def cpu_devices_per_core(environ=None) -> int | None:
    """One JAX CPU device per core this process may run on (``jax_num_cpu_devices``), so that
    meta-training can split its meta-batch over them (:func:`smallsample.parallel.auto_devices`):
    each device runs its own tasks one at a time, with no communication but one all-reduce at the
    end of the step. A small task's chain of small operations leaves cores idle that XLA's and
    oneDNN's threads cannot fill; other tasks on other devices do (MAML Omniglot 5w1s on 2 cores:
    1.11x the step on one device, ``benchmarks/README.md``). A computation that is not split runs
    on the first device with every core, as before.

    A process-wide JAX setting, made by the command line only, before JAX starts its backends.
    Left alone where the user chose a count (``JAX_NUM_CPU_DEVICES``, or
    ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``) or JAX has already started.
    Returns the count set, or None."""
    environ = os.environ if environ is None else environ
    if ("JAX_NUM_CPU_DEVICES" in environ
            or "xla_force_host_platform_device_count" in environ.get("XLA_FLAGS", "")):
        return None
    import jax  # noqa: PLC0415

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = max(1, cores or 1)
    try:
        jax.config.update("jax_num_cpu_devices", cores)
    except RuntimeError:  # the backends have started: too late, leave them as they are
        return None
    return cores


def entry() -> int:
    """The ``smallsample`` console script: :func:`main` with two process-wide settings.

    - glibc's heap on transparent huge pages (:func:`smallsample.procmem.hugepage_env`): where
      the kernel gives them on request only (``madvise``), the command starts itself again once
      with the glibc tunable that asks for them (glibc reads it at start-up only);
      ``SMALLSAMPLE_HEAP=default`` leaves the process as started.
    - The persistent compilation cache of :func:`smallsample.paths.compile_cache_dir`
      (``SMALLSAMPLE_COMPILE_CACHE=off`` disables it; a ``JAX_COMPILATION_CACHE_DIR`` the user
      set is left alone). ``bench`` measures cold compilation unless given ``--compile-cache``.
    - One CPU device per core (:func:`cpu_devices_per_core`).
    """
    argv = sys.argv[1:]
    _restart_with_hugepage_heap(argv)
    if argv[:1] != ["bench"] and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        from smallsample.paths import compile_cache_dir  # noqa: PLC0415

        use_compile_cache(compile_cache_dir())
    cpu_devices_per_core()
    return main(argv)


def _restart_with_hugepage_heap(argv: list[str]) -> None:
    """Replaces this process with ``python -m smallsample ARGV`` whose environment asks glibc
    for huge pages, unless it already does, the user said ``SMALLSAMPLE_HEAP=default``, the C
    library is not glibc or the kernel's mode makes it moot (``always``, ``never``)."""
    from smallsample import procmem  # noqa: PLC0415

    if (os.environ.get("SMALLSAMPLE_HEAP") == "default" or procmem.hugepage_heap()
            or not procmem.glibc()
            or procmem.transparent_hugepages() != "madvise"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-m", "smallsample", *argv],
                  procmem.hugepage_env(os.environ))
    except OSError:  # run as started
        return


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the suite parses its own options, --help included
        from smallsample import bench  # noqa: PLC0415

        return bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    from smallsample.data.files import DataError  # noqa: PLC0415

    try:
        return args.func(args)
    except (DataError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(entry())
