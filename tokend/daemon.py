"""Wiring: configuration -> profiles -> refreshers, sinks, watcher, signals.

Signal handlers and watcher callbacks only set flags or schedule work on the loop;
the loop does the rest. Shutdown is ordered and bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import resource
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokend import clock, proxykeys
from tokend.config import Config, ProfileConfig, load
from tokend.endpoints import Answer, Endpoints, Served
from tokend.errors import ConfigError, CredentialsError, RefreshError, UnsafePathError
from tokend.idtokens import AudienceSource, IdTokens, entry_name
from tokend.metrics import Metrics
from tokend.paths import (
    check_sink_parent,
    check_socket_dir,
    check_socket_path,
    ensure_private_dir,
    ensure_shared_dir,
    is_within,
)
from tokend.refresher import ProfileRefresher, TokenSource, fetch_within
from tokend.server import SocketServer, refuse_if_served
from tokend.service.notify import ServiceLink, describe
from tokend.sinks import FileSink, sweep_temp_files
from tokend.source import Source
from tokend.threads import run_in_thread
from tokend.watch import Watcher

if TYPE_CHECKING:
    from tokend.metadata import Metadata
    from tokend.proxy import Proxy

__all__ = ["Daemon", "harden_process", "prepare_paths", "run_once"]

log = logging.getLogger(__name__)

#: Seconds to wait after a watched file changes before acting, so a file written in
#: several steps is read once it is complete...
DEBOUNCE = 0.2
#: ...but never longer than this after the first change: a file touched every 100 ms
#: (an editor, a sync tool) must not postpone a new identity's token forever.
DEBOUNCE_MAX = 1.0
#: How often the clocks are compared, to notice a suspend or a wall-clock step: a
#: resume is acted on within this (plus the time the work takes).
CLOCK_TICK = 1.0
#: A configuration file not read within this is a hung filesystem, not a config.
CONFIG_READ_TIMEOUT = 5.0


#: Soft limit on open files the daemon raises itself to (within the hard limit).
NOFILE = 65536


def harden_process() -> None:
    """umask 077 (every file we create is private), no core dumps (a core file would
    hold tokens in clear), and room for many clients: systemd's default soft limit of
    1024 open files would make a burst of connections fail ``accept`` with EMFILE (and
    starve token fetches and file writes of descriptors); raise it within the hard
    limit, as systemd.exec(5) advises programs that need more."""
    os.umask(0o077)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def prepare_paths(config: Config, *, socket: bool = True) -> None:
    """Check every path before anything is written: the runtime dir (created 0700) and
    the way to it, the directories of sinks inside it (created 0700) and of absolute
    sinks outside it (which must exist), the socket path length (unless ``socket`` is
    False: ``run --once`` opens none). The same checks run
    again at every write (:mod:`tokend.sinks`); here they make a bad start fail at once,
    with one line and exit 2."""
    runtime = config.runtime_path
    ensure_private_dir(runtime)
    for name, profile in config.profiles.items():
        for _, sink in profile.files(name):  # sinks and ID token files
            path = config.sink_path(sink)
            if not is_within(path.parent, runtime):
                check_sink_parent(path)
            elif not is_within(runtime, path.parent):  # a directory inside the runtime dir
                ensure_private_dir(path.parent)
    sock = config.socket_path if socket else None
    if sock is not None:
        check_socket_path(sock)
        if config.socket.allow_uids:
            ensure_shared_dir(sock.parent)  # created 0711: the allowed users reach in
        elif not is_within(sock.parent, runtime):
            check_socket_dir(sock.parent)
        elif not is_within(runtime, sock.parent):
            ensure_private_dir(sock.parent)


def make_sinks(config: Config, name: str, profile: ProfileConfig) -> list[FileSink]:
    """The profile's sinks; those inside the runtime dir insist on a private directory."""
    runtime = config.runtime_path
    sinks = []
    for s in profile.effective_sinks(name):
        path = config.sink_path(s)
        private = is_within(path, runtime)
        sinks.append(FileSink(path, s.format, s.mode, profile.base_url, private=private))
    return sinks


