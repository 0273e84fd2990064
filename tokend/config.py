"""Configuration: frozen pydantic models, loaded from TOML plus a few env variables.

Nothing here touches the filesystem except :func:`load` reading the one file, and
nothing resolves ``~`` or creates directories: that happens once, in the daemon.

File lookup: ``--config PATH``, else ``$TOKEND_CONFIG``, else
:func:`tokend.paths.default_config_path` (``~/.config/tokend/config.toml``); a missing
*default* file means "all defaults", a missing *named* file is an error.
``$TOKEND_RUNTIME_DIR`` overrides ``runtime_dir``, ``$TOKEND_TIMEOUT`` ``timeout``;
the default runtime dir is
:func:`tokend.paths.default_runtime_dir`, the same function clients use.

Paths are judged here by their names alone (no filesystem access): a sink path with a
``..`` component, or one naming the runtime dir, the socket or another sink once
normalised, is a configuration error. Whether the directories are safe is checked
where they are used (:mod:`tokend.paths`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from tokend import wire
from tokend.errors import ConfigError
from tokend.paths import (
    default_config_path,
    default_runtime_dir,
    default_state_dir,
    is_within,
    read_regular,
)

__all__ = [
    "CLOUD_PLATFORM",
    "Config",
    "IdTokenConfig",
    "MetadataConfig",
    "OpenAIConfig",
    "ProfileConfig",
    "ProxyConfig",
    "SinkConfig",
    "SinkFormat",
    "SocketConfig",
    "default_config_path",
    "default_runtime_dir",
    "load",
    "resolve_config_path",
]

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
#: The proxy's address and local key, in the runtime dir (``EnvironmentFile=`` syntax).
PROXY_ENV = "proxy.env"
#: Seconds a whole token fetch may take unless ``timeout`` / ``TOKEND_TIMEOUT`` say.
DEFAULT_TIMEOUT = 10.0
SinkFormat = Literal["raw", "json", "env"]


def _octal_mode(value: Any) -> int:
    # "0600" must never be read as decimal 600 (= 0o1130): accept only an octal string.
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError('must be an octal string such as "0600"')
    if not re.fullmatch(r"0?o?[0-7]{3,4}", value):
        raise ValueError(f'must be an octal string such as "0600", got {value!r}')
    mode = int(value.replace("o", ""), 8)
    if mode & ~0o777:
        raise ValueError("must not set setuid, setgid or sticky bits")
    if not mode & 0o400:
        raise ValueError("must let the owner read the file (at least 0400)")
    return mode


Mode = Annotated[int, BeforeValidator(_octal_mode)]


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number of seconds, e.g. 10")
    if not 0 < value <= 120:
        raise ValueError("must be more than 0 and at most 120 seconds")
    return float(value)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class SinkConfig(_Model):
    """One file the token is written to."""

    path: str = Field(min_length=1)  #: relative paths live inside runtime_dir
    format: SinkFormat = "raw"
    mode: Mode = 0o600

    @field_validator("path")
    @classmethod
    def _no_dotdot(cls, v: str) -> str:
        # "../x" would write outside the runtime dir, into a directory tokend never
        # created nor checks as private; an absolute path says where it goes plainly.
        if ".." in PurePosixPath(v).parts:
            raise ValueError(
                f'{v}: ".." is not allowed in a sink path; name a file inside runtime_dir, '
                'or give an absolute path without ".."'
            )
        return v


def _audience(value: Any) -> Any:
    if isinstance(value, str):
        wire.check_audience(value)
    return value


class IdTokenConfig(SinkConfig):
    """A file that holds an ID token for one audience (``[[profiles.NAME.id_tokens]]``),
    kept fresh for as long as tokend runs."""

    #: The service's URL (``https://…``) or client id: the token's ``aud``.
    audience: Annotated[str, BeforeValidator(_audience)]
    format: Literal["raw", "json"] = "raw"  # an ID token has no env rendering


def _max_audiences(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise ValueError("must be a whole number from 1 to 1024, e.g. 16")
    return value


#: Host names that are this machine's loopback, as ``listen`` and ``api_endpoint`` say them.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _origin(v: str) -> str:
    """``api_endpoint``: an origin, ``https://`` anywhere or ``http://`` on loopback."""
    from urllib.parse import urlsplit

    if not isinstance(v, str) or not v:
        return v  # "" is the default; a non-string gets the usual type error
    example = 'e.g. "https://us-central1-aiplatform.googleapis.com"'
    try:
        url = urlsplit(v)
        host = url.hostname or ""
        url.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"must be an origin, {example}") from None
    if (
        url.scheme not in ("http", "https")
        or not host
        or url.username is not None
        or url.path.strip("/")
        or url.query
        or url.fragment
    ):
        raise ValueError(f"must be an origin (scheme, host and port, no path), {example}")
    if url.scheme == "http" and not _is_loopback(host):
        raise ValueError(
            "http:// sends your Google token in clear text: use https://, or http:// "
            "only to 127.0.0.1 or localhost"
        )
    return v.rstrip("/")


