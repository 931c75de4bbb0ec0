"""Node configuration: the pydantic models below are the YAML schema.

Every field's ``description`` is its reference documentation; ``exnode config schema``
prints them. A bad file is reported as ``FILE:LINE: what is wrong``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from exnode.node.base.errors import ConfigError

NODE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeSection(_Model):
    id: str = Field(description="This node's id: lower-case letters, digits, '-' and '_'.")
    role: Literal["center", "bureau"] = Field(
        description="'center' (信息资源管理中心: CA, registry, relay, shared library) "
        "or 'bureau' (委办局 front-end machine)."
    )
    data_dir: str = Field(".", description="Where keys, state and the socket live, "
                          "relative to this file.")

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not NODE_ID_RE.match(v):
            raise ValueError("node id must match [a-z0-9][a-z0-9_-]* (at most 63 characters)")
        return v


class TLSSection(_Model):
    ca: str = Field(description="CA bundle that signed the broker's certificate.")
    cert: str | None = Field(None, description="Client certificate, if the broker wants one.")
    key: str | None = Field(None, description="Client key for 'cert'.")
    insecure: bool = Field(False, description="Skip host-name verification (never in production).")


class BrokerSection(_Model):
    host: str = Field("127.0.0.1", description="MQTT broker host at the center.")
    port: int = Field(1883, ge=1, le=65535, description="MQTT broker port.")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto", description="MQTT version; 'auto' tries 5 and falls back to 3.1.1.")

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) else v  # `protocol: 5` is a number
    username: str | None = Field(None, description="Broker user name.")
    dynsec: bool = Field(
        False, description="(center) Manage the bureaus' broker accounts in Mosquitto's "
        "dynamic-security plugin: 'nodes invite' creates one (its password travels in the "
        "token), approve gives it the member's topics, reject and revoke delete it and "
        "disconnect it. The center's broker user needs the plugin's admin role.")
    password_file: str | None = Field(None, description="File holding the broker password.")
    tls: TLSSection | None = Field(None, description="TLS settings; omit for plain TCP.")
    topic_prefix: str = Field("exn/v1", pattern=r"^[A-Za-z0-9_\-/]+[A-Za-z0-9_\-]$",
                              description="Every exnode topic starts with this.")
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, description="How long the broker "
                                  "keeps this node's session and queued messages offline.")
    keepalive: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    max_message_bytes: int = Field(
        1_900_000, ge=4096, le=256 * 1024 * 1024,
        description="Largest MQTT message sent; bigger packages are chunked. Keep it below "
        "the broker's limit (Mosquitto 2.1: 2,000,000 bytes).")


class CenterLinkSection(_Model):
    id: str = Field("center", description="The center's node id.")
    ca_fingerprint: str | None = Field(
        None, description="SHA-256 of the center CA certificate (set by 'exnode register').")


class DeliverySection(_Model):
    retry_initial_s: float = Field(2.0, gt=0, description="First republish delay.")
    retry_max_s: float = Field(60.0, gt=0, description="Longest republish delay (backoff cap).")
    package_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="Packages expire after this.")
    max_in_flight: int = Field(256, ge=1, le=100_000,
                               description="Unacknowledged MQTT publishes at once.")
    max_package_bytes: int = Field(256 * 1024 * 1024, ge=1024,
                                   description="Largest package accepted, after reassembly.")
    window_packages: int = Field(1024, ge=1, description="Packages sent but not yet "
                                 "receipted, at most (flow control).")
    window_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Bytes sent but not yet "
                              "receipted, at most (flow control).")
    batch_bytes: int = Field(256 * 1024, ge=1024,
                             description="Small messages are packed into one package up to this.")
    batch_linger_ms: int = Field(20, ge=0, le=10_000,
                                 description="How long a batch waits for more messages.")
    waiting_per_stream: int = Field(1024, ge=1, description="Packages that arrived early "
                                    "(waiting for an earlier sequence) kept per (source, "
                                    "resource), at most; more stay with their sender.")
    waiting_total: int = Field(20_000, ge=1, description="Early packages kept in all, at "
                               "most.")


class StateSection(_Model):
    url: str | None = Field(
        None, description="SQLAlchemy URL of the state DB; default SQLite 'state.db' in "
        "data_dir. PostgreSQL: postgresql+psycopg://user@host/db")


class ControlSection(_Model):
    socket: str = Field("run/exnode.sock", description="Control API Unix socket (mode 0600) "
                        "in a directory of its own (mode 0700), "
                        "relative to data_dir.")


class GconfSection(_Model):
    validity_h: float = Field(168, gt=0, description="Global configuration validity (center).")
    refresh_h: float = Field(24, gt=0, description="Republish interval (center).")


class LogSection(_Model):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    witness_every_s: float = Field(300.0, ge=1, le=86_400, description="(bureau) How often "
                                   "the exchange log's signed head is sent to the center to "
                                   "be witnessed, while the log grows.")


class MonitorSection(_Model):
    health_every_s: float = Field(60.0, ge=1, le=3600, description="How often a node "
                                  "reports the health of its resources to the center, and "
                                  "the center to each bureau (at once on a change).")
    lag_after_s: float = Field(120.0, ge=1, description="A node with changes queued for it "
                               "longer than this is lagging.")
    scan_every_s: float = Field(30.0, gt=0, le=3600, description="How often the monitor "
                                "(全程监控) looks at every tracked item's deadline; an item "
                                "past it raises one alert.")
    receipt_within_s: float = Field(3600.0, gt=0, description="A package still without "
                                    "its receipt this long after it was queued is overdue "
                                    "(an alert per destination and resource).")
    silent_after_s: float = Field(900.0, gt=0, description="(center) A member not heard "
                                  "from for this long (no package, no health report) has "
                                  "stopped reporting: an alert. Keep it above 3 x "
                                  "health_every_s.")
    webhooks: list[WebhookSpec] = Field(default_factory=list, description="Where the "
                                        "built-in webhook plugin POSTs each new alert "
                                        "(JSON, signed with HMAC-SHA256).")


class WebhookSpec(_Model):
    url: str = Field(pattern=r"^https?://", description="http(s) URL to POST alerts to.")
    secret_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Name of the "
                            "environment variable holding the HMAC key (the key itself is "
                            "never in this file nor in the logs).")
    timeout_s: float = Field(10.0, gt=0, le=300, description="Seconds to wait for an "
                             "answer.")
    retries: int = Field(5, ge=0, le=100, description="Attempts after the first one (on "
                         "a 5xx, 429, timeout or connection error), with backoff.")
    backoff_s: float = Field(2.0, gt=0, le=3600, description="First wait before a retry; "
                             "doubled each time, at most 300 s.")
    queue: int = Field(1000, ge=1, le=1_000_000, description="Alerts waiting to be sent "
                       "at most; a new one beyond this is dropped (and logged).")


class ConsoleSection(_Model):
    """The web console (issue 11), served by the daemon over HTTPS."""

    listen: str | None = Field(None, pattern=r"^[A-Za-z0-9.:\[\]-]+:\d{1,5}$",
                               description="host:port the console listens on (HTTPS), e.g. "
                               "127.0.0.1:8443 or 0.0.0.0:8443; unset: no console.")
    cert: str | None = Field(None, description="PEM certificate (chain) for the console, "
                             "relative to data_dir; unset: the one `exnode console cert` "
                             "made (console/cert.pem, ECDSA P-256, self-signed).")
    key: str | None = Field(None, description="PEM private key of 'cert' (mode 0600).")
    session_hours: float = Field(8.0, gt=0, le=24, description="A login lasts at most this "
                                 "long.")
    idle_minutes: float = Field(30.0, gt=0, le=480, description="A session unused this long "
                                "ends.")
    lockout_failures: int = Field(5, ge=3, le=20, description="Failed logins within "
                                  "lockout_window_s that lock an account.")
    lockout_window_s: float = Field(900.0, ge=60, description="Window for counting failed "
                                    "logins.")
    lockout_s: float = Field(900.0, ge=60, description="How long a locked account stays "
                             "locked (a system administrator can unlock it earlier).")


class PluginsSection(_Model):
    disable: list[str] = Field(default_factory=list,
                               description="Entry-point names of plugins not to load.")


DEFAULT_SUITE = "x25519-hkdf-sha256-aes256gcm-ed25519"


class CryptoSection(_Model):
    suites: list[str] = Field(default_factory=lambda: [DEFAULT_SUITE], min_length=1,
                              description="Crypto suites this node accepts packages in (an "
                              "allow-list of registered suite ids); it sends with the first.")


DURATION_RE = r"^\d+(\.\d+)?(ms|s|m|h|d)$"


def parse_duration(text: str) -> float:
    """'500ms', '10s', '5m', '2h', '1d' -> seconds."""
    m = re.match(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$", text.strip())
    if not m:
        raise ValueError(f"'{text}' is not a duration (e.g. 30s, 5m, 2h, 1d)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


class DatabaseSpec(_Model):
    url: str = Field(description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db, "
                     "mysql+pymysql://user@host/db, sqlite:///path.db. Put no password "
                     "here: use password_file.")
    password_file: str | None = Field(None, description="File holding the password.")
    kind: str = Field("sql", description="Adapter that serves this database (a plugin may "
                      "add others through the exnode_adapters hook); 'sql' is SQLAlchemy.")


class ScheduleSpec(_Model):
    every: str | None = Field(None, pattern=DURATION_RE, description="Run every interval, "
                              "e.g. 30s, 5m.")
    cron: str | None = Field(None, description="Cron expression (croniter), e.g. '*/5 * * * *'.")
    continuous: bool = Field(False, description="Run again as soon as a cycle ends (trigger "
                             "capture on PostgreSQL wakes at once on NOTIFY).")

    @model_validator(mode="after")
    def _one(self) -> ScheduleSpec:
        n = sum(x is not None and x is not False for x in (self.every, self.cron,
                                                           self.continuous or None))
        if n > 1:
            raise ValueError("give one of every, cron, continuous")
        if self.cron is not None:
            from croniter import croniter

            if not croniter.is_valid(self.cron):
                raise ValueError(f"'{self.cron}' is not a valid cron expression")
        return self


class CaptureSpec(_Model):
    strategy: Literal["snapshot", "incremental", "trigger"] = Field(
        "snapshot", description="snapshot: full read and hash diff (finds deletes on any "
        "database); incremental: watermark column; trigger: change table filled by triggers "
        "that exnode installs.")
    column: str | None = Field(None, description="incremental: timestamp or version column.")
    schedule: ScheduleSpec = Field(default_factory=lambda: ScheduleSpec(every="60s"),
                                   description="When to capture.")
    chunk_rows: int = Field(5000, ge=1, le=1_000_000, description="Rows per package.")
    zero_every: str | None = Field(
        None, pattern=DURATION_RE, description="How often a cycle that found nothing sends "
        "a zero-update report (零更新上报). Default: a quarter of the resource's freshness, "
        "but at most one a minute unless the freshness needs more (then two per freshness "
        "period); 60s without a freshness.")


class ElementSpec(_Model):
    """A data element (数据项) of a resource, as the catalog describes it."""

    name: str = Field(description="Field name in the table.")
    cn_name: str | None = Field(None, description="Chinese name (中文名称).")
    type: str | None = Field(None, description="Data type (filled in from the table).")
    length: int | None = Field(None, ge=0, description="Length (filled in from the table).")
    description: str | None = Field(None, description="What the field holds.")
    standard: str | None = Field(None, description="Code table or standard the values "
                                 "follow (e.g. GB/T 2260 for region codes).")


class CatalogSpec(_Model):
    """A resource's catalog entry (目录): GB/T 21063.3's core metadata, published by the
    owner to the center and distributed to every node."""

    name: str = Field(description="Resource name (信息资源名称), mandatory.")
    abstract: str = Field(description="Abstract (摘要), mandatory.")
    provider: str | None = Field(None, description="Provider (提供方) as shown to people, "
                                 "e.g. the bureau's name (default: the owner's node id).")
    classification: str = Field(description="Classification (分类), e.g. a theme code.")
    resource_id: str | None = Field(None, max_length=128, description="Resource identifier "
                                    "(信息资源标识符; default: classification/resource id).")
    metadata_id: str | None = Field(None, max_length=128, description="Metadata identifier "
                                    "(元数据标识符; default: made from the resource id).")
    format: str | None = Field("database table", description="Resource format.")
    keywords: list[str] = Field(default_factory=list, description="Keywords (关键字).")
    share: Literal["unconditional", "conditional", "none"] = Field(
        "conditional", description="Share type: unconditional (无条件共享: granted on "
        "request), conditional (有条件共享: reviewed by the center, answered by the "
        "provider) or none (不予共享: cannot be requested).")
    share_condition: str | None = Field(None, description="For conditional sharing: the "
                                        "conditions and the basis.")
    open_type: Literal["open", "conditional", "closed"] = Field(
        "closed", description="Open type (开放属性) to the public.")
    update_frequency: str | None = Field(None, description="Update frequency (更新周期), "
                                         "e.g. daily, real-time.")
    release_date: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$",
                                     description="Release date (发布日期), YYYY-MM-DD.")
    online_address: str | None = Field(None, description="Online address (在线资源链接地址).")
    held_at: Literal["center", "owner"] = Field(
        "center", description="Where the data is answered from: the center's shared "
        "library (center) or the owning bureau, through the center (owner; 适度分布).")
    publish_days: int = Field(0, ge=0, le=60, description="Working days the provider needs "
                              "before the data can be shared (10 when it must first be "
                              "published; 0: it is already shared).")
    elements: list[ElementSpec] = Field(default_factory=list, description="Data elements "
                                        "(数据项); those not written are filled in from the "
                                        "table's reflection.")


class AccessSection(_Model):
    """Access requests and grants (目录授权): time limits in working days (工作日)."""

    review_days: int = Field(2, ge=1, le=60, description="(center) Working days for the "
                             "center's compliance review of a conditional request.")
    answer_days: int = Field(5, ge=1, le=60, description="Working days for the provider's "
                             "answer to a reviewed request.")
    correction_days: int = Field(5, ge=1, le=60, description="Working days for the owner to "
                                 "answer a correction (校核纠错).")
    calendar_file: str | None = Field(None, description="Operator-edited working-day calendar "
                                      "for years the built-in one does not know (see README), "
                                      "relative to this file.")
    timezone: str = Field("Asia/Shanghai", description="Time zone the working days are "
                          "counted in.")
    max_grant_days: int = Field(366, ge=1, le=3660, description="(center) Longest a grant "
                                "may last; a request without --until gets this.")


class ResourceSpec(_Model):
    database: str = Field(description="Name of a connection in 'databases'.")
    table: str | None = Field(None, description="Table the resource maps.")
    query: str | None = Field(None, description="Read-only query the resource maps (instead "
                              "of a table; snapshot capture only).")
    db_schema: str | None = Field(None, alias="schema", description="Database schema of the "
                                  "table.")
    key: list[str] = Field(min_length=1, description="Primary-key fields.")
    fields: list[str] | None = Field(None, description="Fields to exchange (default: all).")
    owner: str | None = Field(None, description="Node that owns the data (谁拥有数据谁更新).")
    owner_column: str | None = Field(None, description="Column naming each row's owner, "
                                     "instead of 'owner'.")
    direction: Literal["upload", "distribute", "both"] = Field(
        "upload", description="upload: bureau to center; distribute: center to subscribers; "
        "both: both ways.")
    capture: CaptureSpec | None = Field(None, description="How changes are found here "
                                        "(omit on a node that only receives).")
    target_table: str | None = Field(None, description="Apply received changes into this "
                                     "table (default: 'table').")
    conflict: Literal["owner-wins", "newer-wins", "center-wins", "manual"] = Field(
        "owner-wins", description="What the center does when changes collide.")
    version_column: str | None = Field(None, description="newer-wins: timestamp or version "
                                       "column that decides.")
    freshness: str | None = Field(None, pattern=DURATION_RE, description="Expected update "
                                  "frequency; older resources are flagged in status.")
    subscribers: list[str] = Field(default_factory=list, description="(center) bureaus that "
                                   "receive this resource's changes.")
    hold_max: int = Field(20_000, ge=1, le=10_000_000, description="(center) change "
                          "packages held for a subscriber that is not a member yet, at most; "
                          "later ones are dropped and shown, and 'exnode sync repair' "
                          "brings its copy back once it is a member.")
    quality: dict[str, Any] | None = Field(
        None, description="Data rule checks (数据规则约束检查): 'clean' steps and 'rules', "
        "checked at the owner before sending and at the center on receipt; failing rows are "
        "quarantined. See README.")
    quality_file: str | None = Field(
        None, description="A YAML file with the same 'clean', 'rules' and 'code_tables' "
        "(instead of 'quality'), relative to this file.")
    catalog: CatalogSpec | None = Field(
        None, description="(owner) The resource's catalog entry (目录), published to the "
        "center and distributed to every node. See README, 'Sharing services'.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _check(self) -> ResourceSpec:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table and query")
        if self.query is not None and self.capture is not None \
                and self.capture.strategy != "snapshot":
            raise ValueError("a query resource can only use snapshot capture")
        if self.capture is not None and self.capture.strategy == "incremental" \
                and not self.capture.column:
            raise ValueError("incremental capture needs capture.column")
        if self.conflict == "newer-wins" and not self.version_column:
            raise ValueError("newer-wins needs version_column")
        if self.quality is not None and self.quality_file is not None:
            raise ValueError("give quality or quality_file, not both")
        return self


class Config(_Model):
    node: NodeSection
    broker: BrokerSection = Field(default_factory=BrokerSection)
    center: CenterLinkSection = Field(default_factory=CenterLinkSection)
    delivery: DeliverySection = Field(default_factory=DeliverySection)
    state: StateSection = Field(default_factory=StateSection)
    control: ControlSection = Field(default_factory=ControlSection)
    gconf: GconfSection = Field(default_factory=GconfSection)
    log: LogSection = Field(default_factory=LogSection)
    monitor: MonitorSection = Field(default_factory=MonitorSection)
    access: AccessSection = Field(default_factory=AccessSection)
    console: ConsoleSection = Field(default_factory=ConsoleSection)
    plugins: PluginsSection = Field(default_factory=PluginsSection)
    crypto: CryptoSection = Field(default_factory=CryptoSection)
    databases: dict[str, DatabaseSpec] = Field(
        default_factory=dict, description="Named database connections (business DB, shared "
        "library 共享库).")
    resources: dict[str, ResourceSpec] = Field(
        default_factory=dict, description="Information resources this node exchanges, by id.")

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # A section whose settings are all commented out parses as null: use defaults.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k == "node"}
        return data

    def cross_check(self) -> list[tuple[tuple, str]]:
        """Problems between sections, as (path, message). Loads ``quality_file``s."""
        out = []
        for rid, r in self.resources.items():
            if r.database not in self.databases:
                out.append((("resources", rid, "database"), f"database '{r.database}' is not "
                            "defined in 'databases'"))
            if r.quality_file is not None:
                p = self.resolve(r.quality_file)
                try:
                    data = yaml.safe_load(p.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
                    out.append((("resources", rid, "quality_file"), f"cannot read rules from "
                                f"{p}: {str(e).splitlines()[0]}"))
                    continue
                if not isinstance(data, dict):
                    out.append((("resources", rid, "quality_file"),
                                f"{p} must be a YAML mapping with 'rules'"))
                    continue
                r.quality = data
        return out

    # Not part of the file: where it was loaded from.
    _source: str = PrivateAttr("<memory>")

    @property
    def source(self) -> str:
        return self._source

    @property
    def base_dir(self) -> Path:
        return Path(self.source).resolve().parent if self.source != "<memory>" else Path.cwd()

    @property
    def data_dir(self) -> Path:
        return (self.base_dir / self.node.data_dir).resolve()

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def socket_path(self) -> Path:
        return self.data_dir / self.control.socket

    @property
    def state_url(self) -> str:
        return self.state.url or f"sqlite:///{self.data_dir / 'state.db'}"

    @property
    def center_id(self) -> str:
        return self.node.id if self.node.role == "center" else self.center.id

    def database_url(self, name: str) -> Any:
        """The SQLAlchemy URL of database ``name``, with its password file read in."""
        from sqlalchemy.engine import make_url

        db = self.databases[name]
        url = make_url(db.url)
        if db.password_file:
            url = url.set(password=self.resolve(db.password_file).read_text().strip())
        return url

    def resolve(self, p: str) -> Path:
        """A path from the file, relative to the file's folder."""
        return (self.base_dir / p).resolve()


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key and sequence item."""


def _load_with_lines(text: str, name: str) -> tuple[Any, dict[tuple, int]]:
    lines: dict[tuple, int] = {}
    loader = _LineLoader(text)
    loader.name = name  # type: ignore[attr-defined]
    try:
        root = loader.get_single_node()
        if root is None:
            return None, lines

        def walk(node: yaml.Node, path: tuple) -> None:
            lines.setdefault(path, node.start_mark.line + 1)
            if isinstance(node, yaml.MappingNode):
                seen: set[Any] = set()
                for k, v in node.value:
                    if not isinstance(k, yaml.ScalarNode):
                        raise ConfigError(f"{name}:{k.start_mark.line + 1}: a setting's "
                                          "name must be plain text, not a list or a map")
                    key = k.value
                    if key in seen:
                        raise ConfigError(f"{name}:{k.start_mark.line + 1}: "
                                          f"'{key}' is given twice")
                    seen.add(key)
                    lines[(*path, key)] = k.start_mark.line + 1
                    walk(v, (*path, key))
            elif isinstance(node, yaml.SequenceNode):
                for i, v in enumerate(node.value):
                    walk(v, (*path, i))

        walk(root, ())
        data = loader.construct_document(root)
    finally:
        loader.dispose()
    return data, lines


def parse_config(text: str, source: str = "<memory>") -> Config:
    """Parse and validate YAML text; raise ConfigError('FILE:LINE: ...') when it is bad."""
    try:
        data, lines = _load_with_lines(text, source)
    except yaml.MarkedYAMLError as e:
        line = (e.problem_mark.line + 1) if e.problem_mark else 1
        raise ConfigError(f"{source}:{line}: invalid YAML: {e.problem}") from None
    except yaml.YAMLError as e:  # e.g. a reader error: a character YAML does not allow
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{source}:1: invalid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the file must be a YAML mapping with a 'node' section")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        line = 1
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        where = ".".join(_key_text(x) for x in loc) or "(top)"
        msg = " ".join(str(err["msg"]).split())
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        elif err["type"] == "missing":
            msg = "required setting is missing"
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise ConfigError(f"{source}:{line}: {where}: {msg}{more}") from None
    cfg._source = source
    for path, msg in cfg.cross_check():
        line = lines.get(path, lines.get(path[:2], 1))
        raise ConfigError(f"{source}:{line}: {'.'.join(map(_key_text, path))}: {msg}")
    return cfg


def _key_text(key: object) -> str:
    """A setting's name for a one-line message: as written, or quoted when it holds a
    line break or another character that would not print (a key nobody meant)."""
    text = str(key)
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def load_config(path: str | Path) -> Config:
    """Load the node's YAML file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file (create one with 'exnode init')") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text (save the file as UTF-8)") from None
    return parse_config(text, str(p))


