"""What a normal (non-editable) install ships."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAPPED = {"node": "exnode.node", "plugins": "exnode.plugins", "adapters": "exnode.adapters",
          "policies": "exnode.policies"}


def test_every_python_package_is_listed_in_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}
    found = set()
    for folder, dotted in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([dotted, *rel.parts]))
    assert found - listed == set(), "add these to [options] packages in setup.cfg"
