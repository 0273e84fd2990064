"""The ``tokend`` command: argparse, one thin function per subcommand.

Client-side subcommands must start fast, so this module imports nothing heavy at the
top: the daemon's dependencies (pydantic, google-auth, watchdog, aiohttp) are imported
inside the functions that need them.
"""

from __future__ import annotations

import os
import sys
import time

from tokend import __version__
from tokend.errors import ConfigError, TokendError, UnsafePathError

# Imports are most of what `tokend token` costs (scripts/bench.py): logging (with
# traceback, threading) and typing are loaded only by the commands that need them; the
# annotations that name them are never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Any

__all__ = ["EXIT_CONFIG", "EXIT_CREDENTIALS", "EXIT_OK", "EXIT_UNAVAILABLE", "main"]

EXIT_OK = 0
EXIT_UNAVAILABLE = 1  #: no token could be had / generic failure
EXIT_CONFIG = 2  #: invalid configuration or unsafe paths (also argparse usage errors)
EXIT_CREDENTIALS = 3  #: credentials missing/revoked or the refresh failed

# -- subcommands -----------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from tokend import config as config_mod
    from tokend.daemon import Daemon, harden_process, run_once
    from tokend.logs import setup_logging

    harden_process()
    setup_logging(args.verbose)
    cfg_path, _named = config_mod.resolve_config_path(args.config)
    try:
        cfg = config_mod.load(args.config)
        if args.once:
            return run_once(cfg)
        daemon = Daemon(cfg, cfg_path)
        return asyncio.run(daemon.run())
    except (ConfigError, UnsafePathError) as err:
        logging.getLogger("tokend").error("%s", err)
        return EXIT_CONFIG


def _emit_json(data: object) -> None:
    """The one JSON emitter: every ``--format json`` / ``--json`` output goes through it."""
    import json

    print(json.dumps(data, indent=2, sort_keys=False))


def cmd_token(args: argparse.Namespace) -> int:
    from tokend import client, wire

    # Tools that run `tokend token` as their key helper keep its answer for minutes.
    info = client.token_info(args.profile, args.min_valid, default_min_valid=wire.HELPER_MIN_VALID)
    if args.format == "json":
        _emit_json(info.as_dict())
    elif args.format == "header":
        print(f"Authorization: Bearer {info.value}")
    else:
        print(info.value)
    return EXIT_OK


def cmd_id_token(args: argparse.Namespace) -> int:
    """``tokend id-token --audience URL``: an ID token from the daemon (minted on the
    first request for the audience), for ``curl -H "Authorization: Bearer …"``."""
    from tokend import client

    try:
        obj = client.id_token_object(args.audience, args.profile, args.min_valid)
    except ValueError as err:
        print(f"{err}", file=sys.stderr)
        return EXIT_CONFIG
    if args.format == "json":
        _emit_json(obj)
    elif args.format == "header":
        print(f"Authorization: Bearer {obj['id_token']}")
    else:
        print(obj["id_token"])
    return EXIT_OK


def _token_env(profile: str, min_valid: float | None) -> dict[str, str]:
    """OPENAI_API_KEY, OPENAI_BASE_URL (when the profile names one), TOKEND_EXPIRES_AT."""
    from tokend import client

    info = client.token_info(profile, min_valid)
    env = {"OPENAI_API_KEY": info.value}
    base_url = client.openai_base_url(profile)
    if base_url:
        env["OPENAI_BASE_URL"] = base_url
    # Epoch seconds, so a shell can compare it with `date +%s`.
    env["TOKEND_EXPIRES_AT"] = str(int(info.expires_at))
    return env


def _fish_quote(value: str) -> str:
    # Inside fish single quotes only \\ and \' are special.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _dotenv_value(value: str) -> str:
    # Tokens and URLs need no quotes; anything else gets double quotes that python-dotenv,
    # docker compose and `set -a; . file` read the same way.
    if all(c.isalnum() or c in "._~:/@%+=,-" for c in value):
        return value
    escaped = "".join("\\" + c if c in '\\"$`' else c for c in value)
    return f'"{escaped}"'


