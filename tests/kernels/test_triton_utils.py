"""kernels/triton_utils.py at import: the FP-fusion default the kernels were measured with."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PRINT = "import pdpair.kernels.triton_utils, os; print(os.environ['TRITON_DEFAULT_FP_FUSION'])"


@pytest.mark.parametrize("preset, expected", [(None, "1"), ("0", "0"), ("1", "1")])
def test_fp_fusion_default_is_pinned_on_unless_the_environment_sets_it(preset, expected):
    """Triton 3.10 turns FP fusion off by default; importing the kernels keeps it on (Triton's behaviour through
    3.9, which every figure and tolerance was taken with), and a value the user set is left alone."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_DEFAULT_FP_FUSION"}
    if preset is not None:
        env["TRITON_DEFAULT_FP_FUSION"] = preset
    out = subprocess.run([sys.executable, "-c", _PRINT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