def make_id_token_sinks(
    config: Config, profile: ProfileConfig
) -> list[tuple[str, list[FileSink]]]:
    """The profile's configured ID token audiences, each with its file."""
    runtime = config.runtime_path
    out = []
    for t in profile.id_tokens:
        path = config.sink_path(t)
        sink = FileSink(path, t.format, t.mode, "", private=is_within(path, runtime))
        out.append((t.audience, [sink]))
    return out


class Daemon:
    """The running service. ``await Daemon(config, config_path).run()`` -> exit code."""

    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.refreshers: dict[str, ProfileRefresher] = {}
        self._profile_cfgs: dict[str, ProfileConfig] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        #: When each debounced action was first asked for (loop time), for DEBOUNCE_MAX.
        self._first_asked: dict[str, float] = {}
        self._reloading: asyncio.Task[None] | None = None
        self._watcher: Watcher | None = None
        # Set by _watch_targets: the profiles each credentials file feeds, and the
        # files we write (sinks, proxy.env).
        self._creds_by_path: dict[Path, list[ProfileRefresher]] = {}
        self._files: frozenset[Path] = frozenset()
        self._server: SocketServer | None = None
        self._proxy: Proxy | None = None
        self._metadata: Metadata | None = None
        self._pending: set[asyncio.Task[None]] = set()
        #: What the front ends see of the daemon (and nothing else): the live map of
        #: refreshers, the settings answers name, and the answers built on them.
        self.served = Served(self.refreshers, config.source, config.runtime_path)
        self.endpoints = Endpoints(self.served, Metrics(self.refreshers))
        #: ID tokens by (profile, audience), for the front ends through the endpoints.
        self.id_tokens = IdTokens(
            self._id_token_source, max_audiences=config.max_id_token_audiences
        )
        self.endpoints.id_tokens = self.id_tokens
        # sd_notify (READY/STATUS/WATCHDOG/STOPPING); does nothing outside systemd.
        self._link = ServiceLink(
            lambda: describe((r.snapshot() for r in self.refreshers.values()), clock.now())
        )

    # -- lifecycle --------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        if self.config.socket_path is not None:
            refuse_if_served(self.config.socket_path)  # a second tokend must touch nothing
        self._apply(self.config, first=True)
        watcher = Watcher(loop, self._on_path_changed)
        self._watcher = watcher
        watcher.set_targets(self._watch_targets())
        watcher.start()
        log.info(
            "tokend started: %d profile(s), runtime dir %s",
            len(self.refreshers),
            self.config.runtime_path,
        )
        try:
            if self.config.socket_path is not None:
                # Inside the try: a refused socket (another tokend is running) still
                # stops the watcher and refreshers started above.
                self._server = SocketServer(
                    self.endpoints, self.config.socket_path, self.config.socket.allow_uids
                )
                await self._server.start()
            if self.config.proxy.enabled:
                await self._start_proxy()
            if self.config.metadata.enabled:
                self._metadata = await self._start_metadata(self.config)
            self._link.start(self.first_attempts)  # READY=1 once every profile tried
            self._background(self._settle_heap())
            self._background(self._watch_clocks())
            self.id_tokens.start()
            await self._stop.wait()
        finally:
            await self._shutdown(watcher)
        return 0

    def stop(self) -> None:
        self._stop.set()

    async def _start_proxy(self) -> None:
        """Load (at first start: make) the local keys, listen, write ``proxy.env``.

        Raises:
            ConfigError: the keys file is malformed, or the address is taken.
            UnsafePathError: the state dir is not safe.
        """
        from tokend.proxy import Proxy, ProxySettings  # aiohttp: only when the proxy is on

        state = self.config.state_path
        where = proxykeys.keys_path(state)
        try:
            ring, made = await asyncio.wait_for(
                run_in_thread(lambda: proxykeys.ensure(state)), CONFIG_READ_TIMEOUT
            )
        except TimeoutError:
            raise ConfigError(
                f"{where}: not read within {CONFIG_READ_TIMEOUT:g} s (a hung filesystem?)"
            ) from None
        except UnsafePathError:
            raise
        except OSError as err:
            raise ConfigError(
                f"{where}: cannot write the proxy keys: {err.strerror or err}"
            ) from None
        if made:
            log.info("proxy: made a local key, kept in %s", proxykeys.keys_path(state))
        proxy = Proxy(self.endpoints, ProxySettings.of(self.config), ring, self.endpoints.metrics)
        await proxy.start()
        self._proxy = proxy
        self.served.proxy_url = proxy.base_url
        self.served.state_dir = str(state)
        if self._watcher is not None:
            self._watcher.set_targets(self._watch_targets())

    async def _start_metadata(self, config: Config) -> Metadata:
        """The metadata endpoint for ``config``, listening.

        Raises:
            ConfigError: the address is taken.
        """
        from tokend.metadata import Metadata, MetadataSettings  # aiohttp: only when on

        metadata = Metadata(
            self.endpoints,
            MetadataSettings.of(config),
            self.endpoints.metrics,
            id_token=self._metadata_id_token,
        )
        await metadata.start()
        self.served.metadata_host = metadata.host
        return metadata

    async def _reconfigure_metadata(self, config: Config) -> None:
        """A reload: new settings at once; turned on, off or moved, the endpoint is
        started (before the old one stops, so a taken address keeps the old one) or
        stopped."""
        from tokend.metadata import MetadataSettings

        old = self._metadata
        if not config.metadata.enabled:
            if old is not None:
                self._metadata = None
                self.served.metadata_host = ""
                await old.stop()
                log.info("metadata endpoint stopped (metadata.listen is off)")
            return
        settings = MetadataSettings.of(config)
        if old is not None and (old.settings.bind, old.settings.port) == (
            settings.bind,
            settings.port,
        ):
            old.configure(settings)
            return
        try:
            self._metadata = await self._start_metadata(config)
        except ConfigError as err:
            log.error("%s; %s", err, "keeping the running one" if old else "it stays off")
            if old is not None:
                old.configure(settings)
            return
        if old is not None:
            await old.stop()

    async def _reload_keys(self) -> None:
        """The keys file changed (``tokend proxy-key ...``): serve its keys from now on. A
        malformed or vanished file keeps the running keys (a vanished one is written
        back: nothing a tool holds is lost)."""
        proxy = self._proxy
        if proxy is None:
            return
        state = self.config.state_path
        try:
            ring = await asyncio.wait_for(
                run_in_thread(lambda: proxykeys.load(state)), CONFIG_READ_TIMEOUT
            )
        except (ConfigError, TimeoutError) as err:
            log.error("proxy keys not reloaded, keeping the running ones: %s", err or "timeout")
            return
        if ring is None or ring.get(proxykeys.DEFAULT) is None:
            kept = proxy.keys if ring is None else ring.with_key(proxykeys.DEFAULT)
            try:
                await run_in_thread(lambda: proxykeys.save(state, kept))
            except OSError as err:
                log.error("cannot write %s: %s", proxykeys.keys_path(state), err)
            ring = kept
            log.info("proxy keys file was missing or had no default key; wrote it again")
        if ring != proxy.keys:
            await proxy.set_keys(ring)

    async def first_attempts(self) -> None:
        """Wait until every profile finished its first fetch attempt (success or not)."""
        await asyncio.gather(*(r.attempted.wait() for r in self.refreshers.values()))

    async def _settle_heap(self) -> None:
        """Once started, move what startup allocated (google-auth, pydantic, the
        configuration: tens of thousands of objects) out of the garbage collector's
        reach. Otherwise every full collection walks all of it, a pause of the loop that
        a client waiting for its token feels (the slowloris scenario's max latency). No
        ``gc.collect()`` first: it would be such a pause, and finds nothing here."""
        await self.first_attempts()
        gc.freeze()

    async def _watch_clocks(self) -> None:
        """Every CLOCK_TICK, compare the clocks (:class:`tokend.clock.Jumps`) and tell
        every refresher about a suspend or a wall-clock step: asyncio's timers neither
        count suspend nor notice steps. One cheap timer for the whole daemon."""
        jumps = clock.Jumps()
        while True:
            await asyncio.sleep(CLOCK_TICK)
            jump = jumps.check()
            if not jump:
                continue
            if jump.suspended:
                log.info("resumed after %.0f s of suspend; checking every token", jump.suspended)
            if jump.stepped:
                log.info(
                    "the wall clock was stepped by %+.1f s; restating expiry times",
                    jump.stepped,
                )
            for r in self.refreshers.values():
                r.clock_jumped(jump)
            self.id_tokens.clock_jumped(jump)

    async def _shutdown(self, watcher: Watcher) -> None:
        log.info("tokend stopping")
        self._link.stopping()
        for task in list(self._pending):
            task.cancel()
        if self._proxy is not None:
            await self._proxy.stop()
            self._proxy = None
        if self._metadata is not None:
            await self._metadata.stop()
            self._metadata = None
        if self._server is not None:
            await self._server.stop()  # first: no client waits on a refresher being stopped
            self._server = None
        for timer in self._timers.values():
            timer.cancel()
        await asyncio.to_thread(watcher.stop)
        await self.id_tokens.stop()
        await self._stop_refreshers(list(self.refreshers))
        log.info("tokend stopped; token files that are still valid were kept")

    def _drop_refreshers(self, names: list[str]) -> list[asyncio.Task[None]]:
        tasks = []
        for name in names:
            self.refreshers.pop(name).stop()
            self._profile_cfgs.pop(name, None)
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
                tasks.append(task)
        return tasks

    async def _stop_refreshers(self, names: list[str]) -> None:
        tasks = self._drop_refreshers(names)
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    # -- configuration ----------------------------------------------------------------

    def _apply(self, config: Config, *, first: bool = False) -> None:
        """Start refreshers for ``config``, keeping those whose profile is unchanged."""
        prepare_paths(config)
        old_config = self.config
        same_dir = old_config.runtime_path == config.runtime_path
        keep = {
            name
            for name, pc in config.profiles.items()
            if not first and same_dir and self._profile_cfgs.get(name) == pc
        }
        drop = [n for n in self.refreshers if n not in keep]
        old_sinks = {s.path: s for n in drop for s in self.refreshers[n].sinks}
        self._drop_refreshers(drop)
        old_sinks.update((s.path, s) for s in self.id_tokens.drop_profiles(drop))
        self.id_tokens.max_audiences = config.max_id_token_audiences
        wanted_id_tokens: dict[str, list[tuple[str, list[FileSink]]]] = {}
        self.config = config
        self.served.config_source = config.source
        self.served.runtime_dir = config.runtime_path
        new_sink_paths: set[Path] = set()
        for name, pc in config.profiles.items():
            sinks = make_sinks(config, name, pc)
            id_sinks = make_id_token_sinks(config, pc)
            new_sink_paths |= {s.path for s in sinks}
            new_sink_paths |= {s.path for _, files in id_sinks for s in files}
            if name in keep:
                continue
            wanted_id_tokens[name] = id_sinks
            for d in {s.path.parent for s in sinks} | {
                s.path.parent for _, files in id_sinks for s in files
            }:
                if swept := sweep_temp_files(d):
                    log.info("removed %d temp file(s) a previous run left in %s", swept, d)
            source = Source(name, config.profile(name), timeout=config.timeout)
            refresher = ProfileRefresher(name, source, sinks, on_change=self._state_changed)
            self.refreshers[name] = refresher
            self._profile_cfgs[name] = pc
            self._tasks[name] = asyncio.ensure_future(refresher.run())
        self.id_tokens.configure(wanted_id_tokens)
        # Files of profiles that no longer exist (or moved) would otherwise outlive
        # their token: nobody would remove them at expiry.
        for path in old_sinks.keys() - new_sink_paths:
            try:
                if old_sinks[path].remove():  # through its checked directory
                    log.info("removed %s (its profile was removed or changed)", path)
            except OSError as err:
                log.error("cannot remove %s: %s", path, err.strerror or err)

    def reload(self) -> None:
        """Re-read the configuration (SIGHUP, the file changed), in a task: the file is
        read in a thread, never on the loop (it may be a FIFO, or on a hung network
        filesystem). A reload asked for during one runs after it."""
        if self._reloading is not None:
            self._debounced("config", self.reload)
            return
        self._reloading = asyncio.ensure_future(self._reload())

        def done(task: asyncio.Task[None]) -> None:
            self._reloading = None
            if not task.cancelled() and task.exception() is not None:
                log.error("configuration reload failed: %s", task.exception())

        self._reloading.add_done_callback(done)

    async def _reload(self) -> None:
        """Re-read the configuration; a bad one is logged and the running one kept."""
        self._link.reloading()
        try:
            try:
                try:
                    config = await asyncio.wait_for(
                        run_in_thread(lambda: load(self.config_path)), CONFIG_READ_TIMEOUT
                    )
                except TimeoutError:
                    raise ConfigError(
                        f"{self.config_path}: not read within {CONFIG_READ_TIMEOUT:g} s "
                        "(a hung filesystem?)"
                    ) from None
                if config == self.config:
                    log.info("configuration unchanged")
                    return
                old_socket = (self.config.socket_path, self.config.socket.allow_uids)
                self._apply(config)
                if (config.socket_path, config.socket.allow_uids) != old_socket:
                    # Moving a listening socket under running clients is not worth
                    # its failure modes; say so instead of silently ignoring it.
                    log.warning(
                        "socket settings changed: they take effect when tokend restarts "
                        "(still serving %s)",
                        old_socket[0] or "no socket",
                    )
                self._reconfigure_proxy(config)
                await self._reconfigure_metadata(config)
            except (ConfigError, PermissionError) as err:
                log.error("configuration not reloaded, keeping the running one: %s", err)
                return
            if self._watcher is not None:
                self._watcher.set_targets(self._watch_targets())
            log.info("configuration reloaded: %d profile(s)", len(self.refreshers))
        finally:
            self._link.reloaded()

    def _reconfigure_proxy(self, config: Config) -> None:
        if self._proxy is not None and config.proxy.enabled:
            from tokend.proxy import ProxySettings

            moved = self._proxy.settings.env_path != config.proxy_env_path
            self._proxy.configure(ProxySettings.of(config))
            if moved:  # a new runtime dir: proxy.env goes there too
                self._background(self._proxy.write_env())
        elif self._proxy is not None or config.proxy.enabled:
            log.warning(
                "proxy.listen was %s: that takes effect when tokend restarts",
                "turned on" if config.proxy.enabled else "turned off",
            )

    # -- events -----------------------------------------------------------------------

    def refresh_all(self) -> None:
        log.info("refreshing every profile now")
        for r in self.refreshers.values():
            r.refresh_soon()
        self.id_tokens.refresh_all()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._debounced("config", self.reload))
        loop.add_signal_handler(signal.SIGUSR1, self.refresh_all)

    def _debounced(self, key: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` DEBOUNCE after the last call for ``key``, and at most DEBOUNCE_MAX
        after the first one of a burst."""
        loop = asyncio.get_running_loop()
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        first = self._first_asked.setdefault(key, loop.time())
        delay = max(0.0, min(DEBOUNCE, first + DEBOUNCE_MAX - loop.time()))

        def fire() -> None:
            self._timers.pop(key, None)
            self._first_asked.pop(key, None)
            fn()

        self._timers[key] = loop.call_later(delay, fire)

    def _watch_targets(self) -> list[Path]:
        """What the watcher must report, and (as a side effect) the lookups that
        :meth:`_on_path_changed` answers from: it runs for every event."""
        self._creds_by_path = {}
        for r in self.refreshers.values():
            for p in r.source.watched_paths:
                self._creds_by_path.setdefault(p, []).append(r)
        self._files = frozenset(
            [s.path for r in self.refreshers.values() for s in r.sinks]
            + ([self._proxy.settings.env_path] if self._proxy is not None else [])
            + [s.path for s in self.id_tokens.sinks()]
        )
        targets = [self.config.runtime_path]
        if self.config_path is not None:
            targets.append(self.config_path)
        # The socket being served (a reload does not move it), outside the runtime dir too.
        sock = self._server.path if self._server is not None else self.config.socket_path
        if sock is not None:
            targets.append(sock)
        targets.extend(s.path for s in self.id_tokens.sinks())
        for r in self.refreshers.values():
            targets.extend(s.path for s in r.sinks)
            targets.extend(r.source.watched_paths)
        if self._proxy is not None:
            targets.append(proxykeys.keys_path(self.config.state_path))
            targets.append(self._proxy.settings.env_path)
        return targets

    def _on_path_changed(self, path: Path) -> None:
        if self.config_path is not None and path == self.config_path:
            self._debounced("config", self.reload)
        if self._proxy is not None and path == proxykeys.keys_path(self.config.state_path):
            self._debounced("keys", lambda: self._background(self._reload_keys()))
        for r in self._creds_by_path.get(path, ()):
            self._debounced(
                f"creds:{r.name}", functools.partial(self._credentials_changed, r, path)
            )
        # Repair what was deleted: the runtime dir (or a directory on the way to it),
        # the socket (or a directory on the way), one of our files. Our own writes
        # (a rename onto each file) end with the file in place: nothing to repair, and
        # no work per write that grows with the number of profiles.
        runtime = self.config.runtime_path
        sock = self._server.path if self._server is not None else self.config.socket_path
        if (
            path == runtime
            or path in runtime.parents
            or (sock is not None and (path == sock or path in sock.parents))
            or (path in self._files and not os.path.lexists(path))
        ):
            self._debounced("repair", self._repair)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task whose failure is logged, not lost."""
        task = asyncio.ensure_future(coro)
        self._pending.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._pending.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task failed: %s", t.exception())

        task.add_done_callback(done)

    async def _metadata_id_token(self, profile: str, audience: str) -> str | Answer:
        """The metadata endpoint's ``…/identity?audience=`` (its ``IdTokenHook``): an ID
        token from the cache ``/v1/id_token`` answers from, waiting for a new audience's
        first one as long as the endpoint waits for a first access token."""
        from tokend.metadata import WAIT

        return await self.endpoints.id_token_value(profile, audience, WAIT)

    def _id_token_source(self, name: str) -> Source:
        """A new source for one ID token audience of profile ``name`` (each has its
        own credentials object and session)."""
        return Source(name, self.config.profile(name), timeout=self.config.timeout)

    def _credentials_changed(self, refresher: ProfileRefresher, path: Path) -> None:
        log.info("profile %s: %s changed, reloading credentials", refresher.name, path)
        refresher.refresh_soon(reload_credentials=True)
        self.id_tokens.credentials_changed(refresher.name)

    def _repair(self) -> None:
        """A sink or the runtime dir was deleted: recreate, and let refreshers rewrite."""
        try:
            prepare_paths(self.config)
        except (PermissionError, ConfigError) as err:
            log.error("cannot repair the runtime dir: %s", err)
            return
        for r in self.refreshers.values():
            r.poke()
        self.id_tokens.poke()
        if self._server is not None:
            self._background(self._server.restore())
        if self._proxy is not None and self._proxy.env_missing():
            self._background(self._proxy.write_env())
        if self._watcher is not None:
            self._watcher.set_targets(self._watch_targets())

    def _state_changed(self, refresher: ProfileRefresher) -> None:
        self.endpoints.state_changed(refresher)
        self._link.status_changed()


def run_once(config: Config) -> int:
    """``tokend run --once``: fetch every profile, write its sinks, report. Exit code.

    Refused while a daemon serves the socket (its files and ours would disagree). The
    files it writes are not removed when their token expires: nobody is left to do it.

    Raises:
        ConfigError: a daemon is running.
    """
    if config.socket_path is not None:
        refuse_if_served(config.socket_path)
    prepare_paths(config, socket=False)
    timeout = config.timeout
    worst = 0
    for name, pc in config.profiles.items():
        source = Source(name, config.profile(name), timeout=timeout)
        # The access token's files, then each configured ID token's (same credentials).
        jobs: list[tuple[str, TokenSource, list[FileSink]]] = [
            (name, source, make_sinks(config, name, pc))
        ]
        jobs += [
            (entry_name(name, audience), AudienceSource(source, audience), sinks)
            for audience, sinks in make_id_token_sinks(config, pc)
        ]
        for label, src, sinks in jobs:
            try:
                tok = asyncio.run(fetch_within(src, timeout))
            except (CredentialsError, RefreshError) as err:
                log.error("profile %s: %s", label, err)
                worst = 3
                continue
            now = clock.steady()
            for sink in sinks:
                try:
                    sink.write(tok, now)
                except OSError as err:
                    log.error("profile %s: cannot write %s: %s", label, sink.path, err.strerror)
                    worst = 1 if worst == 0 else worst
            log.info(
                "profile %s: wrote %s (%s, expires in %ds; no daemon runs to replace or "
                "remove it, so readers must check its expires_at)",
                label,
                ", ".join(str(s.path) for s in sinks),
                tok.fingerprint,
                tok.expires_in(now),
            )
    return worst
