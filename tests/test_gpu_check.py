"""benchmarks/gpu_check.sh in its CPU fallback: label generation and training on the device path, each measured
against its bare part, run as a user would (the script, in a subprocess)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def rounding_bound(numerator: float, denominator: float) -> float:
    """How far the printed ratio (2 places) may lie from the ratio of the printed rates (1 place each)."""
    return 0.005 + 0.05 / denominator + 0.05 * numerator / denominator ** 2 + 1e-9


@pytest.mark.slow
def test_gpu_check_cpu_fallback_measures_both_pipelines_against_their_bare_parts(tmp_path):
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "PY": sys.executable, "SOFTLAB_HOME": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith("device: CPU, 1 threads")
    bare, pipeline, ratio = (float(v) for v in re.search(
        rf"teacher forward alone \(best batch (?:8|16)\)\s+{NUMBER} crops/s\n\s+generate_labels end to end\s+"
        rf"{NUMBER} crops/s\n\s+pipeline / bare forward\s+{NUMBER}", out).groups())
    assert bare > 0 and pipeline > 0 and abs(ratio - pipeline / bare) <= rounding_bound(pipeline, bare)
    assert "(finished, median of" in out
    bare, engine, ratio = (float(v) for v in re.search(
        rf"bare student step\s+{NUMBER} crops/s\n\s+training engine\s+{NUMBER} crops/s\n\s+"
        rf"engine / bare student step\s+{NUMBER}", out).groups())
    assert bare > 0 and engine > 0 and abs(ratio - engine / bare) <= rounding_bound(engine, bare)
