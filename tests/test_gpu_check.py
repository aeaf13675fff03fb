"""``scripts/gpu_check.py``'s stage runner: a stage over its time limit is killed with its whole
process group and keeps the output it printed, a partial last line included."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stage_over_its_limit_is_killed_and_keeps_its_output(tmp_path):
    g = _module()
    c = g.Check(tmp_path, budget=60, dry=True)
    marker = tmp_path / "child_alive"
    # a child in the same process group that would write a file after the limit
    grandchild = tmp_path / "grandchild.py"
    grandchild.write_text(f"import time\ntime.sleep(4)\nopen({str(marker)!r}, 'w').close()\n")
    script = tmp_path / "sleeper.py"
    script.write_text("import subprocess, sys, time\n"
                      f"subprocess.Popen([sys.executable, {str(grandchild)!r}])\n"
                      "print('line one', flush=True)\n"
                      "sys.stdout.write('partial'); sys.stdout.flush()\n"
                      "time.sleep(30)\n")
    code_path = str(script)
    t = time.monotonic()
    res = c.run("sleeper", [sys.executable, code_path], timeout=2)
    assert res["timed_out"] and res["rc"] != 0
    assert time.monotonic() - t < 10
    log = (tmp_path / "gpu_check.log").read_text()
    assert "line one" in log and "partial" in log and "TIMED OUT" in log
    time.sleep(4)
    assert not marker.exists()  # the grandchild died with its group


def test_stage_that_exits_keeps_its_return_code_and_json(tmp_path):
    g = _module()
    c = g.Check(tmp_path, budget=60, dry=True)
    res = c.run("exit3", [sys.executable, "-c", "print('done'); raise SystemExit(3)"], timeout=30)
    assert res == {"rc": 3, "seconds": res["seconds"], "timed_out": False}
    c.record["stage"] = res
    c.save()
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["stage"]["rc"] == 3 and not list(tmp_path.glob("*.part"))
