"""The benchmark suite (``smallsample bench``): workloads as presets plus overrides
(:mod:`~smallsample.bench.workloads`), the measurement (:mod:`~smallsample.bench.suite`) and
peak-memory readings (:mod:`~smallsample.bench.memory`)."""

from smallsample.bench.suite import (
    compare,
    compile_workload,
    cpu_info,
    environment,
    format_record,
    main,
    matmul_peak,
    measure,
    peak_share,
    run_suite,
)
from smallsample.bench.workloads import (
    DEFAULT,
    QUICK,
    WORKLOADS,
    Workload,
    ab_variants,
    synthetic_data,
    train_step,
    with_settings,
    workload,
)

__all__ = [
    "DEFAULT",
    "QUICK",
    "WORKLOADS",
    "Workload",
    "ab_variants",
    "compare",
    "compile_workload",
    "cpu_info",
    "environment",
    "format_record",
    "main",
    "matmul_peak",
    "measure",
    "peak_share",
    "run_suite",
    "synthetic_data",
    "train_step",
    "with_settings",
    "workload",
]