def _proxy_env() -> dict[str, str]:
    from tokend import client

    return client.proxy_env()


def cmd_env(args: argparse.Namespace) -> int:
    import shlex

    try:
        env = _proxy_env() if args.proxy else _token_env(args.profile, args.min_valid)
    except TokendError:
        if args.format in ("sh", "fish") and not sys.stdout.isatty():
            # `eval "$(tokend env)"` of nothing succeeds, and a `set -e` script would go
            # on without a key: give the eval a command that fails (the reason is on
            # stderr).
            print("false")
        raise
    if args.format == "json":
        _emit_json(env)
    elif args.format == "fish":
        for key, value in env.items():
            print(f"set -gx {key} {_fish_quote(value)};")
    elif args.format == "dotenv":
        for key, value in env.items():
            print(f"{key}={_dotenv_value(value)}")
    else:
        for key, value in env.items():
            print(f"export {key}={shlex.quote(value)}")
    return EXIT_OK


def cmd_exec(args: argparse.Namespace) -> int:
    from tokend.supervise import run_child

    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("tokend: exec: no command given (tokend exec -- CMD ARGS...)", file=sys.stderr)
        return EXIT_CONFIG
    if args.proxy:  # the local key never expires: nothing to warn about
        return run_child(argv, {**os.environ, **_proxy_env()}, expires_at=None)
    env = {**os.environ, **_token_env(args.profile, args.min_valid)}
    return run_child(argv, env, expires_at=int(env["TOKEND_EXPIRES_AT"]))


def _ago(iso: str | None, now: float, *, future: bool) -> str:
    if not iso:
        return "-"
    from tokend.timefmt import format_duration, parse_time

    delta = int(parse_time(iso) - now) if future else int(now - parse_time(iso))
    if delta < 0:
        return "now" if future else "-"
    text = format_duration(delta)
    return f"in {text}" if future else f"{text} ago"


def _id_token_rows(status: dict[str, Any], now: float) -> list[tuple[str, str, str, str, str, str]]:
    """``tokend status`` rows for the ID tokens the daemon caches (never a token)."""
    from tokend.timefmt import format_duration

    rows = []
    for t in status.get("id_tokens") or []:
        expires_in = t.get("expires_in")
        rows.append(
            (
                f"{t.get('profile')} (ID token for {t.get('audience')})",
                str(t.get("account") or "-"),
                str(t.get("state") or "?"),
                "-" if expires_in is None else format_duration(int(expires_in)),
                _ago(t.get("next_refresh"), now, future=True),
                str(t.get("last_error") or "-").replace("\n", " "),
            )
        )
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from tokend import client
    from tokend.timefmt import format_duration

    status = client.daemon_status()
    healthy = bool(status.get("healthy"))
    if args.json:
        _emit_json(status)
        return EXIT_OK if healthy else EXIT_UNAVAILABLE
    now = time.time()
    rows = [("PROFILE", "ACCOUNT", "STATE", "EXPIRES IN", "NEXT REFRESH", "LAST ERROR")]
    for name, p in (status.get("profiles") or {}).items():
        expires_in = p.get("expires_in")
        rows.append(
            (
                name,
                p.get("account") or "-",
                p.get("state") or "?",
                "-" if expires_in is None else format_duration(int(expires_in)),
                _ago(p.get("next_refresh"), now, future=True),
                (p.get("last_error") or "-").replace("\n", " "),
            )
        )
    rows.extend(_id_token_rows(status, now))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    if status.get("proxy"):
        print(f"local proxy: {status['proxy']} (`tokend env --proxy` for its key)")
    if status.get("metadata"):
        host = status["metadata"]
        print(f"metadata endpoint: http://{host} (GCE_METADATA_HOST={host})")
    return EXIT_OK if healthy else EXIT_UNAVAILABLE


