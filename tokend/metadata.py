"""The GCE-metadata-compatible endpoint: Google's client libraries, in any language, get
the profile's token as if they ran on a Compute Engine VM.

Google's libraries (Python, Node, Go, Java, .NET, Rust) and gcloud fall back to the
metadata server when they find no ADC file; ``GCE_METADATA_HOST=127.0.0.1:PORT`` (and
the like, README.md "Metadata endpoint") points them here. What they call, and only that:

- ``GET /``: 200 with ``Metadata-Flavor: Google``, the only path that needs no
  ``Metadata-Flavor`` request header (google-auth's ping; a Java one too);
- under ``/computeMetadata/v1/``: ``instance/`` (Node's ping),
  ``instance/service-accounts/`` and ``…/{default,EMAIL}/`` (``?recursive=true``: the
  JSON GCE gives, ``aliases``, ``email``, ``scopes``), ``…/email``, ``…/scopes``,
  ``…/aliases``, ``…/token`` (``?scopes=`` served when the profile's token carries every
  scope asked for, else 400) and ``…/identity?audience=…`` (ID tokens, through the hook
  the daemon supplies: :data:`IdTokenHook`); ``project/project-id`` and
  ``project/numeric-project-id`` from the configuration;
- a 404 for everything else (``universe/universe-domain`` too: every library reads that
  as googleapis.com).

Every answer carries ``Metadata-Flavor: Google``. The endpoint hands out the user's Google
token, so it is guarded like the proxy: loopback only (the configuration refuses other
addresses); on Linux the peer's uid checked once per connection by the same code
(:class:`tokend.peers.PeerGuard`); ``Host`` limited to loopback names and
``metadata.google.internal`` (DNS rebinding); ``Metadata-Flavor: Google`` required, as GCE
does, so a web page cannot send a request without a CORS preflight, which it refuses;
``X-Forwarded-For`` (and ``Forwarded``) refused, as GCE does, so a reverse proxy in
front cannot relay other hosts' requests. Tokens come fresh from the refresher through
:class:`tokend.endpoints.Endpoints`, never from a cache of this module; no token reaches
a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from tokend import clock
from tokend.config import Config
from tokend.endpoints import Answer, Endpoints, TokenQuery
from tokend.logs import printable_path
from tokend.metrics import Metrics
from tokend.peers import PeerGuard, forbidden, listen_loopback, loopback_hosts, stop_serving

__all__ = ["IdTokenHook", "Metadata", "MetadataSettings"]

log = logging.getLogger(__name__)

#: ``await id_token(profile, audience)``: an ID token for ``audience`` minted through the
#: profile's credentials (the JWT), or the error :class:`~tokend.endpoints.Answer` to
#: send instead (its ``detail`` becomes the body). The daemon supplies it; without one,
#: ``…/identity`` answers 404.
IdTokenHook = Callable[[str, str], Awaitable[str | Answer]]

#: Seconds the token must still be valid when it is handed out (refreshing first
#: otherwise). The libraries keep it until a few minutes before the expiry it states and
#: then ask again; tokend refreshes well before that.
MIN_VALID = 5.0
#: How long a request waits for the first token (tokend just started). Under the 3 s
#: the libraries give a metadata request before they retry it.
WAIT = 2.0
#: Idle keep-alive connections are closed after this long.
KEEPALIVE = 75.0
#: The metadata API's root.
ROOT = "/computeMetadata/v1/"
#: Host names that reach this endpoint only through the machine's own configuration
#: (``/etc/hosts``, a container's host alias): no public DNS answer can point them here.
METADATA_NAMES = ("metadata.google.internal",)
#: The leaves of a service account's directory.
_ACCOUNT_LEAVES = ("aliases", "email", "identity", "scopes", "token")

_FLAVOR = {"Metadata-Flavor": "Google"}
_TEXT = "application/text"  # what GCE labels its plain values with


@dataclass(frozen=True, slots=True)
class MetadataSettings:
    """What the metadata endpoint needs of the configuration (rebuilt at every reload)."""

    bind: str
    port: int  #: as configured (0: any free port)
    profile: str
    scopes: tuple[str, ...]
    project_id: str  #: "" = unknown (404)
    numeric_project_id: str  #: "" = unknown (404)
    allowed_uids: frozenset[int] = frozenset()

    @classmethod
    def of(cls, config: Config) -> MetadataSettings:
        m = config.metadata
        bind, port = m.address
        return cls(
            bind=bind,
            port=port,
            profile=m.profile,
            scopes=config.profiles[m.profile].scopes,
            project_id=config.metadata_project_id,
            numeric_project_id=m.numeric_project_id,
            allowed_uids=frozenset({os.getuid(), 0, *m.allow_uids}),
        )


class _Refused(Exception):
    """A request answered with an error: status and a plain-text reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _text(status: int, body: str, content_type: str = _TEXT, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=body.encode(),
        headers={**_FLAVOR, "Content-Type": content_type, **headers},
    )


