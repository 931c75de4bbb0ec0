"""A minimal PEP 517 build backend for pure-Python plugin projects, for tests only.

The venv's setuptools (65.x) cannot build a wheel without the ``wheel`` package, and
a test may download nothing. So a test copies a plugin project, puts this file in its
``_build/`` folder and points ``[build-system]`` at it (``backend-path``). Everything
else comes from the project's own pyproject.toml: ``[project]`` (name, version,
description, requires-python, dependencies, entry points) and
``[tool.setuptools] packages``, each shipped with every ``.py`` file under it
(sub-folders too, such as an Alembic ``migrations/`` folder).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tarfile
import tomllib
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _project() -> tuple[dict, list[str]]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        data = tomllib.load(f)
    packages = data.get("tool", {}).get("setuptools", {}).get("packages", [])
    return data["project"], list(packages)


def _names() -> tuple[str, str, str]:
    project, _packages = _project()
    name, version = project["name"], project["version"]
    return name, version, re.sub(r"[-_.]+", "_", name).lower()


def _dist_info() -> str:
    _name, version, norm = _names()
    return f"{norm}-{version}.dist-info"


def _metadata() -> dict[str, str]:
    project, _packages = _project()
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}",
             f"Version: {project['version']}"]
    if "description" in project:
        lines.append(f"Summary: {project['description']}")
    if "requires-python" in project:
        lines.append(f"Requires-Python: {project['requires-python']}")
    lines += [f"Requires-Dist: {d}" for d in project.get("dependencies", [])]
    eps = []
    for group, entries in project.get("entry-points", {}).items():
        eps.append(f"[{group}]")
        eps += [f"{k} = {v}" for k, v in entries.items()]
    return {
        "METADATA": "\n".join(lines) + "\n",
        "WHEEL": "Wheel-Version: 1.0\nGenerator: tests-wheel-backend\n"
                 "Root-Is-Purelib: true\nTag: py3-none-any\n",
        "entry_points.txt": "\n".join(eps) + "\n",
    }


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    d = os.path.join(metadata_directory, _dist_info())
    os.makedirs(d, exist_ok=True)
    for name, text in _metadata().items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    return _dist_info()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _project_table, packages = _project()
    files: dict[str, bytes] = {}
    for pkg in packages:
        top = os.path.join(ROOT, *pkg.split("."))
        for folder, dirs, names in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(names):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path, "rb") as f:
                        files[os.path.relpath(path, ROOT).replace(os.sep, "/")] = f.read()
    info = _dist_info()
    for name, text in _metadata().items():
        files[f"{info}/{name}"] = text.encode()
    _name, version, norm = _names()
    wheel = f"{norm}-{version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w") as z:
        for arc, data in files.items():
            z.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{arc},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def build_sdist(sdist_directory, config_settings=None):
    _name, version, norm = _names()
    base = f"{norm}-{version}"
    path = os.path.join(sdist_directory, base + ".tar.gz")
    with tarfile.open(path, "w:gz") as t:
        t.add(ROOT, arcname=base, filter=lambda i: None if "__pycache__" in i.name else i)
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        data = _metadata()["METADATA"].encode()
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return os.path.basename(path)
