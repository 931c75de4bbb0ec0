"""Enrolment without a broker: the center's registry forgets an invitation's secret once
it answered, names its newest gconf version in the answer, and limits requests per id;
the bureau writes the token's fields into its YAML file through the YAML library."""

from __future__ import annotations

import time

import pytest
import yaml

from exnode.node.base.config import load_config, render_config
from exnode.node.base.errors import ConfigError, IdentityError
from exnode.node.kernel import identity as idn
from exnode.node.kernel import registry
from exnode.node.kernel.directory import RateLimit
from exnode.node.kernel.enrol import update_config_file
from exnode.node.kernel.state import invites


def request(secret: bytes, node: str = "b1", keys: tuple[bytes, bytes] | None = None) -> dict:
    sign_pub, enc_pub = keys or (b"\x01" * 32, b"\x02" * 32)
    req = {"id": node, "sign_pub": sign_pub, "enc_pub": enc_pub, "ts": int(time.time())}
    req["mac"] = idn.enrol_mac(secret, registry.enrol_body(req))
    return req


def test_the_secret_is_gone_once_the_request_is_answered(center):
    eng, ident = center
    secret = registry.invite(eng, "center", "b1", 600, approve=False)
    reply, used = registry.handle_enrol(eng, ident, request(secret))
    assert reply["status"] == "pending" and used == secret
    with eng.connect() as conn:
        assert conn.execute(invites.select()).all() == []
    # the same request again (a replay, or the same token a second time)
    with pytest.raises(IdentityError, match="no valid invitation for 'b1'"):
        registry.handle_enrol(eng, ident, request(secret))


def test_the_answer_names_the_newest_gconf_version(center):
    eng, ident = center
    assert registry.handle_enrol(eng, ident, request(
        registry.invite(eng, "center", "b1", 600, False)))[0]["gconf_floor"] == 0
    _blob, g = registry.build_gconf(eng, ident, 3600, {})
    reply, _ = registry.handle_enrol(eng, ident, request(
        registry.invite(eng, "center", "b2", 600, False), "b2", (b"\x03" * 32, b"\x04" * 32)))
    assert reply["gconf_floor"] == g["version"]


def test_rate_limit_per_id_is_a_few_a_minute_in_bounded_memory():
    rl = RateLimit(per_minute=5, max_keys=100)
    assert [rl.allow("b1", now=0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert rl.allow("b2", now=0.0)  # another id has its own bucket
    assert not rl.allow("b1", now=11.0)  # one attempt back every 12 s
    assert rl.allow("b1", now=13.0) and not rl.allow("b1", now=13.0)
    for i in range(1000):
        rl.allow(f"x{i}", now=20.0)
    assert len(rl) == 100


def bureau_file(tmp_path, extra: str = "") -> object:
    p = tmp_path / "exnode.yaml"
    p.write_text(render_config("bureau", "b1") + extra, encoding="utf-8")
    return p


def test_config_values_are_quoted_by_the_yaml_library_and_comments_kept(tmp_path):
    p = bureau_file(tmp_path)
    before = p.read_text()
    update_config_file(p, {("broker", "host"): "yes", ("broker", "port"): 8883,
                           ("broker", "topic_prefix"): "gov/exn",
                           ("center", "ca_fingerprint"): "0" * 64,
                           ("broker", "username"): "b1",
                           ("broker", "password_file"): "broker.password"})
    text = p.read_text()
    data = yaml.safe_load(text)
    # 'yes' stays a string, a fingerprint of digits stays a string
    assert data["broker"]["host"] == "yes" and data["center"]["ca_fingerprint"] == "0" * 64
    cfg = load_config(p)
    assert (cfg.broker.port, cfg.broker.username, cfg.broker.topic_prefix) == \
        (8883, "b1", "gov/exn")
    # every comment line of the file is still there, and the comment after 'protocol'
    comments = [ln.strip() for ln in before.splitlines() if ln.strip().startswith("#")]
    assert all(c in text for c in comments)
    assert "protocol: auto          # 5, 3.1.1 or auto" in text


def test_a_comment_after_a_changed_value_is_kept(tmp_path):
    p = bureau_file(tmp_path)
    p.write_text(p.read_text().replace("  port: 1883", "  port: 1883   # the broker's"))
    update_config_file(p, {("broker", "port"): 8883})
    assert "  port: 8883   # the broker's" in p.read_text()


def test_a_section_in_flow_style_is_left_alone_with_a_one_line_error(tmp_path):
    p = tmp_path / "exnode.yaml"
    p.write_text("node: {id: b1, role: bureau}\ncenter: {id: center}\n")
    before = p.read_text()
    with pytest.raises(ConfigError) as e:
        update_config_file(p, {("center", "ca_fingerprint"): "a" * 64})
    assert "\n" not in str(e.value) and "set it by hand" in str(e.value)
    assert p.read_text() == before


def test_a_missing_section_is_added(tmp_path):
    p = tmp_path / "exnode.yaml"
    p.write_text("node:\n  id: b1\n  role: bureau\ncenter:\n  # filled in by register\n")
    update_config_file(p, {("center", "ca_fingerprint"): "a" * 64,
                           ("broker", "host"): "mq.example.org"})
    cfg = load_config(p)
    assert cfg.center.ca_fingerprint == "a" * 64 and cfg.broker.host == "mq.example.org"
    assert "# filled in by register" in p.read_text()
