"""Configuration: one TOML file, overridable by the environment, validated by pydantic.

The key names are a public contract (README, `config/botasync.example.toml`): add
keys freely, rename none. Loading is pure apart from reading the file itself and
the key file; every problem becomes one `ConfigError` line that names the key.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from botasync import envelope
from botasync.errors import ConfigError
from botasync.logging import add_secret

DEFAULT_BASE_URL = "https://api.bota.dev/v1"
MediaType = Literal["audio", "image", "video"]
# the statuses both dialects send (the deployed API adds streaming and integrity_failure);
# a filter accepts any other string too: an API may add statuses before botasync knows them
RECORDING_STATUSES = ("pending", "streaming", "uploaded", "processing", "completed", "failed",
                      "integrity_failure")
API_KEY_ENV = "BOTA_API_KEY"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ApiConfig(_Section):
    """How to reach the Bota API and how hard to use it."""

    base_url: str = DEFAULT_BASE_URL
    api_key: SecretStr = SecretStr("")
    api_key_file: str = ""
    timeout_s: float = Field(30.0, gt=0)
    requests_per_minute: int = Field(90, ge=1)
    max_retries: int = Field(5, ge=0)
    retry_base_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(30.0, gt=0)
    concurrency: int = Field(4, ge=1, le=64)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class SyncConfig(_Section):
    """What a pass walks and how it decides what to fetch."""

    interval_s: float = Field(60, gt=0)
    page_size: int = Field(100, ge=1, le=100)
    detail: Literal["changed", "always", "never"] = "changed"
    reconcile_every_s: float = Field(21600, gt=0)
    reconcile_budget_share: float = Field(0.3, gt=0, le=1)
    device_id: str = ""
    end_user_id: str = ""


class DatabaseConfig(_Section):
    """Where the mirror lives."""

    path: str = "botasync.db"
    # PostgreSQL instead of the file: `postgresql://user@host/db` (a password is better in
    # PGPASSWORD or ~/.pgpass than here; one given here is never shown or logged)
    url: str = ""
    # PostgreSQL only: how long a worker's hold on a Bota project or a handler lasts
    # without renewal (renewed every third of it). It bounds how long a worker that died
    # keeps its work from the others; a short one costs a renewal query more often
    lease_s: float = Field(30.0, gt=0, le=3600)

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql://... URL (or empty: the SQLite file at "
                             "`path`)")
        return value


class EventsConfig(_Section):
    """How the outbox delivers."""

    deliver_backfill: bool = False
    max_attempts: int = Field(10, ge=1)
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(3600.0, gt=0)
    retention_days: int = Field(90, ge=0)  # settled events older than this go; 0 keeps all
    # `status --check`: an event a handler has not taken for this long is a problem; 0: never
    max_undelivered_age_s: float = Field(3600.0, ge=0)


class _Handler(_Section):
    name: str = Field(min_length=1)
    events: list[str] = Field(default_factory=lambda: ["*"])
    projects: list[str] = Field(default_factory=list)  # only these projects' events; []: all
    timeout_s: float = Field(30.0, gt=0)


class CommandHandlerConfig(_Handler):
    """Run a program (argv, no shell) with the event JSON on stdin."""

    type: Literal["command"]
    command: list[str] = Field(min_length=1)
    # botasync's own secrets (BOTA_API_KEY, every secret_env) reach the program only if named
    pass_env: list[str] = Field(default_factory=list)


class WebhookHandlerConfig(_Handler):
    """POST the event JSON to a URL, HMAC-SHA256 signed."""

    type: Literal["webhook"]
    url: str
    secret_env: str = ""
    signature: Literal["bota", "standard", "botasync"] = "bota"  # the scheme: events/signing.py

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


class PythonHandlerConfig(_Handler):
    """Call `module:function` or an entry point of group `botasync.handlers`."""

    type: Literal["python"]
    target: str = Field(min_length=1)


class LogHandlerConfig(_Handler):
    """Write each event to the log."""

    type: Literal["log"]


NATS_SCHEMES = ("nats://", "tls://", "ws://", "wss://")
# a stream name or a subject token: no whitespace, no wildcards, no separators
_NATS_NAME = re.compile(r"[^\s.*>/\\]+")


def redact_userinfo(url: str) -> str:
    """Server URLs with a password or token in them shown as `nats://user:***@host` (logs)."""
    out = []
    for server in url.split(","):
        scheme, sep, rest = server.partition("://")
        authority, slash, path = rest.partition("/")
        if sep and "@" in authority:
            userinfo, host = authority.rsplit("@", 1)
            user, colon, _ = userinfo.partition(":")
            authority = f"{user}:***@{host}" if colon else f"***@{host}"
        out.append(f"{scheme}{sep}{authority}{slash}{path}" if sep else server)
    return ",".join(out)


def redact_database_url(url: str) -> str:
    """A PostgreSQL URL with its password, in the userinfo or a `password=` parameter, shown
    as `***` (`config show`, messages)."""
    out = re.sub(r"^([a-z]+://[^:@/?#]*:)[^@/?#]*@", r"\1***@", url, flags=re.I)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", out, flags=re.I)


class NatsHandlerConfig(_Handler):
    """Publish each event to a NATS JetStream stream; its ack = delivered (events/nats.py)."""

    type: Literal["nats"]
    url: str = "nats://127.0.0.1:4222"  # several servers: comma-separated
    stream: str = "BOTASYNC"
    subject_prefix: str = "botasync"
    create_stream: bool = False
    # credentials, never in the file itself: a token, a user and its password, or a .creds file
    token_env: str = ""
    token_file: str = ""
    user: str = ""
    password_env: str = ""
    password_file: str = ""
    creds_file: str = ""

    @field_validator("url")
    @classmethod
    def _nats_url(cls, v: str) -> str:
        servers = [s.strip() for s in v.split(",")]
        for s in servers:
            if not s.startswith(NATS_SCHEMES) or not s.split("://", 1)[1].rsplit("@", 1)[-1]:
                raise ValueError("must be nats://host:port (or tls://, ws://, wss://), "
                                 "several separated by commas")
        return ",".join(servers)

    @field_validator("stream")
    @classmethod
    def _stream_name(cls, v: str) -> str:
        if not _NATS_NAME.fullmatch(v):
            raise ValueError("a stream name has no spaces, dots, *, >, / or \\")
        return v

    @field_validator("subject_prefix")
    @classmethod
    def _subject_prefix(cls, v: str) -> str:
        if not all(_NATS_NAME.fullmatch(t) for t in v.split(".")):
            raise ValueError("must be subject tokens separated by dots, without *, > or spaces")
        return v

    @model_validator(mode="after")
    def _one_kind_of_credentials(self) -> NatsHandlerConfig:
        if self.token_env and self.token_file:
            raise ValueError("token_env and token_file: give one")
        if self.password_env and self.password_file:
            raise ValueError("password_env and password_file: give one")
        if self.user and not (self.password_env or self.password_file):
            raise ValueError("user needs password_env or password_file")
        if (self.password_env or self.password_file) and not self.user:
            raise ValueError("a password needs user")
        kinds = [k for k, on in (("token", self.token_env or self.token_file),
                                 ("user", self.user), ("creds_file", self.creds_file)) if on]
        if len(kinds) > 1:
            raise ValueError(f"give one kind of credentials, not {' and '.join(kinds)}")
        return self


HandlerConfig = Annotated[
    CommandHandlerConfig | WebhookHandlerConfig | PythonHandlerConfig | LogHandlerConfig
    | NatsHandlerConfig,
    Field(discriminator="type"),
]


class MediaConfig(_Section):
    """Optional mirroring of the media files themselves."""

    download: bool = False
    types: list[MediaType] = Field(default_factory=lambda: list[MediaType](["audio"]))
    files_dir: str = "botasync-files"
    requests_per_minute: int = Field(25, ge=1)
    concurrency: int = Field(2, ge=1, le=16)
    min_free_bytes: int = Field(1_073_741_824, ge=0)


class TranscriptsConfig(_Section):
    """Optional mirroring of transcriptions (and summaries), from their own queue."""

    download: bool = False  # off by default: a backfill spends the project's 10/min for days
    summaries: bool = False
    requests_per_minute: int = Field(10, ge=1)  # Bota allows 10 a minute for these endpoints
    concurrency: int = Field(2, ge=1, le=16)
    # re-list a finished recording's transcriptions this long after they were last fetched:
    # the deployed API says nothing on the recording when a transcription is re-run; 0: never
    refresh_every_s: float = Field(30 * 86400, ge=0)


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets, `[::1]:9464`) as (host, port); ValueError when it is not.

    Port 0 takes any free port (tests). An empty host is refused: say `0.0.0.0` to mean
    every address, so that listening beyond this host is never an accident.
    """
    expected = f"expected host:port, like 127.0.0.1:9464, got {value!r}"
    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not sep or not host or not port.isdigit():
        raise ValueError(expected)
    if ":" in host and not bracketed:
        raise ValueError(f"{expected} (an IPv6 address goes in brackets: [::1]:9464)")
    if any(c.isspace() or c in "[]/@" for c in host):
        raise ValueError(expected)
    if int(port) > 65535:
        raise ValueError(f"port {port} is out of range (0-65535)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything


class MetricsConfig(_Section):
    """Prometheus `/metrics` and the `/livez` `/readyz` probes, served by the daemon."""

    listen: str = ""  # host:port; empty: no listener
    # `/readyz`: how old the newest successful pass may be; 0: `status --check`'s default
    max_age_s: float = Field(0.0, ge=0)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        v = v.strip()
        if v:
            parse_listen(v)
        return v

    def warning(self) -> str | None:
        """One line when the listener is reachable from beyond this host (it has no auth)."""
        if not self.listen:
            return None
        host, _ = parse_listen(self.listen)
        if is_loopback(host):
            return None
        return (f"[metrics] listen: {self.listen} is not a loopback address: /metrics and "
                "/readyz answer anyone who reaches it, without authentication")


class LoggingConfig(_Section):
    """Log level and format (JSON for services, pretty on a terminal)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


DEFAULT_PROJECT = envelope.DEFAULT_PROJECT  # the project of `[api]` alone
SERVICE = ""  # the `state` rows of the service itself, no project's
_PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class ProjectConfig(_Section):
    """One Bota project (`[[projects]]`): a name, and its `[api]` and `[sync]` keys laid
    over those sections (written flat in the entry: `api_key_file`, `interval_s`, ...)."""

    name: str
    api: ApiConfig = Field(default_factory=ApiConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _PROJECT_NAME.fullmatch(v):
            raise ValueError("must be 1-63 of a-z, 0-9, _ and -, starting with a letter or digit")
        return v


class Config(_Section):
    """The whole configuration."""

    api: ApiConfig = Field(default_factory=ApiConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    handlers: list[HandlerConfig] = Field(default_factory=list)
    media: MediaConfig = Field(default_factory=MediaConfig)
    transcripts: TranscriptsConfig = Field(default_factory=TranscriptsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    projects: list[ProjectConfig] = Field(default_factory=list)
    _key_base: Path | None = PrivateAttr(default=None)  # where a relative api_key_file is
    _project: str = PrivateAttr(default=DEFAULT_PROJECT)  # set by `for_project`

    @model_validator(mode="before")
    @classmethod
    def _flat_projects(cls, data: Any) -> Any:
        """`[[projects]]` entries are flat (`name`, `api_key_file`, `interval_s`): split each
        into its `api` and `sync`, laid over the `[api]` and `[sync]` sections."""
        if not isinstance(data, dict) or not data.get("projects"):
            return data
        entries = data["projects"]
        if not isinstance(entries, list):
            raise ConfigError("projects: must be an array of tables ([[projects]])")
        return {**data, "projects": [
            _split_project(i, e, data.get("api") or {}, data.get("sync") or {})
            for i, e in enumerate(entries)]}

    @field_validator("projects")
    @classmethod
    def _unique_projects(cls, v: list[ProjectConfig]) -> list[ProjectConfig]:
        names = [p.name for p in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"project names must be unique, repeated: {', '.join(dup)}")
        keys: dict[tuple[str, str], str] = {}
        for p in v:
            key = (p.api.base_url, p.api.api_key.get_secret_value() or p.api.api_key_file)
            if key[1] and key in keys:
                raise ValueError(
                    f"projects {keys[key]} and {p.name} use the same API key: one Bota project, "
                    "one entry (each key has its own rate limit)")
            keys.setdefault(key, p.name)
        return v

    @model_validator(mode="after")
    def _handler_projects(self) -> Config:
        known = self.project_names()
        for i, h in enumerate(self.handlers):
            unknown = [p for p in h.projects if p not in known]
            if unknown:
                raise ConfigError(
                    f"[[handlers]] #{i + 1} projects: no project {unknown[0]!r} (configured: "
                    f"{', '.join(known)})")
        return self

    @property
    def project(self) -> str:
        """The project this configuration is the view of (`default` for `[api]` alone)."""
        return self._project

    def project_names(self) -> list[str]:
        return [p.name for p in self.projects] or [DEFAULT_PROJECT]

    def for_project(self, name: str) -> Config:
        """This configuration as one project sees it: its `api` and `sync` in place of the
        sections'. `[api]` alone is the project `default`."""
        if not self.projects and name == DEFAULT_PROJECT:
            view = self.model_copy()
        else:
            entry = next((p for p in self.projects if p.name == name), None)
            if entry is None:
                known = ", ".join(self.project_names())
                raise ConfigError(f"no project {name!r} in the configuration (it has: {known})")
            view = self.model_copy(update={"api": entry.api.model_copy(),
                                           "sync": entry.sync.model_copy()})
        view._key_base = self._key_base
        view._project = name
        return view

    def each_project(self) -> list[Config]:
        """The view of every project, in the order configured."""
        return [self.for_project(n) for n in self.project_names()]

    @field_validator("handlers")
    @classmethod
    def _unique_names(cls, v: list[Any]) -> list[Any]:
        names = [h.name for h in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"handler names must be unique, repeated: {', '.join(sorted(dup))}")
        return v

    def api_key(self) -> str:
        """The API key in clear, for the Authorization header only."""
        return self.api.api_key.get_secret_value()

    def resolve_key(self) -> str:
        """The key, read from `api_key_file` now if it was not given directly.

        Only the commands that call the API do this: the others (`status`, queries)
        run on a server where the key is a systemd credential they cannot see.
        """
        _resolve_key_file(self, self._key_base or Path.cwd())
        return self.api_key()

    def secret_env_names(self) -> set[str]:
        """The environment variables holding botasync's own secrets (kept from handlers)."""
        names = {API_KEY_ENV}
        names.update(h.secret_env for h in self.handlers
                     if isinstance(h, WebhookHandlerConfig) and h.secret_env)
        names.update(name for h in self.handlers if isinstance(h, NatsHandlerConfig)
                     for name in (h.token_env, h.password_env) if name)
        return names

    def warnings(self) -> list[str]:
        """What is valid but probably unwanted, one line each (`config check` shows them)."""
        return [w for w in (self.metrics.warning(),) if w]

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data, the key shown as `***`."""
        data = self.model_dump(mode="json")
        for api in [data["api"], *(p["api"] for p in data["projects"])]:
            if api["api_key"]:
                api["api_key"] = "***"
        if data["database"]["url"]:
            data["database"]["url"] = redact_database_url(data["database"]["url"])
        for handler in data["handlers"]:
            if handler["type"] == "nats":
                handler["url"] = redact_userinfo(handler["url"])
        return data


def _split_project(
    i: int, entry: Any, api: Mapping[str, Any], sync: Mapping[str, Any],
) -> dict[str, Any]:
    """One `[[projects]]` entry as `{name, api, sync}`; an unknown key is one line."""
    if not isinstance(entry, dict):
        raise ConfigError(f"[[projects]] #{i + 1}: must be a table")
    out: dict[str, Any] = {"api": dict(api), "sync": dict(sync)}
    for key, value in entry.items():
        if key == "name":
            out["name"] = value
        elif key in ApiConfig.model_fields:
            out["api"][key] = value
        elif key in SyncConfig.model_fields:
            out["sync"][key] = value
        else:
            known = ["name", *ApiConfig.model_fields, *SyncConfig.model_fields]
            raise ConfigError(f"[[projects]] #{i + 1} {key}: unknown key (a project takes a name "
                              f"and the keys of [api] and [sync]){_did_you_mean(key, known)}")
    if "api_key" in entry and "api_key_file" not in entry:
        out["api"].pop("api_key_file", None)  # its own key wins over an inherited key file
    if "api_key_file" in entry and "api_key" not in entry:
        out["api"].pop("api_key", None)
    return out


def _describe(err: ValidationError) -> str:
    """Turn pydantic's report into one line naming the key, like `[api] timeout_s: ...`."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if loc and loc[0] == "projects":
        where = f"[[projects]] #{int(loc[1]) + 1}" if len(loc) > 1 else "[[projects]]"
        key = loc[-1] if len(loc) > 2 else ""
    elif loc and loc[0] == "handlers" and len(loc) > 1:
        where = f"[[handlers]] #{int(loc[1]) + 1}"
        # pydantic puts the union's tag (the handler type) before the field name
        key = ".".join(loc[3:] if len(loc) > 3 else loc[2:3])
    elif len(loc) > 1:
        where, key = f"[{loc[0]}]", ".".join(loc[1:])
    else:
        where, key = (loc[0] if loc else "config"), ""
    msg = first["msg"]
    if first["type"] == "extra_forbidden" and len(loc) == 1:
        return _unknown_section(loc[0], first.get("input"))
    if first["type"] == "extra_forbidden":
        msg = "unknown key" + _did_you_mean(loc[-1], _known_keys(loc))
    elif first["type"] == "union_tag_invalid" or first["type"] == "union_tag_not_found":
        msg = "type must be one of command, webhook, python, log, nats"
    extra = f" ({len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{where} {key}: {msg}{extra}" if key else f"{where}: {msg}{extra}"


def _did_you_mean(word: str, known: list[str], fmt: str = "{}") -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f"; did you mean {fmt.format(close[0])}?" if close else ""


def _known_keys(loc: list[str]) -> list[str]:
    """The keys a section knows, for a suggestion (sections only, not handlers)."""
    field = Config.model_fields.get(loc[0])
    model = field.annotation if field else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _unknown_section(name: str, value: Any) -> str:
    """`unknown section [synk]; did you mean [sync]?` (a top-level key if not a table)."""
    known = list(Config.model_fields)
    if isinstance(value, dict):
        return f"unknown section [{name}]" + _did_you_mean(name, known, "[{}]")
    return f"{name}: unknown key" + _did_you_mean(name, known, "[{}]")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a file") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    """The environment wins over the file for the key, the URL and the database."""
    api = data.setdefault("api", {})
    if not isinstance(api, dict):
        raise ConfigError("[api] must be a table")
    if env.get(API_KEY_ENV):
        api["api_key"] = env[API_KEY_ENV]
    if env.get("BOTA_API_URL"):
        api["base_url"] = env["BOTA_API_URL"]
    for name, key in (("BOTASYNC_DB", "path"), ("BOTASYNC_DATABASE_URL", "url")):
        if env.get(name):
            db = data.setdefault("database", {})
            if not isinstance(db, dict):
                raise ConfigError("[database] must be a table")
            db[key] = env[name]


def _resolve_key_file(cfg: Config, base: Path) -> None:
    """Read `api_key_file` (systemd credentials) when no key was given directly."""
    if cfg.api.api_key.get_secret_value() or not cfg.api.api_key_file:
        return
    raw = cfg.api.api_key_file
    where = f"[[projects]] {cfg.project}" if cfg.projects else "[api]"
    if "%d" in raw:
        creds = os.environ.get("CREDENTIALS_DIRECTORY", "")
        if not creds:
            raise ConfigError(
                f"{where} api_key_file: {raw} needs $CREDENTIALS_DIRECTORY (systemd's "
                "LoadCredential= sets it; elsewhere set it, or BOTA_API_KEY)")
        raw = raw.replace("%d", creds)
    path = Path(raw) if Path(raw).is_absolute() else base / raw
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{where} api_key_file: {path} does not exist") from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as e:
        why = type(e).__name__
        raise ConfigError(f"{where} api_key_file: {path} cannot be read ({why})") from None
    if not key:
        raise ConfigError(f"{where} api_key_file: {path} is empty")
    cfg.api.api_key = SecretStr(key)


def config_path(explicit: str | Path | None, env: Mapping[str, str]) -> Path | None:
    """The file to read: `--config`, else `BOTASYNC_CONFIG`, else none (defaults)."""
    if explicit:
        return Path(explicit)
    if env.get("BOTASYNC_CONFIG"):
        return Path(env["BOTASYNC_CONFIG"])
    return None


def load(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    resolve_key: bool = True,
) -> Config:
    """Read, merge and validate the configuration; raise `ConfigError` with one line.

    `resolve_key=False` leaves `api_key_file` unread (`Config.resolve_key` reads it later):
    for the commands that never call the API.
    """
    env = os.environ if env is None else env
    file = config_path(path, env)
    data: dict[str, Any] = _read_toml(file) if file else {}
    _apply_env(data, env)
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None
    cfg._key_base = file.parent if file else Path.cwd()
    if resolve_key:
        cfg.resolve_key()
    return cfg


def require_key(cfg: Config) -> str:
    """The API key (read from `api_key_file` now), registered for redaction; a missing one
    is a config error. Only the commands that call the API ask for it."""
    key = cfg.resolve_key()
    if not key:
        where = f"[[projects]] {cfg.project}" if cfg.projects else "[api]"
        raise ConfigError(
            f"{where} api_key: no API key (set BOTA_API_KEY, api_key or api_key_file)")
    add_secret(key)
    return key