def _service_backend(args: argparse.Namespace) -> Any:
    """The installer module: --systemd / --launchd, else the platform's own."""
    manager = args.manager or ("launchd" if sys.platform == "darwin" else "systemd")
    if manager == "launchd":
        from tokend.service import launchd

        return launchd
    from tokend.service import systemd

    return systemd


def cmd_install(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tokend.service import ServiceError, tokend_command

    config = None
    if args.config:
        config = Path(args.config).expanduser().absolute()
        if not config.is_file():
            print(f"tokend: install: {config}: no such file", file=sys.stderr)
            return EXIT_CONFIG
    try:
        lines = _service_backend(args).install(tokend_command(), config, dry_run=args.dry_run)
    except ServiceError as err:
        print(f"tokend: install: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print("\n".join(lines))
    return EXIT_OK


def cmd_uninstall(args: argparse.Namespace) -> int:
    from tokend.service import ServiceError

    try:
        lines = _service_backend(args).uninstall(dry_run=args.dry_run)
    except ServiceError as err:
        print(f"tokend: uninstall: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print("\n".join(lines))
    return EXIT_OK


def cmd_proxy_key(args: argparse.Namespace) -> int:
    """``tokend proxy-key rotate|add|list|revoke``: edit the keys file; a running daemon
    picks the change up at once (it watches the file)."""
    from pathlib import Path

    from tokend import client, proxykeys
    from tokend import config as config_mod

    try:
        state = config_mod.load(args.config).state_path
        try:  # the keys a running daemon reads (its unit may set TOKEND_STATE_DIR)
            running = client.daemon_status(timeout=2.0, config=args.config).get("state_dir")
        except client.TokenUnavailable:
            running = None
        if isinstance(running, str) and running.startswith("/"):
            state = Path(running)
        ring = proxykeys.load(state) or proxykeys.KeyRing()
    except (ConfigError, UnsafePathError) as err:
        print(f"tokend: proxy-key: {err}", file=sys.stderr)
        return EXIT_CONFIG
    path = proxykeys.keys_path(state)
    if args.action == "list":
        for key in ring.keys:
            print(f"{key.name}\t{key.created or '-'}")
        return EXIT_OK
    name = args.name or proxykeys.DEFAULT
    if not proxykeys.valid_name(name):
        print(f"tokend: proxy-key: {name!r}: use letters, digits, . _ and -", file=sys.stderr)
        return EXIT_CONFIG
    if args.action == "revoke":
        if name == proxykeys.DEFAULT:
            print(
                "tokend: proxy-key: the default key is the one proxy.env holds; "
                "replace it with `tokend proxy-key rotate`",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        if ring.get(name) is None:
            print(f"tokend: proxy-key: no key named {name} in {path}", file=sys.stderr)
            return EXIT_CONFIG
        ring = ring.without(name)
    elif args.action == "add" and ring.get(name) is not None:
        print(
            f"tokend: proxy-key: {name} exists; `tokend proxy-key rotate {name}` replaces it",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    else:  # add, rotate
        ring = ring.with_key(name)
    try:
        proxykeys.save(state, ring)
    except OSError as err:
        print(f"tokend: proxy-key: cannot write {path}: {err.strerror or err}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(err, UnsafePathError) else EXIT_UNAVAILABLE
    if args.action == "revoke":
        print(f"revoked {name}", file=sys.stderr)
    elif name == proxykeys.DEFAULT:
        print("new default key: proxy.env has it (`tokend env --proxy`)", file=sys.stderr)
    else:
        added = ring.get(name)
        assert added is not None
        print(added.value)  # shown once, on request: give it to that tool
    return EXIT_OK


def cmd_shim(args: argparse.Namespace) -> int:
    """``tokend shim``: the POSIX sh snippet that sets OPENAI_API_KEY from openai.env
    without starting Python; ``--path`` prints where the installed copy is instead."""
    from pathlib import Path

    shim = Path(__file__).with_name("tokend-env.sh")
    if args.path:
        print(shim)
    else:
        sys.stdout.write(shim.read_text())
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from tokend.doctor import run_checks

    checks = run_checks(args.config)
    failed = any(c.status == "FAIL" for c in checks)
    if args.json:
        _emit_json({"ok": not failed, "checks": [c.as_dict() for c in checks]})
    else:
        for check in checks:
            print(check.line())
    return EXIT_UNAVAILABLE if failed else EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    """``tokend health``: ``GET /healthz`` on the socket; exit 0 when every profile holds
    a valid token, else 1 with the reason on stderr. For probes and a container's
    HEALTHCHECK, which run it without a shell."""
    from tokend import client

    path = client.socket_path(config=args.config)
    if path is None:
        print('tokend: health: the socket is turned off (socket.path = "")', file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        status, body = client._get(path, "/healthz", args.timeout)
    except (client.TokenUnavailable, client._SocketError) as err:  # not running, refused
        print(f"tokend: health: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if status == 200:
        return EXIT_OK
    detail = body.get("detail") if isinstance(body, dict) else None
    print(f"tokend: health: HTTP {status}: {detail or body}", file=sys.stderr)
    return EXIT_UNAVAILABLE


def cmd_deploy(args: argparse.Namespace) -> int:
    """``tokend deploy kubernetes``: print manifests, as ``install --dry-run`` prints the
    unit; nothing is applied."""
    from pathlib import Path

    from tokend.service import kubernetes

    if args.proxy_key_secret:
        print(kubernetes.to_yaml([kubernetes.proxy_key_secret()], ["a new proxy key"]), end="")
        return EXIT_OK
    config = Path(args.config).expanduser().absolute() if args.config else None
    opts = kubernetes.Options(
        image=args.image,
        config=config,
        profile=args.profile,
        proxy=args.proxy,
        credentials=args.credentials,
        audience=args.audience,
        token_audience=args.token_audience,
        kind=args.kind,
        app_image=args.app_image,
    )
    try:
        header, docs = kubernetes.render(opts)
    except ConfigError as err:
        print(f"tokend: deploy: {err}", file=sys.stderr)
        return EXIT_CONFIG
    print(kubernetes.to_yaml(docs, header), end="")
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="tokend",
        description="Keep a Google ADC access token fresh for every local program.",
    )
    parser.add_argument("--version", action="version", version=f"tokend {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the daemon (foreground)")
    p.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $TOKEND_CONFIG, "
        "else the platform config dir's tokend/config.toml)",
    )
    p.add_argument(
        "--once", action="store_true", help="fetch every profile, write its files and exit"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_run)

    def profile_opts(
        p: argparse.ArgumentParser, min_valid: bool = True, default: str = "60"
    ) -> None:
        p.add_argument("-p", "--profile", default="default", help="profile (default: default)")
        if min_valid:
            p.add_argument(
                "--min-valid",
                type=float,
                default=None,
                metavar="N",
                help="seconds the token must stay valid; the daemon refreshes first "
                f"when less remain (default: {default}, or a quarter of the token's "
                "lifetime when shorter)",
            )

    p = sub.add_parser("token", help="print the current token")
    profile_opts(p, default="600, longer than key helpers keep a key")
    p.add_argument(
        "--format",
        choices=("raw", "json", "header"),
        default="raw",
        help="raw token, the /v1/token JSON object, or an Authorization header line",
    )
    p.set_defaults(func=cmd_token)

    p = sub.add_parser(
        "id-token",
        help="print an ID token for an audience (Cloud Run, IAP)",
        description="Print an ID token whose aud is AUDIENCE, minted through the "
        "profile's credentials (a service-account key, impersonate, or the metadata "
        "server) and kept fresh by the daemon.",
    )
    profile_opts(p)
    p.add_argument(
        "--audience",
        required=True,
        metavar="URL",
        help="the service's https:// URL or OAuth client id",
    )
    p.add_argument(
        "--format",
        choices=("raw", "json", "header"),
        default="raw",
        help="raw token, the /v1/id_token JSON object, or an Authorization header line",
    )
    p.set_defaults(func=cmd_id_token)

    p = sub.add_parser(
        "env",
        help="print OPENAI_API_KEY, OPENAI_BASE_URL and TOKEND_EXPIRES_AT for a shell",
        description='eval "$(tokend env)" sets OPENAI_API_KEY (and OPENAI_BASE_URL when '
        "the profile has an [openai] table) in the current shell.",
    )
    profile_opts(p)
    p.add_argument("--format", choices=("sh", "fish", "dotenv", "json"), default="sh")
    p.add_argument(
        "--proxy",
        action="store_true",
        help="the local proxy's OPENAI_BASE_URL and key (never expire) instead of a token",
    )
    p.set_defaults(func=cmd_env)

    p = sub.add_parser(
        "exec",
        help="run a command with OPENAI_API_KEY set",
        description="Run CMD with OPENAI_API_KEY, OPENAI_BASE_URL and TOKEND_EXPIRES_AT "
        "in its environment; signals are forwarded and its exit code is returned.",
    )
    profile_opts(p)
    p.add_argument(
        "--proxy", action="store_true", help="the local proxy's base URL and key instead"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("status", help="show the daemon's profiles (never a token)")
    p.add_argument("--json", action="store_true", help="print the /v1/status object")
    p.set_defaults(func=cmd_status)

    def manager_opts(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument(
            "--systemd",
            dest="manager",
            action="store_const",
            const="systemd",
            help="systemd user unit (default on Linux)",
        )
        group.add_argument(
            "--launchd",
            dest="manager",
            action="store_const",
            const="launchd",
            help="launchd agent (default on macOS)",
        )
        p.add_argument("--dry-run", action="store_true", help="print what would be written and run")

    p = sub.add_parser(
        "install",
        help="run tokend as a service: systemd user unit or launchd agent",
        description="Write the systemd user unit (~/.config/systemd/user/tokend.service) "
        "or the launchd agent (~/Library/LaunchAgents/dev.tokend.plist) for this tokend, "
        "then enable and start it. Safe to run again (e.g. after an upgrade).",
    )
    manager_opts(p)
    p.add_argument("--config", metavar="PATH", help="config file the service should use")
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("uninstall", help="stop the service and remove its unit or plist")
    manager_opts(p)
    p.set_defaults(func=cmd_uninstall)

    p = sub.add_parser(
        "proxy-key",
        help="the local proxy's keys: rotate the default, add/revoke per-app keys, list",
        description="rotate [NAME]: replace a key (default: the one proxy.env holds). "
        "add NAME: a key for one tool, printed once. revoke NAME. list: names, never keys. "
        "A running tokend uses the change at once.",
    )
    p.add_argument("action", choices=("rotate", "add", "list", "revoke"))
    p.add_argument("name", nargs="?", default="", help="key name (default: default)")
    p.add_argument("--config", metavar="PATH", help="config file (as for `tokend run`)")
    p.set_defaults(func=cmd_proxy_key)

    p = sub.add_parser(
        "shim",
        help="print tokend-env.sh, the sh snippet that sets OPENAI_API_KEY without Python",
        description="Print tokend-env.sh: source it (`. FILE`) in sh scripts to set "
        "OPENAI_API_KEY (and OPENAI_BASE_URL) from openai.env without starting Python. "
        "Save it once: tokend shim > ~/.local/share/tokend-env.sh",
    )
    p.add_argument("--path", action="store_true", help="print the installed file's path")
    p.set_defaults(func=cmd_shim)

    p = sub.add_parser("doctor", help="check credentials, paths, socket, service, token and clock")
    p.add_argument("--config", metavar="PATH", help="config file (as for `tokend run`)")
    p.add_argument("--json", action="store_true", help="the checks as JSON")
    p.set_defaults(func=cmd_doctor)
    add_container_commands(sub)
    return parser


def add_container_commands(sub: Any) -> None:
    """``tokend health`` (probes) and ``tokend deploy kubernetes`` (manifests). The
    uid in the help is tokend.service.kubernetes.UID, not imported: every command that
    builds the parser would pay for tokend.service's imports (a test pins the number)."""
    p = sub.add_parser(
        "health",
        help="exit 0 when every profile holds a valid token (/healthz), else 1",
        description="Ask the running tokend's /healthz on its socket; for Kubernetes "
        "probes and Docker's HEALTHCHECK, which run it without a shell.",
    )
    p.add_argument("--config", metavar="PATH", help="config file (as for `tokend run`)")
    p.add_argument("--timeout", type=float, default=3.0, metavar="N", help="seconds (3)")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("deploy", help="print manifests to run tokend elsewhere (kubernetes)")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    k = targets.add_parser(
        "kubernetes",
        help="tokend as a native sidecar: a ConfigMap and a Deployment, Job or Pod",
        description="Print Kubernetes manifests (nothing is applied): tokend as a native "
        "sidecar (Kubernetes >= 1.29) sharing a memory-backed /run/tokend with the app, "
        "every container as uid 65532. Pipe to `kubectl apply -f -` or merge the pod spec "
        "into your own.",
    )
    k.add_argument("--image", default=f"tokend:{__version__}", help="tokend's image")
    k.add_argument("--config", metavar="PATH", help="your config.toml: the profile to deploy")
    k.add_argument("-p", "--profile", default="default", help="the profile (default: default)")
    k.add_argument(
        "--proxy",
        action="store_true",
        help="the local proxy on 127.0.0.1:8789 (or the config's port); the app gets "
        "OPENAI_BASE_URL and OPENAI_API_KEY (from the Secret --proxy-key-secret prints)",
    )
    k.add_argument(
        "--credentials",
        choices=("secret", "external-account", "metadata"),
        default="secret",
        help="a credentials file in a Secret (default); workload identity federation "
        "with the pod's service-account token; or the metadata server (GKE)",
    )
    k.add_argument(
        "--audience",
        default="",
        metavar="PROVIDER",
        help="with external-account: //iam.googleapis.com/projects/N/locations/global/"
        "workloadIdentityPools/POOL/providers/PROVIDER",
    )
    k.add_argument(
        "--token-audience",
        default="",
        metavar="AUD",
        help="the service-account token's audience (default: the provider's URL)",
    )
    k.add_argument("--kind", choices=("deployment", "job", "pod"), default="deployment")
    k.add_argument("--app-image", default="your-app-image", help="the app container's image")
    k.add_argument(
        "--proxy-key-secret",
        action="store_true",
        help="print only a Secret holding a new proxy key (apply it once)",
    )
    k.set_defaults(func=cmd_deploy)


#: What the quick path parses: each command's options, with their defaults (None: a flag)
#: or allowed values.
_QUICK: dict[str, tuple[Callable[[Any], int], dict[str, tuple[str, ...] | None]]] = {
    "token": (cmd_token, {"--format": ("raw", "json", "header")}),
    "env": (cmd_env, {"--format": ("sh", "fish", "dotenv", "json"), "--proxy": None}),
}


def _quick_args(argv: Sequence[str]) -> Any:
    """``tokend token`` and ``tokend env`` as key helpers, shell prompts and loops call
    them, parsed without argparse: importing it and building the parser would cost more
    than reading the token. Only the plain spellings (``-p NAME``, ``--profile NAME``,
    ``--min-valid N``, ``--format F``, ``--proxy``, and ``--opt=value``) are taken;
    anything else returns None, and argparse parses it (and reports any error)."""
    if not argv or argv[0] not in _QUICK:
        return None
    func, options = _QUICK[argv[0]]
    args: dict[str, Any] = {"command": argv[0], "func": func, "profile": "default"}
    args["min_valid"] = None
    for name, allowed in options.items():
        args[name[2:]] = allowed[0] if allowed else False
    rest = list(argv[1:])
    while rest:
        opt = rest.pop(0)
        if opt.startswith("--") and "=" in opt:
            opt, value = opt.split("=", 1)
            rest.insert(0, value)
        if opt in options and options[opt] is None:  # a flag
            args[opt[2:]] = True
            continue
        if not rest or (opt not in ("-p", "--profile", "--min-valid") and opt not in options):
            return None
        value = rest.pop(0)
        if opt in ("-p", "--profile"):
            if not value or value.startswith("-"):
                return None
            args["profile"] = value
        elif opt == "--min-valid":
            try:
                args["min_valid"] = float(value)
            except ValueError:
                return None
        elif value in (options[opt] or ()):
            args[opt[2:]] = value
        else:
            return None
    from types import SimpleNamespace

    return SimpleNamespace(**args)


#: What shlex.quote leaves unquoted.
_SH_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@%+=:,./-")


def _from_env_file(profile: str, min_valid: float | None, most: float) -> dict[str, str] | None:
    """What ``tokend env`` prints, from the profile's env file (``openai.env``) read in its
    cheapest form, when there is no config file (which could move the file, or give the
    profile an OPENAI_BASE_URL): one ``stat`` of the config path, one read, no json,
    pathlib or socket import. None for anything else (a config file, no env file, a token
    too close to its expiry, anything malformed): the full client takes over, and says
    what is wrong."""
    from tokend import places, wire

    if os.environ.get("TOKEND_CONFIG") or os.path.lexists(places.config_path()):
        return None
    if not (profile.isascii() and profile.replace("_", "").replace("-", "").isalnum()):
        return None
    runtime = os.environ.get("TOKEND_RUNTIME_DIR")
    runtime = os.path.expanduser(runtime) if runtime else places.runtime_dir()
    name = "openai.env" if profile == "default" else f"{profile}.openai.env"
    try:
        text = places.read_regular(os.path.join(runtime, name), 1 << 14).decode("ascii")
        values = dict(line.split("=", 1) for line in text.splitlines() if line)
        value = wire.check_token(values["OPENAI_API_KEY"])
        expires_at = int(values["TOKEND_EXPIRES_AT"])
        lifetime = int(values.get("TOKEND_LIFETIME", "0"))
    except (OSError, ValueError, KeyError):
        return None
    wanted = wire.default_min_valid(lifetime, most) if min_valid is None else min_valid
    if expires_at - time.time() <= wanted:
        return None
    return {"OPENAI_API_KEY": value, "TOKEND_EXPIRES_AT": str(expires_at)}


def _quick_output(args: Any) -> str | None:
    """``tokend token`` (raw, header) and ``tokend env`` (sh, fish, dotenv) from the env
    file, byte for byte what the full commands print; None where they must run."""
    from tokend import wire

    if args.func is cmd_token and args.format in ("raw", "header"):
        env = _from_env_file(args.profile, args.min_valid, wire.HELPER_MIN_VALID)
        if env is None:
            return None
        key = env["OPENAI_API_KEY"]
        return f"Authorization: Bearer {key}\n" if args.format == "header" else f"{key}\n"
    if args.func is cmd_env and not args.proxy and args.format != "json":
        env = _from_env_file(args.profile, args.min_valid, wire.DEFAULT_MIN_VALID)
        if env is None:
            return None
        lines = []
        for key, value in env.items():
            if args.format == "fish":
                lines.append(f"set -gx {key} {_fish_quote(value)};\n")
            elif args.format == "dotenv":
                lines.append(f"{key}={_dotenv_value(value)}\n")
            else:
                # A token never holds a quote: shlex.quote would put it in '...' too.
                word = value if _SH_SAFE.issuperset(value) else f"'{value}'"
                lines.append(f"export {key}={word}\n")
        return "".join(lines)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokend`` console script. Returns the exit code."""
    args = _quick_args(sys.argv[1:] if argv is None else argv)
    if args is not None:
        out = _quick_output(args)
        if out is not None:
            sys.stdout.write(out)
            return EXIT_OK
    else:
        args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except TokendError as err:
        print(f"tokend: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