CONFIG_TEMPLATE = """\
# exnode node configuration. Reference: `exnode config schema`.
node:
  id: {node_id}
  # center: CA, member registry, relay and shared library (共享库).
  # bureau: a bureau's (委办局) front-end machine (前置机).
  role: {role}
  # keys/, state.db and the control socket live here (relative to this file).
  data_dir: .

broker:
  # The MQTT broker at the center. Bureaus only ever connect outbound.
  host: {broker_host}
  port: {broker_port}
  protocol: auto          # 5, 3.1.1 or auto
  # username: {node_id}
  # password_file: broker.password
  # tls:
  #   ca: /etc/exnode/broker-ca.pem
  max_message_bytes: 1900000   # larger packages are chunked
{center_section}
delivery:
  retry_initial_s: 2      # republish until the recipient's signed receipt arrives
  retry_max_s: 60
  package_ttl_s: 604800   # a package expires after a week

state:
  # url: postgresql+psycopg://postgres@127.0.0.1/exnode   # default: SQLite in data_dir

control:
  socket: run/exnode.sock # Unix socket (0600) in its own 0700 folder, used by the CLI

log:
  level: info

console:
  # The web console (控制台) over HTTPS; accounts: exnode console add NAME --role ROLE.
  # listen: 127.0.0.1:8443   # or 0.0.0.0:8443 to serve the LAN; unset: no console
  # cert: console/cert.pem    # your own certificate; `exnode init` made a self-signed one
  # key: console/key.pem
"""


def render_config(role: str, node_id: str, broker_host: str = "127.0.0.1",
                  broker_port: int = 1883, center_id: str = "center") -> str:
    """The commented YAML file that ``exnode init`` writes."""
    if role == "center":
        center = ("\ngconf:\n  validity_h: 168        # signed global configuration lifetime\n"
                  "  refresh_h: 24\n")
    else:
        center = (f"\ncenter:\n  id: {center_id}\n"
                  "  # ca_fingerprint is filled in by `exnode register TOKEN`\n")
    return CONFIG_TEMPLATE.format(node_id=node_id, role=role, broker_host=broker_host,
                                  broker_port=broker_port, center_section=center)
