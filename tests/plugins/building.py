"""Building and installing a plugin project in a test, with no network: the project's
``[build-system]`` points at ``wheel_backend.py`` (copied into its ``_build/``), pip
builds it without isolation and installs it with ``--target`` into a folder that only
subprocesses see, through PYTHONPATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

BUILD_SYSTEM = ('[build-system]\nrequires = []\nbuild-backend = "wheel_backend"\n'
                'backend-path = ["_build"]\n\n')


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without exnode's and pip's variables and PYTHONPATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EXNODE_", "PIP_")) and k != "PYTHONPATH"}
    env.update(extra)
    return env


def pip_install(proj: Path, target: Path) -> Path:
    """Build ``proj`` with the test backend and install it into ``target``."""
    (proj / "_build").mkdir(exist_ok=True)
    shutil.copy(Path(__file__).with_name("wheel_backend.py"), proj / "_build")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--no-cache-dir", "--disable-pip-version-check", "--quiet",
         "--target", str(target), str(proj)],
        capture_output=True, text=True, timeout=300, env=clean_env(), cwd=proj.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    return target
