"""The ``smallsample`` command: train, eval, data, plot, episode, presets, bench."""

from __future__ import annotations

import argparse
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
    from smallsample.registry import load_data, validate  # noqa: PLC0415
    from smallsample.train import train_and_evaluate  # noqa: PLC0415

    preset, overrides = _split_preset(args.settings)
    if args.augment:
        overrides.append(f"augment={args.augment}")
    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.resume:
        if run_dir is None:
            raise SystemExit("error: --resume needs --run-dir")
        if preset:
            raise SystemExit(f"error: --resume continues the run in {run_dir} with its saved "
                             f"config; a preset ({preset!r}) cannot be given")
        path = run_dir / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: {path} does not exist")
        # the saved config with the overrides on top; train_and_evaluate refuses any override
        # that may not change on resume, naming it
        config = make_config(None, overrides, base=Config.from_json(path.read_text()))
    else:
        config = validate(make_config(preset or "quickstart", overrides))
        run_dir = run_dir or Path("runs") / (preset or "quickstart")
    print(f"run folder: {run_dir}")
    data = load_data(config, root=args.data)
    result = train_and_evaluate(config, run_dir, resume=args.resume,
                                progress=not args.no_progress, data=data)
    if result.test is not None:
        print(f"{config.ways}-way {config.shots}-shot test accuracy: "
              f"{100 * result.test.mean:.2f} +- {100 * result.test.ci95:.2f}% "
              f"({len(result.test.accuracies)} episodes, {result.seconds:.0f} s of training)")
    if args.lake:
        _print_lake(config, run_dir, args.data)
    return 0


def _restore(run_dir: Path, config: Config, ways: int, test: bool = True):
    from smallsample.registry import build_learner  # noqa: PLC0415
    from smallsample.train import load_params, run_checkpoint  # noqa: PLC0415

    learner = build_learner(config, ways=ways, test=test)
    path, name = run_checkpoint(run_dir)
    return learner, load_params(path), name


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
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: {path} does not exist")
    config = Config.from_json(path.read_text())
    for name in ("episodes", "ways", "shots"):
        if getattr(args, name) is not None and getattr(args, name) < (2 if name == "ways" else 1):
            raise ValueError(f"--{name} {getattr(args, name)} must be at least "
                             f"{2 if name == 'ways' else 1}")
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


def cmd_onednn(args) -> int:
    from smallsample.models import onednn  # noqa: PLC0415

    return onednn.main([args.action] + (["--force"] if args.force else []))


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
    e.add_argument("--ways", type=int, default=None, help="default: the run's")
    e.add_argument("--shots", type=int, default=None, help="default: the run's")
    e.add_argument("--lake", action="store_true", help="also report Lake's 20-run one-shot task")
    _add_data_arg(e)
    e.set_defaults(func=cmd_eval)

    from smallsample.data import inventory  # noqa: PLC0415

    inventory.register(sub)

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

    sub.add_parser("bench", help="the benchmark suite (see smallsample bench --help)",
                   add_help=False)

    o = sub.add_parser("onednn", help="build (or check) oneDNN's CPU convolution, an optional "
                       "extra: pip install 'smallsample[onednn]' first")
    o.add_argument("action", choices=["build", "status"])
    o.add_argument("--force", action="store_true", help="rebuild even if a verified build exists")
    o.set_defaults(func=cmd_onednn)

    from smallsample.text import app as text_app  # noqa: PLC0415

    text_app.register(sub)
    return p


#: Commands that run JAX computations, and so get the process settings of
#: :mod:`smallsample.runtime` (the others start faster without them).
RUNTIME_COMMANDS = ("train", "eval", "episode", "bench", "text")


def entry() -> int:
    """The ``smallsample`` console script: the process settings of :mod:`smallsample.runtime`
    (announced in one line on standard error, each with its off switch), then :func:`main`."""
    argv = sys.argv[1:]
    if argv[:1] and argv[0] in RUNTIME_COMMANDS:
        from smallsample import runtime  # noqa: PLC0415

        # the suite measures cold compilation unless given --compile-cache
        runtime.configure(argv, compile_cache=argv[0] != "bench")
    return main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the suite parses its own options, --help included
        from smallsample import bench  # noqa: PLC0415

        return bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    from smallsample.data.files import DataError  # noqa: PLC0415

    try:
        return args.func(args)
    except (DataError, ValueError, OSError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(entry())
