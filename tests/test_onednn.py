"""Importing wmh asks TensorFlow for its oneDNN kernels on every x86 CPU (TensorFlow turns
them on by itself only with AVX-512 VNNI/BF16 or AMX), and a user's own setting wins."""

import os
import subprocess
import sys

import pytest

PROBE = ("import os, wmh; from tensorflow.python.util import _pywrap_util_port as port; "
         "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], port.IsMklEnabled())")


@pytest.mark.parametrize("setting, expected", [(None, "1 True"), ("0", "0 False")])
def test_onednn_default_and_the_users_choice(setting, expected):
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected
