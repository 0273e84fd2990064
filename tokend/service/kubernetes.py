"""Kubernetes manifests: tokend as a native sidecar (``tokend deploy kubernetes``).

Like ``tokend install --dry-run`` prints the unit, :func:`render` turns the user's
settings into manifests to read and apply: a ConfigMap with the sidecar's
``config.toml`` (the user's profile, checked by tokend's own loader, with the paths the
pod gives it), and a workload (Deployment, Job or bare Pod) whose pod spec is the part to
merge into one's own:

- tokend is an init container with ``restartPolicy: Always`` (a native sidecar,
  Kubernetes >= 1.29): it starts before the app, runs beside it, and does not keep a Job
  from finishing. Its ``startupProbe`` (``tokend health``: ``/healthz`` on the socket)
  holds the app back until a token exists; its ``readinessProbe`` takes the pod out of
  service while there is none. No liveness probe: Google being unreachable is no reason
  to restart tokend, which keeps serving its last good token meanwhile.
- The runtime dir is ``/run/tokend/private`` on an ``emptyDir`` with ``medium: Memory``
  mounted at ``/run/tokend`` in both containers. The volume's root is a tmpfs root, owned
  by root with mode 1777 (sticky, like ``/tmp``; 3777, group 65532, once kubelet applies
  the pod's ``fsGroup``): tokend's directory checks accept a directory of its own below a
  sticky one, and it creates ``private`` itself, 0700 (clearing the setgid bit it would
  inherit). A disk-backed ``emptyDir`` is 0777 (2777) without the sticky bit, which
  tokend refuses (anyone in the pod could swap the directory), so the medium is not only
  about keeping tokens off disk. The app runs as the same uid (pod-level ``runAsUser``)
  to enter the 0700 directory.
- Credentials: a Secret holding a credentials file, mounted read-only with mode 0440 and
  the pod's ``fsGroup`` (kubelet makes the files root-owned, group ``fsGroup``, behind its
  ``..data`` symlinks, which tokend reads through); or an ``external_account`` (workload
  identity federation, for EKS, AKS, on-prem clusters) rendered into the ConfigMap, with the
  projected service-account token volume it reads its subject token from; or the metadata
  server (GKE with Workload Identity).
- With the proxy, ``OPENAI_BASE_URL`` is ``http://127.0.0.1:PORT/v1`` (the pod shares one
  network namespace) and ``OPENAI_API_KEY`` comes from a Secret whose ``proxy-keys.json``
  the sidecar reads as its state dir: the key never changes with a restart, and both
  containers get it without a shell. :func:`proxy_key_secret` makes that Secret.

The YAML is written by a small emitter (:func:`to_yaml`) for the plain data used here:
maps, lists, strings, integers and booleans, multi-line strings as literal blocks. It
keeps tokend free of a YAML dependency, and a test parses the output with PyYAML and
compares it with the data.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from tokend import __version__
from tokend.errors import ConfigError

__all__ = [
    "CONFIG_DIR",
    "RUNTIME_DIR",
    "UID",
    "VOLUME",
    "Options",
    "proxy_key_secret",
    "render",
    "to_toml",
    "to_yaml",
]

#: The image's user (distroless' ``nonroot`` number): not root, no name needed.
UID = 65532
#: Where the shared emptyDir is mounted in both containers (the image's VOLUME).
VOLUME = "/run/tokend"
#: tokend's runtime dir: a directory it makes 0700 below the volume's sticky root.
RUNTIME_DIR = f"{VOLUME}/private"
#: The ConfigMap's mount: ``config.toml`` (and an external account's ``credentials.json``).
CONFIG_DIR = "/etc/tokend"
#: A credentials Secret's mount.
CREDENTIALS_DIR = "/var/run/secrets/tokend"
#: The projected service-account token (the external account's subject token).
OIDC_DIR = "/var/run/secrets/tokens"
OIDC_FILE = "gcp-token"
#: The state dir: the proxy-key Secret's mount (read-only: the key is not made here).
STATE_DIR = "/var/lib/tokend"
PROXY_PORT = 8789
#: kubelet wants decimal in JSON and YAML; 0o440: owner and group (fsGroup) read.
SECRET_MODE = 0o440
CREDENTIALS_FILE = "credentials.json"
KEYS_FILE = "proxy-keys.json"
STS_URL = "https://sts.googleapis.com/v1/token"

Credentials = Literal["secret", "external-account", "metadata"]
Kind = Literal["deployment", "job", "pod"]


@dataclass(frozen=True, slots=True)
class Options:
    """What ``tokend deploy kubernetes`` was asked for."""

    image: str = f"tokend:{__version__}"
    config: Path | None = None  #: the user's config.toml (None: all defaults)
    profile: str = "default"
    proxy: bool = False
    credentials: Credentials = "secret"
    #: The workload identity provider, ``//iam.googleapis.com/projects/N/locations/
    #: global/workloadIdentityPools/POOL/providers/PROVIDER`` (external-account only).
    audience: str = ""
    #: The projected token's audience; default: the provider's own URL, which is what a
    #: provider allows unless told otherwise.
    token_audience: str = ""
    kind: Kind = "deployment"
    app_image: str = "your-app-image"
    name: str = "tokend"


_AUDIENCE = re.compile(
    r"//iam\.googleapis\.com/projects/[0-9]+/locations/global/"
    r"workloadIdentityPools/[a-z0-9-]+/providers/[a-z0-9-]+"
)


# -- the sidecar's configuration ------------------------------------------------------


def _user_config(opts: Options) -> tuple[dict[str, Any], str]:
    """The user's TOML as a dict, after tokend's own loader accepted it; and its name."""
    from tokend import config as config_mod

    if opts.config is None:
        return {}, "<defaults>"
    # load() checks it as `tokend run` would (one line naming file and key on error).
    config_mod.load(opts.config, {"TOKEND_RUNTIME_DIR": RUNTIME_DIR})
    return tomllib.loads(opts.config.read_text()), str(opts.config)


def sidecar_config(opts: Options) -> dict[str, Any]:
    """The sidecar's config.toml, as data: the user's profile ``opts.profile`` with the
    pod's paths and credentials; checked by tokend's loader before it is returned.

    Raises:
        ConfigError: the user's file is invalid, or cannot work in a pod (what and why).
    """
    data, source = _user_config(opts)
    where = f"{source}: profiles.{opts.profile}"
    profiles = data.get("profiles") or {}
    if opts.profile not in profiles and not (opts.profile == "default" and not profiles):
        names = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(f"{source}: no profile {opts.profile!r} (configured: {names})")
    profile = dict(profiles.get(opts.profile) or {})
    if opts.credentials == "metadata":
        profile["credentials"] = "metadata"
    elif opts.credentials == "external-account":
        profile["credentials"] = f"{CONFIG_DIR}/{CREDENTIALS_FILE}"
    else:
        profile["credentials"] = f"{CREDENTIALS_DIR}/{CREDENTIALS_FILE}"
    for i, sink in enumerate(profile.get("sinks") or ()):
        path = PurePosixPath(str(sink.get("path", "")))
        if path.is_absolute() and not str(path).startswith(RUNTIME_DIR + "/"):
            raise ConfigError(
                f"{where}.sinks[{i}].path: {path} is outside the runtime dir, and the "
                "sidecar's root filesystem is read-only; use a path relative to runtime_dir"
            )
    out: dict[str, Any] = {"runtime_dir": RUNTIME_DIR, "state_dir": STATE_DIR}
    if "timeout" in data:
        out["timeout"] = data["timeout"]
    if opts.proxy:
        proxy = dict(data.get("proxy") or {})
        port = PROXY_PORT
        if proxy.get("listen"):
            port = int(str(proxy["listen"]).rpartition(":")[2])
            if port == 0:
                raise ConfigError(
                    f"{source}: proxy.listen: port 0 (any free port) cannot be named in the "
                    "app's OPENAI_BASE_URL; give a port, e.g. 127.0.0.1:8789"
                )
        proxy.pop("allow_uids", None)  # the app runs as the sidecar's uid
        proxy.update(listen=f"127.0.0.1:{port}", profile=opts.profile)
        if not profile.get("openai"):
            raise ConfigError(
                f"{where}.openai: --proxy needs the profile's [profiles.{opts.profile}.openai] "
                'table (project = "my-project", location = "us-central1") in --config'
            )
        out["proxy"] = proxy
    out["profiles"] = {opts.profile: profile}
    from tokend import config as config_mod

    # The socket stays in the runtime dir (default path), which the app container mounts.
    config_mod.parse(out, f"ConfigMap {opts.name}-config", {})
    return out


def external_account(opts: Options) -> dict[str, Any]:
    """The ``external_account`` credentials for workload identity federation: Google's
    STS exchanges the pod's projected service-account token (an OIDC token the cluster
    signs) for a Google access token. What ``gcloud iam workload-identity-pools
    create-cred-config --credential-source-file=…`` writes, for this pod's paths."""
    return {
        "type": "external_account",
        "audience": opts.audience,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": STS_URL,
        "credential_source": {"file": f"{OIDC_DIR}/{OIDC_FILE}"},
        "universe_domain": "googleapis.com",
    }


def _openai_base_url(cfg: Mapping[str, Any], profile: str) -> str:
    from tokend import config as config_mod

    return config_mod.parse(cfg, "<pod>", {}).profiles[profile].base_url


# -- the manifests ------------------------------------------------------------------


def _probe(period: int, failures: int) -> dict[str, Any]:
    return {
        "exec": {"command": ["tokend", "health"]},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _sidecar(opts: Options) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [
        {"name": f"{opts.name}-run", "mountPath": VOLUME},
        {"name": f"{opts.name}-config", "mountPath": CONFIG_DIR, "readOnly": True},
    ]
    if opts.credentials == "secret":
        mounts.append(
            {"name": f"{opts.name}-credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True}
        )
    elif opts.credentials == "external-account":
        mounts.append({"name": f"{opts.name}-oidc-token", "mountPath": OIDC_DIR, "readOnly": True})
    if opts.proxy:
        mounts.append({"name": f"{opts.name}-proxy-key", "mountPath": STATE_DIR, "readOnly": True})
    return {
        "name": opts.name,
        "image": opts.image,
        # A native sidecar: started before the app, kept running beside it, stopped
        # after it; a Job still completes when its app container exits.
        "restartPolicy": "Always",
        "env": [
            {"name": "TOKEND_CONFIG", "value": f"{CONFIG_DIR}/config.toml"},
            {"name": "TOKEND_RUNTIME_DIR", "value": RUNTIME_DIR},
            {"name": "TOKEND_STATE_DIR", "value": STATE_DIR},
        ],
        # The app starts once this succeeds: every profile holds a token (2 minutes).
        "startupProbe": _probe(1, 120),
        "readinessProbe": _probe(10, 3),
        "resources": {
            "requests": {"cpu": "10m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }


def _app(opts: Options, cfg: Mapping[str, Any]) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        # tokend.client, `tokend token` and tokend-env.sh find the files here.
        {"name": "TOKEND_RUNTIME_DIR", "value": RUNTIME_DIR},
    ]
    if opts.proxy:
        port = int(cfg["proxy"]["listen"].rpartition(":")[2])
        env += [
            {"name": "OPENAI_BASE_URL", "value": f"http://127.0.0.1:{port}/v1"},
            {
                "name": "OPENAI_API_KEY",
                "valueFrom": {
                    "secretKeyRef": {"name": f"{opts.name}-proxy-key", "key": "OPENAI_API_KEY"}
                },
            },
        ]
    else:
        base_url = _openai_base_url(cfg, opts.profile)
        if base_url:  # the key is the token: read it per request (tokend.token)
            env.append({"name": "OPENAI_BASE_URL", "value": base_url})
    return {
        "name": "app",
        "image": opts.app_image,
        "env": env,
        "volumeMounts": [{"name": f"{opts.name}-run", "mountPath": VOLUME, "readOnly": True}],
    }


def _volumes(opts: Options) -> list[dict[str, Any]]:
    items = [{"key": "config.toml", "path": "config.toml"}]
    if opts.credentials == "external-account":
        items.append({"key": CREDENTIALS_FILE, "path": CREDENTIALS_FILE})
    volumes: list[dict[str, Any]] = [
        # tmpfs: tokens never reach the node's disk, and its root is sticky (1777).
        {"name": f"{opts.name}-run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {
            "name": f"{opts.name}-config",
            "configMap": {"name": f"{opts.name}-config", "items": items},
        },
    ]
    if opts.credentials == "secret":
        volumes.append(
            {
                "name": f"{opts.name}-credentials",
                "secret": {
                    "secretName": f"{opts.name}-credentials",
                    "defaultMode": SECRET_MODE,
                    "items": [{"key": CREDENTIALS_FILE, "path": CREDENTIALS_FILE}],
                },
            }
        )
    elif opts.credentials == "external-account":
        volumes.append(
            {
                "name": f"{opts.name}-oidc-token",
                "projected": {
                    "defaultMode": SECRET_MODE,
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": token_audience(opts),
                                "expirationSeconds": 3600,
                                "path": OIDC_FILE,
                            }
                        }
                    ],
                },
            }
        )
    if opts.proxy:
        volumes.append(
            {
                "name": f"{opts.name}-proxy-key",
                "secret": {
                    "secretName": f"{opts.name}-proxy-key",
                    "defaultMode": SECRET_MODE,
                    "items": [{"key": KEYS_FILE, "path": KEYS_FILE}],
                },
            }
        )
    return volumes


def token_audience(opts: Options) -> str:
    """The projected token's ``aud``: the provider's default allowed audience."""
    return opts.token_audience or "https:" + opts.audience


def pod_spec(opts: Options, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The pod spec to merge into one's own: the sidecar, the app's env and mounts, the
    volumes, and pod-level security (every container runs as the image's uid)."""
    spec: dict[str, Any] = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            # Secret files become group-readable by this gid (mode 0440).
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [_sidecar(opts)],
        "containers": [_app(opts, cfg)],
        "volumes": _volumes(opts),
    }
    if opts.kind == "job":
        spec = {"restartPolicy": "Never", **spec}
    return spec


def _workload(opts: Options, spec: dict[str, Any]) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "app"}
    if opts.kind == "pod":
        metadata = {"name": "app", "labels": labels}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    template = {"metadata": {"labels": labels}, "spec": spec}
    if opts.kind == "job":
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "app"},
            "spec": {"backoffLimit": 2, "template": template},
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app", "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template},
    }


def render(opts: Options) -> tuple[list[str], list[dict[str, Any]]]:
    """The manifests for ``opts``: (header comment lines, documents).

    Raises:
        ConfigError: the options or the user's config cannot make a working pod.
    """
    if opts.credentials == "external-account" and not _AUDIENCE.fullmatch(opts.audience):
        raise ConfigError(
            "--audience: the workload identity provider, "
            "//iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/"
            "POOL/providers/PROVIDER (needed with --credentials external-account)"
        )
    if opts.credentials != "external-account" and (opts.audience or opts.token_audience):
        raise ConfigError("--audience applies only to --credentials external-account")
    cfg = sidecar_config(opts)
    data = {"config.toml": to_toml(cfg)}
    if opts.credentials == "external-account":
        data[CREDENTIALS_FILE] = json.dumps(external_account(opts), indent=2) + "\n"
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{opts.name}-config"},
        "data": data,
    }
    docs = [config_map, _workload(opts, pod_spec(opts, cfg))]
    return _header(opts), docs


def _header(opts: Options) -> list[str]:
    n = opts.name
    lines = [
        f"tokend {__version__}: tokend as a native sidecar (Kubernetes >= 1.29).",
        f"The pod spec under the {opts.kind.capitalize()} is the part to merge into yours.",
        f"Every container runs as uid {UID} (pod securityContext): the app reads tokend's",
        f"files in {RUNTIME_DIR} (0700) as that uid; set TOKEND_RUNTIME_DIR as below.",
    ]
    if opts.credentials == "secret":
        lines += [
            "Credentials (a service-account key or an authorized_user file), once:",
            f"  kubectl create secret generic {n}-credentials "
            f"--from-file={CREDENTIALS_FILE}=KEY.json",
        ]
    elif opts.credentials == "external-account":
        lines += [
            "Credentials: workload identity federation; the pod's service account token",
            f"(audience {token_audience(opts)}) is exchanged at Google's STS.",
            "Grant the pod's Kubernetes service account access in Google Cloud (the principal",
            "principal://iam.googleapis.com/.../subject/system:serviceaccount:NAMESPACE:SA).",
        ]
    else:
        lines += ["Credentials: the metadata server (GKE Workload Identity)."]
    if opts.proxy:
        lines += [
            "The proxy's key, once (a new random key; do not commit it):",
            "  tokend deploy kubernetes --proxy-key-secret | kubectl apply -f -",
        ]
    return lines