class OpenAIConfig(_Model):
    """Where the OpenAI SDK should send requests: Vertex AI's OpenAI-compatible endpoint."""

    project: str = Field(pattern=r"^[a-z][a-z0-9:.\-]{4,62}[a-z0-9]$")
    location: str = Field(pattern=r"^[a-z0-9\-]+$")
    endpoint: str = Field(default="openapi", pattern=r"^[A-Za-z0-9_\-]+$")
    #: Overrides the ``https://{location}-aiplatform.googleapis.com`` origin (Private
    #: Service Connect, tests). OPENAI_BASE_URL and the proxy both follow it.
    api_endpoint: Annotated[str, BeforeValidator(_origin)] = ""

    @property
    def origin(self) -> str:
        return wire.vertex_origin(self.location, self.api_endpoint)

    @property
    def base_url(self) -> str:
        return wire.vertex_base_url(self.project, self.location, self.endpoint, self.api_endpoint)


class ProfileConfig(_Model):
    """One identity tokend keeps a token for."""

    credentials: str = Field(default="adc", min_length=1)  #: "adc", "metadata" or a file path
    scopes: tuple[str, ...] = (CLOUD_PLATFORM,)
    impersonate: str = ""  #: target service account email
    token_uri: str = ""  #: override of the OAuth token endpoint
    iam_endpoint: str = ""  #: override of the IAM Credentials endpoint (impersonation)
    quota_project: str = ""
    openai: OpenAIConfig | None = None
    sinks: tuple[SinkConfig, ...] | None = None  #: None = the default three
    #: Audiences whose ID tokens are written to files (others are minted on request).
    id_tokens: tuple[IdTokenConfig, ...] = ()

    @field_validator("scopes", mode="before")
    @classmethod
    def _scopes_list(cls, v: Any) -> Any:
        if isinstance(v, list):
            return tuple(v)
        return v

    @field_validator("id_tokens", mode="before")
    @classmethod
    def _id_tokens_list(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("id_tokens")
    @classmethod
    def _one_file_set_per_audience(
        cls, v: tuple[IdTokenConfig, ...]
    ) -> tuple[IdTokenConfig, ...]:
        seen: set[str] = set()
        for t in v:
            if t.audience in seen:
                raise ValueError(
                    f"audience {t.audience} is listed twice; give it one entry (one file)"
                )
            seen.add(t.audience)
        return v

    @field_validator("sinks", mode="before")
    @classmethod
    def _sinks_list(cls, v: Any) -> Any:
        if isinstance(v, list):
            return tuple(v)
        return v

    @field_validator("scopes")
    @classmethod
    def _scopes_nonempty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or not all(s.strip() for s in v):
            raise ValueError("must list at least one non-empty scope")
        return v

    @field_validator("impersonate")
    @classmethod
    def _sa_email(cls, v: str) -> str:
        if v and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", v):
            raise ValueError(
                "must be a service account email (name@project.iam.gserviceaccount.com)"
            )
        return v

    @field_validator("token_uri", "iam_endpoint")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not re.match(r"https?://[^/\s]+", v):
            raise ValueError("must be an http(s) URL")
        return v

    def effective_sinks(self, name: str) -> tuple[SinkConfig, ...]:
        """The configured sinks, else the default three (prefixed ``NAME.`` for every
        profile but ``default``, so profiles never share a file)."""
        if self.sinks is not None:
            return self.sinks
        prefix = "" if name == "default" else f"{name}."
        return (
            SinkConfig(path=f"{prefix}token", format="raw"),
            SinkConfig(path=f"{prefix}token.json", format="json"),
            SinkConfig(path=f"{prefix}openai.env", format="env"),
        )

    def files(self, name: str) -> Iterator[tuple[str, SinkConfig]]:
        """Every file the profile writes, with the key that names it: its sinks, then
        its ID token files."""
        for i, sink in enumerate(self.effective_sinks(name)):
            yield f"profiles.{name}.sinks[{i}]", sink
        for i, id_token in enumerate(self.id_tokens):
            yield f"profiles.{name}.id_tokens[{i}]", id_token

    @property
    def base_url(self) -> str:
        return self.openai.base_url if self.openai else ""


def _uids_list(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _uids_range(v: tuple[int, ...]) -> tuple[int, ...]:
    if any(u < 0 for u in v):
        raise ValueError("uids are whole numbers, 0 or more, e.g. [1001]")
    return v


#: ``allow_uids``: other users let in besides the daemon's own (and root).
Uids = Annotated[tuple[int, ...], BeforeValidator(_uids_list), AfterValidator(_uids_range)]


class SocketConfig(_Model):
    path: str = "tokend.sock"  #: "" turns the socket off
    allow_uids: Uids = ()


#: Why each loopback listener refuses other addresses, for its configuration error.
_LISTENERS = {
    "proxy": ("the proxy spends your Google identity", "8789"),
    "metadata": ("the metadata endpoint hands out your Google token", "8790"),
}


def parse_listen(value: str, listener: str = "proxy") -> tuple[str, int]:
    """``host:port`` of a loopback listener (``listener``: ``proxy`` or ``metadata``,
    for the message): ``(address to bind, port)``. ``localhost`` binds 127.0.0.1;
    ``[::1]`` binds ::1; port 0 takes any free port (the files that name the address
    say which).

    Raises:
        ValueError: not ``host:port``, or not a loopback address.
    """
    why, example_port = _LISTENERS[listener]
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(
            f'must be host:port on loopback, e.g. "127.0.0.1:{example_port}", got {value!r}'
        )
    if not _is_loopback(host) or (":" in host and not host.startswith("[")):
        raise ValueError(
            f"{host} is not a loopback address: {why}, so it listens only on 127.0.0.1, "
            '[::1] or localhost (README.md, "Containers")'
        )
    bind = "127.0.0.1" if host.lower() == "localhost" else host.strip("[]")
    return bind, int(port_text)


def _listen_for(listener: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, str) and value:
            parse_listen(value, listener)
        return value

    return check


def _mib(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise ValueError("must be a whole number of MiB from 1 to 1024, e.g. 32")
    return value


def _long_seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise ValueError("must be more than 0 and at most 3600 seconds, e.g. 300")
    return float(value)


#: ``[proxy] models`` when the config names none.
DEFAULT_MODELS = ("google/gemini-2.5-pro", "google/gemini-2.5-flash")


class ProxyConfig(_Model):
    """The local OpenAI-compatible proxy (off unless ``listen`` is set)."""

    #: Loopback ``host:port``; "" = off.
    listen: Annotated[str, BeforeValidator(_listen_for("proxy"))] = ""
    #: Whose token and Vertex endpoint; that profile needs an ``[openai]`` table.
    profile: str = "default"
    #: What ``GET /v1/models`` lists (Vertex's OpenAI endpoint has no such route), with
    #: the aliases. Tools that list models at start (Open WebUI, LibreChat, Continue)
    #: get Gemini's current two by default, not a 404; ``[]`` forwards the request.
    models: tuple[str, ...] = DEFAULT_MODELS
    #: Model names some tools hard-code, and the Vertex model to send instead.
    aliases: dict[str, str] = Field(default_factory=dict)
    #: Request bodies are kept (to replay one after a 401) up to this; larger get 413.
    max_request_mib: Annotated[int, BeforeValidator(_mib)] = 32
    #: A stream whose upstream sends nothing for this long is closed.
    idle_timeout: Annotated[float, BeforeValidator(_long_seconds)] = 300.0
    #: Connecting to the upstream may take this long (then 504).
    connect_timeout: Annotated[float, BeforeValidator(_seconds)] = 10.0
    #: Other uids whose connections the proxy accepts (Linux), besides ours and root's.
    allow_uids: Uids = ()

    @field_validator("models", mode="before")
    @classmethod
    def _models_list(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen(self.listen)


def _project_number(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value and not (value.isdigit() and len(value) <= 20):
        raise ValueError('must be the project number, digits only, e.g. "123456789012"')
    return value


class MetadataConfig(_Model):
    """The GCE-metadata-compatible endpoint (off unless ``listen`` is set)."""

    #: Loopback ``host:port``; "" = off.
    listen: Annotated[str, BeforeValidator(_listen_for("metadata"))] = ""
    #: Whose token (and account, scopes, project) it serves as the VM's service account.
    profile: str = "default"
    #: ``project/project-id``; "" = the profile's ``openai.project``, else its
    #: ``quota_project``, else a 404.
    project_id: str = Field(default="", pattern=r"^([a-z][a-z0-9:.\-]{4,62}[a-z0-9])?$")
    #: ``project/numeric-project-id`` (gcloud takes a metadata server that knows it for
    #: GCE); "" = a 404. A TOML integer is taken too.
    numeric_project_id: Annotated[str, BeforeValidator(_project_number)] = ""
    #: Other uids whose connections it accepts (Linux), besides ours and root's.
    allow_uids: Uids = ()

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen(self.listen, "metadata")


def _default_profiles() -> dict[str, ProfileConfig]:
    return {"default": ProfileConfig()}


class Config(_Model):
    """The whole configuration. ``source`` names where it came from (for messages)."""

    runtime_dir: str = ""  #: "" = tokend.paths.default_runtime_dir()
    #: Seconds a whole token fetch may take (connect, request, answer), however the
    #: endpoint trickles it; past it the fetch is given up and retried with backoff.
    timeout: Annotated[float, BeforeValidator(_seconds)] = DEFAULT_TIMEOUT
    #: Where tokend keeps what must outlive a reboot (the proxy's local keys); "" =
    #: tokend.paths.default_state_dir().
    state_dir: str = ""
    socket: SocketConfig = SocketConfig()
    proxy: ProxyConfig = ProxyConfig()
    metadata: MetadataConfig = MetadataConfig()
    #: ID token audiences asked for over the socket (or the metadata endpoint) that are
    #: kept and refreshed at most, across profiles; the least recently used goes first.
    max_id_token_audiences: Annotated[int, BeforeValidator(_max_audiences)] = 16
    profiles: dict[str, ProfileConfig] = Field(default_factory=_default_profiles)
    source: str = Field(default="<defaults>", exclude=True)

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, v: dict[str, ProfileConfig]) -> dict[str, ProfileConfig]:
        if not v:
            return _default_profiles()
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", name):
                raise ValueError(f"profile name {name!r} may hold only letters, digits, _ and -")
        return v

    # -- resolved paths (pure: no directories are created here) -------------------

    @property
    def runtime_path(self) -> Path:
        if self.runtime_dir:
            return Path(self.runtime_dir).expanduser()
        return default_runtime_dir()

    @property
    def state_path(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        return default_state_dir()

    @property
    def proxy_env_path(self) -> Path | None:
        """``proxy.env`` in the runtime dir, when the proxy is on."""
        return self.runtime_path / PROXY_ENV if self.proxy.enabled else None

    def sink_path(self, sink: SinkConfig) -> Path:
        return self.runtime_path / Path(sink.path).expanduser()

    @property
    def socket_path(self) -> Path | None:
        if not self.socket.path:
            return None
        return self.runtime_path / Path(self.socket.path).expanduser()

    def profile(self, name: str) -> ProfileConfig:
        """Profile ``name`` with a relative ``credentials`` path made absolute against
        the config file's directory (a daemon's working directory means nothing to
        the person who wrote the file)."""
        pc = self.profiles[name]
        if pc.credentials in ("adc", "metadata"):
            return pc
        path = Path(pc.credentials).expanduser()
        if not path.is_absolute() and self.source.startswith("/"):
            path = Path(self.source).parent / path
        return pc.model_copy(update={"credentials": str(path)})

    def validate_sinks(self) -> None:
        """Every sink names a file of its own: not the runtime dir, not the socket, not
        another sink's file or directory, compared after normalisation (``./token`` is
        ``token``, an absolute path into the runtime dir is its relative twin). Two
        sinks would fight over one file, and a sink on the socket's path would replace
        the listening socket with a regular file at the first write."""
        runtime = os.path.abspath(self.runtime_path)
        taken: list[tuple[str, str]] = []  # (normalised path, what it is)
        if self.socket_path is not None:
            taken.append((os.path.abspath(self.socket_path), "the socket (socket.path)"))
        if self.proxy_env_path is not None:
            taken.append((os.path.abspath(self.proxy_env_path), "the proxy's proxy.env"))
        for name, profile in self.profiles.items():
            for where, sink in profile.files(name):
                path = os.path.abspath(self.sink_path(sink))
                if is_within(runtime, path):
                    what = "the runtime dir itself" if path == runtime else "above runtime_dir"
                    raise ConfigError(
                        f"{self.source}: {where}.path: {path} is {what}; "
                        'name a file inside runtime_dir, such as "token"'
                    )
                for other, label in taken:
                    clash = _clash(path, other, label)
                    if clash:
                        raise ConfigError(f"{self.source}: {where}.path: {clash}")
                taken.append((path, where))

    def validate_proxy(self) -> None:
        """The proxy's profile exists and says where Vertex AI is."""
        if not self.proxy.enabled:
            return
        name = self.proxy.profile
        if name not in self.profiles:
            names = ", ".join(sorted(self.profiles))
            raise ConfigError(
                f"{self.source}: proxy.profile: no profile {name!r} (configured: {names})"
            )
        if self.profiles[name].openai is None:
            raise ConfigError(
                f"{self.source}: proxy.profile: profile {name} has no [profiles.{name}.openai] "
                'table; add one with project and location, e.g. project = "my-project", '
                'location = "us-central1"'
            )

    def validate_metadata(self) -> None:
        """The metadata endpoint's profile exists, and it does not claim the proxy's
        address."""
        if not self.metadata.enabled:
            return
        name = self.metadata.profile
        if name not in self.profiles:
            names = ", ".join(sorted(self.profiles))
            raise ConfigError(
                f"{self.source}: metadata.profile: no profile {name!r} (configured: {names})"
            )
        if (
            self.proxy.enabled
            and self.metadata.address == self.proxy.address
            and self.metadata.address[1] != 0
        ):
            raise ConfigError(
                f"{self.source}: metadata.listen: {self.metadata.listen} is proxy.listen too; "
                "give each its own port"
            )

    @property
    def metadata_project_id(self) -> str:
        """What ``project/project-id`` answers ("" = unknown: a 404)."""
        profile = self.profiles.get(self.metadata.profile)
        if self.metadata.project_id or profile is None:
            return self.metadata.project_id
        return (profile.openai.project if profile.openai else "") or profile.quota_project

    def validate_socket(self, env: Mapping[str, str] | None = None) -> None:
        """``socket.allow_uids`` is useful only with a socket others can reach: outside
        the runtime dir (always 0700) and ``$XDG_RUNTIME_DIR`` (0700 on every systemd
        system), which an allowed uid could never enter."""
        if not self.socket.allow_uids:
            return
        env = os.environ if env is None else env
        sock = self.socket_path
        closed = [self.runtime_path]
        if env.get("XDG_RUNTIME_DIR", "").startswith("/"):
            closed.append(Path(env["XDG_RUNTIME_DIR"]))
        if (
            sock is None
            or not Path(self.socket.path).expanduser().is_absolute()
            or any(is_within(sock, d) for d in closed)
        ):
            raise ConfigError(
                f"{self.source}: socket.allow_uids: other users cannot enter runtime_dir "
                "(mode 0700) nor $XDG_RUNTIME_DIR, so they could never reach the socket; "
                "set socket.path to an absolute path outside them, for example "
                f'"/srv/tokend-{_user_name()}/tokend.sock" (README.md, "Socket API")'
            )


def _clash(path: str, other: str, label: str) -> str:
    """Why a sink at ``path`` cannot coexist with ``label`` at ``other`` ("" if it can)."""
    if path == other:
        if label.startswith("profiles."):
            return f"{path} is also written by {label}; give each sink its own file"
        return f"{path} is {label}; give the sink another file name"
    if is_within(path, other) or is_within(other, path):
        return (
            f"{path} and {label} ({other}) would need one of them to be a directory; "
            "give each its own file"
        )
    return ""


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def resolve_config_path(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> tuple[Path, bool]:
    """Which file to read, and whether the user named it (a named file must exist)."""
    env = os.environ if env is None else env
    if path:
        return Path(path).expanduser(), True
    if env.get("TOKEND_CONFIG"):
        return Path(env["TOKEND_CONFIG"]).expanduser(), True
    return default_config_path(), False


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "<top>"


#: What a value of these keys looks like, instead of pydantic's regular expression.
_PATTERN_HELP = {
    "project": "must be a Google Cloud project ID such as my-project-123 (6 to 30 lowercase "
    "letters, digits and hyphens, starting with a letter)",
    "project_id": "must be a Google Cloud project ID such as my-project-123 (6 to 30 "
    "lowercase letters, digits and hyphens, starting with a letter), or empty",
    "location": "must be a Vertex AI location such as us-central1, or global",
    "endpoint": "must be openapi or a Model Garden endpoint ID (letters, digits, _ and -)",
}
#: pydantic's wording of common mistakes, said in TOML's terms.
_PLAIN = {
    "missing": "is missing; add it",
    "string_type": 'must be a string in quotes, e.g. "value"',
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": 'must be a list in square brackets, e.g. ["a", "b"]',
    "tuple_type": 'must be a list in square brackets, e.g. ["a", "b"]',
    "dict_type": 'must be a table: a [section] of its own, or { key = "value" }',
    "model_type": "must be a table: a [section] of its own",
    "model_attributes_type": "must be a table: a [section] of its own",
    "string_too_short": 'must not be empty, e.g. "value"',
    "too_short": "must not be empty",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
}


def _first_error(source: str, err: ValidationError) -> ConfigError:
    e = err.errors(include_url=False, include_input=False)[0]
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    # pydantic names the union/literal member it tried; drop those internal tags.
    loc = tuple(p for p in loc if p not in {"str", "int", "tagged-union"})
    msg = e["msg"]
    if e["type"] == "string_pattern_mismatch":
        msg = _PATTERN_HELP.get(str(loc[-1]), "has characters that are not allowed here")
    elif e["type"] in _PLAIN:
        msg = _PLAIN[e["type"]]
    elif e["type"] == "extra_forbidden":
        msg = "unknown key (see the configuration reference in README.md)"
    elif e["type"] == "literal_error":
        allowed = e.get("ctx", {}).get("expected", "")
        msg = f"must be {allowed.replace(chr(39), '')}"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return ConfigError(f"{source}: {_loc(loc)}: {msg}")


def parse(
    data: Mapping[str, Any], source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate a TOML document (already parsed) into a :class:`Config`."""
    env = os.environ if env is None else env
    data = dict(data)
    if env.get("TOKEND_RUNTIME_DIR"):
        data["runtime_dir"] = env["TOKEND_RUNTIME_DIR"]
    if env.get("TOKEND_STATE_DIR"):
        data["state_dir"] = env["TOKEND_STATE_DIR"]
    if env.get("TOKEND_TIMEOUT"):
        try:
            data["timeout"] = float(env["TOKEND_TIMEOUT"])
        except ValueError:
            raise ConfigError("TOKEND_TIMEOUT: must be a number of seconds, e.g. 10") from None
        source_of_timeout = "TOKEND_TIMEOUT"
    else:
        source_of_timeout = ""
    try:
        cfg = Config.model_validate({**data, "source": source})
    except ValidationError as err:
        first = err.errors()[0]["loc"]
        if source_of_timeout and first == ("timeout",):
            raise ConfigError(
                "TOKEND_TIMEOUT: must be more than 0 and at most 120 seconds"
            ) from None
        raise _first_error(source, err) from None
    cfg.validate_sinks()
    cfg.validate_socket(env)
    cfg.validate_proxy()
    cfg.validate_metadata()
    return cfg


def load(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read and validate the configuration. Raises :class:`ConfigError` (one line)."""
    file, named = resolve_config_path(path, env)
    try:
        text = read_regular(file)  # a FIFO or a device there is refused, not waited on
    except FileNotFoundError:
        if named:
            raise ConfigError(
                f"{file}: no such file; create it or drop --config/TOKEND_CONFIG"
            ) from None
        return parse({}, "<defaults>", env)
    except OSError as err:
        raise ConfigError(f"{file}: cannot read: {err.strerror}") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text; save it as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{file}: invalid TOML: {err}") from None
    return parse(data, str(file), env)
