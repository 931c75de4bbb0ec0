"""The node's YAML file: the templates that ``exnode init`` writes validate, and every
bad file is reported as one ``FILE:LINE: what is wrong`` message."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from exnode.node.base.config import Config, load_config, parse_config, render_config
from exnode.node.base.errors import ConfigError

BASE = "# exnode test file\nnode:\n  id: b1\n  role: bureau\n"  # lines 1-4


def exnode(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXNODE_")}
    return subprocess.run([sys.executable, "-m", "exnode.node", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def write(tmp_path: Path, text: str | bytes, name: str = "exnode.yaml") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert "\n" not in msg, f"a config error must be one line: {msg!r}"
    assert ei.value.exit_code == 2
    return msg


def line_of(msg: str, path: Path) -> int:
    m = re.match(rf"^{re.escape(str(path))}:(\d+): \S", msg)
    assert m, f"not 'FILE:LINE: ...': {msg!r}"
    return int(m.group(1))


# --- the templates ---------------------------------------------------------------------

@pytest.mark.parametrize("role", ["center", "bureau"])
def test_rendered_template_validates(tmp_path, role):
    text = render_config(role, "node-1", broker_host="mq.example.org", broker_port=8883,
                         center_id="hub")
    p = write(tmp_path, text)
    cfg = load_config(p)
    assert cfg.node.id == "node-1"
    assert cfg.node.role == role
    assert cfg.broker.host == "mq.example.org"
    assert cfg.broker.port == 8883
    assert cfg.broker.protocol == "auto"
    assert cfg.broker.max_message_bytes == 1_900_000
    assert cfg.delivery.package_ttl_s == 604800
    assert cfg.center_id == ("node-1" if role == "center" else "hub")
    # the template's 'state:' section has only a comment in it: defaults apply
    assert cfg.state.url is None
    assert cfg.source == str(p)
    assert cfg.data_dir == tmp_path.resolve()
    assert cfg.keys_dir == tmp_path.resolve() / "keys"
    assert cfg.socket_path == tmp_path.resolve() / "run" / "exnode.sock"
    assert cfg.state_url == f"sqlite:///{tmp_path.resolve() / 'state.db'}"
    if role == "center":
        assert cfg.gconf.validity_h == 168
        assert "\ncenter:" not in text
    else:
        assert "\ncenter:\n  id: hub\n" in text
        assert cfg.center.id == "hub"
        assert cfg.center.ca_fingerprint is None


def test_parse_config_in_memory_defaults():
    cfg = parse_config("node:\n  id: c0\n  role: center\n")
    assert cfg.source == "<memory>"
    assert cfg.base_dir == Path.cwd()
    assert cfg.broker.port == 1883
    assert cfg.delivery.max_in_flight == 256
    assert cfg.plugins.disable == []
    assert cfg.resources == {}


def test_sections_with_only_comments_take_defaults(tmp_path):
    p = write(tmp_path, BASE + "broker:\n  # host: mq\n  # port: 8883\n"
              "delivery:\n  # retry_initial_s: 9\nlog:\n  level: debug\n")
    cfg = load_config(p)
    assert cfg.broker.host == "127.0.0.1"
    assert cfg.broker.port == 1883
    assert cfg.delivery.retry_initial_s == 2.0
    assert cfg.log.level == "debug"


def test_relative_data_dir_is_relative_to_the_file(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    p = write(sub, "node:\n  id: b1\n  role: bureau\n  data_dir: ../var\n")
    cfg = load_config(p)
    assert cfg.data_dir == (tmp_path / "var").resolve()
    assert cfg.resolve("ca.pem") == (sub / "ca.pem").resolve()


# --- bad files --------------------------------------------------------------------------

BAD = [
    ("unknown key", BASE + "broker:\n  host: mq\n  hots: mq2\n", 7, "broker.hots: unknown setting"),
    ("a list as a key", BASE + "? [a, b]\n: 1\n", 5, "must be plain text"),
    ("a map as a key", BASE + "broker:\n  {host: 1}: mq\n", 6, "must be plain text"),
    ("unknown section", BASE + "\nbrokers:\n  host: mq\n", 6, "brokers: unknown setting"),
    ("unknown nested key", BASE + "broker:\n  tls:\n    ca: ca.pem\n    verify: no\n", 8,
     "broker.tls.verify: unknown setting"),
    ("wrong type", BASE + "broker:\n  host: mq\n  port: many\n", 7, "broker.port:"),
    ("out of range", BASE + "broker:\n  port: 70000\n", 6, "broker.port:"),
    ("section of wrong type", BASE + "delivery: 5\n", 5, "delivery:"),
    ("list item of wrong type", BASE + "plugins:\n  disable:\n    - a\n    - [b]\n", 8,
     "plugins.disable.1:"),
    ("bad node id", "node:\n  role: bureau\n  id: Bureau.One\n", 3, "node.id: "),
    ("bad node id (too long)", "node:\n  id: " + "a" * 64 + "\n  role: bureau\n", 2,
     "node.id: "),
    ("bad role", "node:\n  id: b1\n\n  role: ministry\n", 4, "node.role: "),
    ("missing role", "\nnode:\n  id: b1\n", 2, "node.role: required setting is missing"),
    ("missing node section", "# comment\nbroker:\n  port: 1883\n", 2,
     "node: required setting is missing"),
    ("node section only comments", "log:\n  level: info\nnode:\n  # id: b1\n", 3, "node: "),
    ("invalid YAML", BASE + "broker:\n  host: a: b\n", 6, "invalid YAML"),
    ("unclosed flow list", BASE + "plugins:\n  disable: [a, b\nlog:\n  level: info\n", 7,
     "invalid YAML"),
    ("tab indentation", BASE + "broker:\n\thost: mq\n", 6, "invalid YAML"),
    ("empty file", "", 1, "YAML mapping"),
    ("only comments", "# node:\n#   id: b1\n", 1, "YAML mapping"),
    ("a list, not a mapping", "- node\n- broker\n", 1, "YAML mapping"),
    # 'source' is internal (where the file was loaded from), not a setting of the file
    ("internal field as a key", BASE + "source: /etc/passwd\n", 5, "source: unknown setting"),
]


@pytest.mark.parametrize("text,line,fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_file_names_file_and_line(tmp_path, text, line, fragment):
    p = write(tmp_path, text)
    msg = config_error(p)
    assert line_of(msg, p) == line, msg
    assert fragment in msg


def test_several_problems_are_counted_in_one_line(tmp_path):
    p = write(tmp_path, BASE + "broker:\n  port: x\n  keepalive: 1\n  bogus: 1\n")
    msg = config_error(p)
    assert line_of(msg, p) == 6
    assert "(and 2 more)" in msg


def test_parse_config_uses_the_source_name():
    with pytest.raises(ConfigError) as ei:
        parse_config("node:\n  id: b1\n  role: nobody\n", "/etc/exnode/x.yaml")
    assert str(ei.value).startswith("/etc/exnode/x.yaml:3: node.role: ")


def test_non_utf8_file_names_the_line(tmp_path):
    p = write(tmp_path, (BASE + "broker:\n  host: caf\xe9\n").encode("latin-1"))
    msg = config_error(p)
    assert line_of(msg, p) == 6, msg
    assert "UTF-8" in msg.upper()


def test_missing_file(tmp_path):
    p = tmp_path / "nope" / "exnode.yaml"
    msg = config_error(p)
    # there is no line in a file that does not exist: 'FILE: ...'
    assert msg.startswith(f"{p}: ")
    assert "no such file" in msg
    assert "exnode init" in msg


def test_directory_instead_of_file(tmp_path):
    msg = config_error(tmp_path)
    assert msg.startswith(f"{tmp_path}: ")


# --- the command line ---------------------------------------------------------------------

def test_config_check_bad_file_is_one_line_exit_2(tmp_path):
    p = write(tmp_path, BASE + "broker:\n  port: many\n")
    r = exnode("-c", str(p), "config", "check", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"exnode: error: {p}:6: broker.port: ")
    assert r.stdout == ""


def test_config_check_missing_file_is_one_line_exit_2(tmp_path):
    r = exnode("-c", str(tmp_path / "absent.yaml"), "config", "check", cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no such file" in r.stderr


def test_config_check_good_file(tmp_path):
    p = write(tmp_path, render_config("bureau", "b1"))
    r = exnode("-c", str(p), "config", "check", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["ok"] is True
    assert info["node"] == "b1"
    assert info["role"] == "bureau"
    # no keys yet and not registered: both are warnings, not errors
    assert any("sign.key" in w for w in info["warnings"])
    assert any("register" in w for w in info["warnings"])


def test_config_schema_is_json_with_descriptions(tmp_path):
    r = exnode("config", "schema", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    assert schema == json.loads(json.dumps(Config.model_json_schema()))
    defs = schema["$defs"]
    node = defs["NodeSection"]["properties"]
    assert "lower-case" in node["id"]["description"]
    assert node["role"]["enum"] == ["center", "bureau"]
    assert "chunked" in defs["BrokerSection"]["properties"]["max_message_bytes"]["description"]
    assert schema["required"] == ["node"]
    for model, d in defs.items():
        for field, prop in d["properties"].items():
            assert prop.get("description"), f"{model}.{field} has no description"


def test_config_schema_offers_only_real_settings():
    props = Config.model_json_schema()["properties"]
    assert set(props) == {"node", "broker", "center", "delivery", "state", "control",
                          "gconf", "log", "monitor", "access", "console", "plugins", "crypto",
                          "databases", "resources"}


def test_a_setting_name_with_a_line_break_is_quoted_in_one_line():
    """Found by the config fuzz test: an unknown key "\\n" made a two-line error."""
    import yaml

    text = yaml.safe_dump({"node": {"id": "b1", "role": "bureau"}, "broker": {"\n": None}})
    with pytest.raises(ConfigError) as e:
        parse_config(text, "x.yaml")
    assert "\n" not in str(e.value) and "broker.'\\n': unknown setting" in str(e.value)