def proxy_key_secret(name: str = "tokend") -> dict[str, Any]:
    """A Secret with a new local proxy key, in both forms: ``proxy-keys.json`` (the
    sidecar's state dir) and ``OPENAI_API_KEY`` (the app's env)."""
    from tokend import proxykeys

    ring = proxykeys.KeyRing().with_key(proxykeys.DEFAULT)
    key = ring.get(proxykeys.DEFAULT)
    assert key is not None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-proxy-key"},
        "type": "Opaque",
        "stringData": {KEYS_FILE: ring.dumps().decode(), "OPENAI_API_KEY": key.value},
    }


# -- emitters -----------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Plain YAML scalars that stay strings in YAML 1.1 and 1.2 (no bools, numbers, nulls).
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
_NOT_PLAIN = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _quoted(text: str) -> str:
    """A double-quoted string that TOML and YAML both read as ``text``: printable ASCII
    as is, everything else as ``\\uXXXX`` / ``\\UXXXXXXXX`` (the escapes both share;
    YAML would fold a raw U+2028 and TOML refuses raw control characters)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _quoted(key)


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping) or _is_table_list(value)


def to_toml(data: Mapping[str, Any], _prefix: str = "") -> str:
    """TOML for parsed-TOML data: values first, then tables and arrays of tables."""
    out: list[str] = []
    tables: list[tuple[str, Any]] = []
    for key, value in data.items():
        if _is_table(value):
            tables.append((key, value))
        else:
            out.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables:
        name = f"{_prefix}{_toml_key(key)}"
        if isinstance(value, Mapping):
            plain = [v for v in value.values() if not _is_table(v)]
            if plain or not value:  # a table of tables needs no header of its own
                out.append(f"\n[{name}]")
            out.append(to_toml(value, name + ".").rstrip("\n"))
        else:
            for item in value:
                out.append(f"\n[[{name}]]")
                out.append(to_toml(item, name + ".").rstrip("\n"))
    text = "\n".join(line for line in out if line)
    return (text if _prefix else text.lstrip("\n")) + "\n"


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise TypeError(f"no YAML form for {type(value).__name__}")
    if _PLAIN.fullmatch(value) and value.lower() not in _NOT_PLAIN:
        return value
    return _quoted(value)


def _yaml_lines(value: Any, indent: int) -> list[str]:
    """``value`` (a map or a list) as block YAML lines at ``indent`` spaces."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            lines += _yaml_entry(f"{pad}{_yaml_scalar(str(key))}:", item, indent)
    else:
        for item in value:
            sub = _yaml_entry(f"{pad}-", item, indent + 2, in_list=True)
            lines += sub
    return lines


