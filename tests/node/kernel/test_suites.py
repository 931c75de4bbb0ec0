"""Crypto suites are allow-listed by ``crypto.suites``: a package whose header names a
registered suite that is not allowed is refused, and a suite id registered twice is
an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from exnode.node.base.config import load_config
from exnode.node.base.errors import ConfigError, PackageError
from exnode.node.kernel import envelope
from exnode.node.kernel.node import Node
from exnode.plugins import hookimpl
from exnode.plugins import manager as plugin_manager
from exnode.plugins.builtin.crypto import DefaultSuite
from exnode.plugins.manager import PluginError, Registry, make_manager

from ...helpers import init_bureau


class OtherSuite(DefaultSuite):
    id = "test-other-suite"


class ExtraSuites:
    """A plugin that brings one more suite (and, with ``twice``, the default again)."""

    def __init__(self, twice: bool = False) -> None:
        self.twice = twice

    @hookimpl
    def exnode_crypto_suites(self, register):  # type: ignore[no-untyped-def]
        register(OtherSuite())
        if self.twice:
            register(DefaultSuite())


def bureau(tmp_path: Path, suites: list[str] | None = None) -> Path:
    return init_bureau(tmp_path, **({"crypto": {"suites": suites}} if suites else {}))


@pytest.fixture
def with_other_suite(monkeypatch):
    real = plugin_manager.make_manager

    def make(disable=None):  # type: ignore[no-untyped-def]
        pm = real(disable)
        pm.register(ExtraSuites(), name="test-other-suite")
        return pm

    monkeypatch.setattr(plugin_manager, "make_manager", make)


def test_only_allowed_suites_open_packages(tmp_path, with_other_suite):
    node = Node(load_config(bureau(tmp_path)))
    try:
        assert "test-other-suite" in node.plugins.suites  # registered
        assert list(node.suites) == ["x25519-hkdf-sha256-aes256gcm-ed25519"]
        other = OtherSuite()
        sign = node.identity.sign_key
        pkg = envelope.build(suite=other, sign_key=sign, src="b2", kind="data",
                             rcpt={"b1": node.identity.enc_key.public_key()}, resource="r",
                             seq=1, payload=b"x", ttl_s=60)
        with pytest.raises(PackageError) as ei:
            envelope.verify(envelope.parse(pkg.wire, 1 << 20), node.inbox.suites,
                            sign.public_key())
        assert ei.value.reason == "unknown-suite"
    finally:
        node.engine.dispose()
    allowed = Node(load_config(bureau(tmp_path / "2", ["x25519-hkdf-sha256-aes256gcm-ed25519",
                                                         "test-other-suite"])))
    try:
        assert set(allowed.inbox.suites) == {"x25519-hkdf-sha256-aes256gcm-ed25519",
                                             "test-other-suite"}
    finally:
        allowed.engine.dispose()


def test_an_allowed_suite_that_is_not_loaded_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"crypto\.suites: nosuch-suite not loaded"):
        Node(load_config(bureau(tmp_path, ["nosuch-suite"])))


def test_a_suite_id_registered_twice_is_an_error():
    pm = make_manager()
    pm.register(ExtraSuites(twice=True), name="dup")
    with pytest.raises(PluginError, match="registered twice"):
        Registry(pm)