def _json(payload: Any, **headers: str) -> web.Response:
    return _text(200, json.dumps(payload), "application/json", **headers)


def _listing(*entries: str) -> web.Response:
    """A metadata directory, as GCE lists one: an entry a line, directories with ``/``."""
    return _text(200, "".join(f"{e}\n" for e in entries))


def _detail(answer: Answer) -> str:
    """The ``detail`` of an error :class:`Answer` (``{"error", "detail"}``), for a body."""
    try:
        doc = json.loads(answer.body)
        return f"{doc['error']}: {doc['detail']}"
    except (ValueError, KeyError, TypeError):
        return answer.body.decode("utf-8", "replace")


class Metadata:
    """The endpoint's server.

    Args:
        endpoints: where tokens (and the errors when there is none) come from.
        settings: what the configuration says (:meth:`configure` replaces it).
        metrics: where requests are counted, per route and status.
        id_token: the ID-token hook (:data:`IdTokenHook`); None: ``identity`` is a 404.
    """

    def __init__(
        self,
        endpoints: Endpoints,
        settings: MetadataSettings,
        metrics: Metrics,
        id_token: IdTokenHook | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.settings = settings
        self.metrics = metrics
        self.id_token = id_token
        self.port = settings.port
        self._server: asyncio.Server | None = None
        self._web: web.Server | None = None
        self._hosts: frozenset[str] = frozenset()
        self.guard = PeerGuard(
            "metadata", "metadata.allow_uids", lambda: self.settings.allowed_uids, self._refused
        )

    # -- lifecycle --------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``host:port`` it listens on: what ``GCE_METADATA_HOST`` should say."""
        bind = self.settings.bind
        return f"[{bind}]:{self.port}" if ":" in bind else f"{bind}:{self.port}"

    async def start(self) -> None:
        """Listen.

        Raises:
            ConfigError: the address is taken or cannot be bound.
        """
        s = self.settings
        sock = listen_loopback(s.bind, s.port, "metadata")
        self.port = int(sock.getsockname()[1])
        # With its port, as every client sends it; the metadata server's own name also
        # bare, for a client that reaches it on port 80 through a redirect.
        self._hosts = loopback_hosts(s.bind, self.port, *METADATA_NAMES) | set(METADATA_NAMES)
        self._web = web.Server(
            self.handle,
            access_log=None,  # one line per request of our own, without query strings
            keepalive_timeout=KEEPALIVE,
        )
        self._server = await self.guard.serve(sock, self._web)
        log.info(
            "metadata endpoint listening on %s for profile %s (GCE_METADATA_HOST=%s)",
            f"http://{self.host}",
            s.profile,
            self.host,
        )

    async def stop(self, timeout: float = 1.0) -> None:
        server, self._server = self._server, None
        await stop_serving(server, self._web, timeout)

    def configure(self, settings: MetadataSettings) -> None:
        """A reload: profile, scopes, project and allowed uids at once. The address is
        the daemon's to change (by starting another endpoint): kept here."""
        self.settings = replace(settings, bind=self.settings.bind, port=self.settings.port)

    # -- access control -----------------------------------------------------------------

    def _refused(self, uid: int | None) -> bytes:
        """The 403 a connection from a uid it does not serve gets, counted."""
        self._count("peer", 403)
        who = "an unknown uid" if uid is None else f"uid {uid}"
        body = (
            f"{who} may not use this metadata endpoint; its owner (uid {os.getuid()}) can "
            "add it to metadata.allow_uids\n"
        )
        return forbidden(body.encode(), "text/plain; charset=utf-8")

    def _check(self, request: web.BaseRequest) -> None:
        """The rules every request meets, ``/`` included."""
        if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
            raise _Refused(
                403,
                "Request had an X-Forwarded-For (or Forwarded) header: the metadata "
                "endpoint answers only this machine's programs, never through a proxy.",
            )
        host = request.headers.get("Host", "")
        if host.lower() not in self._hosts:
            raise _Refused(
                403,
                f"Host {host[:100]!r} is not this metadata endpoint; "
                f"use GCE_METADATA_HOST={self.host}",
            )
        if request.method != "GET":
            raise _Refused(405, f"{request.method[:20]} is not allowed here; use GET")

    # -- requests -----------------------------------------------------------------------

    def _count(self, route: str, status: int) -> None:
        self.metrics.metadata_requests[(route, str(status))] += 1

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """aiohttp's entry point: check, answer; one log line, one count."""
        started = clock.monotonic()
        route = "other"
        status = 500
        try:
            self._check(request)
            route, response = await self._answer(request)
            status = response.status
            return response
        except _Refused as refused:
            status = refused.status
            allow = {"Allow": "GET"} if status == 405 else {}
            return _text(status, f"{refused}\n", "text/plain; charset=utf-8", **allow)
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's code for it)
            raise
        except Exception:
            log.exception("metadata: %s %s failed", request.method, request.path[:200])
            status = 500
            return _text(500, "tokend's metadata endpoint failed; see its log\n")
        finally:
            log.info(
                "metadata %s %s %d %.3fs",
                request.method[:20],
                printable_path(request.raw_path),
                status,
                clock.monotonic() - started,
            )
            self._count(route, status)

    async def _answer(self, request: web.BaseRequest) -> tuple[str, web.Response]:
        """(route name, response) for a request that passed :meth:`_check`."""
        path = request.raw_path.partition("?")[0]
        if path == "/":
            return "ping", _text(200, "computeMetadata/\n")
        if request.headers.get("Metadata-Flavor") != "Google":
            # GCE's own answer, word for word: libraries and people recognise it.
            raise _Refused(403, "Missing Metadata-Flavor:Google header.")
        if "wait_for_change" in request.query:
            raise _Refused(
                400, "wait_for_change is not supported: these values change only at a reload"
            )
        recursive = request.query.get("recursive", "").lower() == "true"
        if path in ("/computeMetadata", "/computeMetadata/"):
            return "directory", _listing("v1/")
        if not (path + "/").startswith(ROOT):
            raise _Refused(404, "Not Found")
        parts = path[len(ROOT) :].split("/") if len(path) > len(ROOT) else []
        while len(parts) > 1 and parts[-1] == "":  # a trailing slash names the directory
            parts.pop()
        if parts in ([], [""]):
            return "directory", _listing("instance/", "project/")
        if parts[0] == "project":
            return self._project(parts[1:], recursive)
        if parts[0] != "instance":
            raise _Refused(404, "Not Found")
        if len(parts) == 1:
            if recursive:
                return "instance", _json({"serviceAccounts": self._accounts()})
            return "directory", _listing("service-accounts/")
        if parts[1] != "service-accounts":
            raise _Refused(404, "Not Found")
        if len(parts) == 2:
            accounts = self._accounts()
            if recursive:
                return "service-accounts", _json(accounts)
            return "service-accounts", _listing(*(f"{name}/" for name in accounts))
        info = self._accounts().get(parts[2])
        if info is None or len(parts) > 4:
            raise _Refused(404, "Not Found")
        if len(parts) == 3:
            if recursive:
                return "service-account", _json(info)
            return "service-account", _listing(*_ACCOUNT_LEAVES)
        leaf = parts[3]
        if leaf == "token":
            return "token", await self._token(request)
        if leaf == "identity":
            return "identity", await self._identity(request)
        if leaf == "email":
            return "email", _text(200, info["email"])
        if leaf == "scopes":
            return "scopes", _listing(*info["scopes"])
        if leaf == "aliases":
            return "aliases", _listing(*info["aliases"])
        raise _Refused(404, "Not Found")

    def _email(self) -> str:
        """The profile's account, as the current token or the credentials name it;
        ``default`` when tokend does not know it (a user ADC file without it)."""
        r = self.endpoints.served.refreshers.get(self.settings.profile)
        if r is None:
            return "default"
        tok = r.valid_token()
        return (tok.account if tok is not None else "") or r.source.account or "default"

    def _accounts(self) -> dict[str, dict[str, Any]]:
        """Each name the service account answers to (``default`` and its email), with
        what ``?recursive=true`` says of it."""
        email = self._email()
        info = {"aliases": ["default"], "email": email, "scopes": list(self.settings.scopes)}
        return {"default": info} | ({email: info} if email != "default" else {})

    def _project(self, rest: list[str], recursive: bool) -> tuple[str, web.Response]:
        s = self.settings
        if rest in ([], [""]):
            if recursive:
                known: dict[str, Any] = {}
                if s.numeric_project_id:
                    known["numericProjectId"] = int(s.numeric_project_id)
                if s.project_id:
                    known["projectId"] = s.project_id
                return "project", _json(known)
            return "directory", _listing("numeric-project-id", "project-id")
        if rest == ["project-id"]:
            if not s.project_id:
                raise _Refused(
                    404,
                    "tokend does not know the project ID: set project_id under [metadata] "
                    f"(or project under [profiles.{s.profile}.openai])",
                )
            return "project-id", _text(200, s.project_id)
        if rest == ["numeric-project-id"]:
            if not s.numeric_project_id:
                raise _Refused(
                    404,
                    "tokend does not know the project number: set numeric_project_id "
                    "under [metadata]",
                )
            return "numeric-project-id", _text(200, s.numeric_project_id)
        raise _Refused(404, "Not Found")

    async def _token(self, request: web.BaseRequest) -> web.Response:
        """The profile's current token, as GCE hands one out; refreshed first when it has
        less than MIN_VALID left."""
        s = self.settings
        asked = {
            scope
            for value in request.query.getall("scopes", ())
            for scope in value.replace(" ", ",").split(",")
            if scope
        }
        missing = sorted(asked - set(s.scopes))
        if missing:
            raise _Refused(
                400,
                f"profile {s.profile}'s token does not carry the scopes asked for: "
                f"{', '.join(missing)[:1000]}; it has {', '.join(s.scopes)}. Add them to "
                f"scopes under [profiles.{s.profile}], or ask without ?scopes=",
            )
        got = await self.endpoints.fresh_token(
            TokenQuery(s.profile, min_valid=MIN_VALID, wait=WAIT)
        )
        if isinstance(got, Answer):
            raise _Refused(got.status, _detail(got))
        body = {
            "access_token": got.value,
            "expires_in": max(0, int(got.expires_in(clock.steady()))),
            "token_type": "Bearer",
        }
        return _json(body, **{"Cache-Control": "no-store"})

    async def _identity(self, request: web.BaseRequest) -> web.Response:
        """An ID token for ``?audience=``, through the daemon's hook."""
        audience = request.query.get("audience", "")
        if not audience:
            raise _Refused(400, "non-empty audience parameter required")
        if self.id_token is None:
            raise _Refused(
                404,
                "this tokend does not serve ID tokens yet: the identity path has no "
                "ID-token source to ask",
            )
        got = await self.id_token(self.settings.profile, audience)
        if isinstance(got, Answer):
            raise _Refused(got.status, _detail(got))
        return _text(200, got, **{"Cache-Control": "no-store"})