def _yaml_entry(lead: str, item: Any, indent: int, *, in_list: bool = False) -> list[str]:
    child = indent if in_list else indent + 2
    if isinstance(item, Mapping | list) and not item:
        return [f"{lead} {'{}' if isinstance(item, Mapping) else '[]'}"]
    if isinstance(item, Mapping) and in_list:
        inner = _yaml_lines(item, child)
        return [f"{lead} {inner[0].lstrip()}", *inner[1:]]
    if isinstance(item, Mapping | list):
        return [lead, *_yaml_lines(item, child)]
    if isinstance(item, str) and "\n" in item:
        return _yaml_block(lead, item, child)
    return [f"{lead} {_yaml_scalar(item)}"]


def _yaml_block(lead: str, text: str, indent: int) -> list[str]:
    """A literal block scalar (``|``), for config files; chomping keeps ``text`` exact."""
    body = text.rstrip("\n")
    trailing = len(text) - len(body)
    lines = body.split("\n")
    if (
        not body
        or not all(0x20 <= ord(c) < 0x7F for c in body.replace("\n", ""))
        or body[0] == " "
        or trailing > 1
        or any(line != line.rstrip() for line in lines)
    ):
        return [f"{lead} {_quoted(text)}"]  # the quoted form is exact for anything else
    chomp = "" if trailing == 1 else "-"
    pad = " " * indent
    return [f"{lead} |{chomp}", *(f"{pad}{line}" if line else "" for line in lines)]


def to_yaml(docs: Sequence[Mapping[str, Any]], header: Sequence[str] = ()) -> str:
    """The documents as one YAML stream, ``header`` as comments at the top."""
    parts = ["".join(f"# {line}".rstrip() + "\n" for line in header)]
    for doc in docs:
        parts.append("---\n" + "\n".join(_yaml_lines(doc, 0)) + "\n")
    return "".join(parts)
