"""The model registry: which models and versions the repository holds, which of them serve, and their lifecycle.

Versions: each model serves the newest version that passes its load-time checks (or the pinned one). At start an
unpinned model whose newest version is refused falls back to the next older one. ``rescan()`` (``--poll-s``,
SIGHUP) loads models and versions added since; a newer version replaces the serving one only after it passed every
check, the replaced version finishes the requests that hold it, and a refused version is retried only once its
files change. Models or versions deleted from disk keep serving from memory until the next restart.

Model control (``config.model_control``, Triton's modes): ``poll`` is the above; ``none`` loads at start and never
looks at the repository again; ``explicit`` loads only the models of ``config.models`` at start (none when it is
empty) and then what :meth:`ModelRegistry.load` and :meth:`ModelRegistry.unload` ask for — the only way anything
changes in that mode, and refused in the others. A load runs the same checks as start-up (sha256, golden outputs)
on the newest version (or the pinned one), falls back to older ones while none serves, and never replaces a serving
version with one that failed; an unload refuses new requests, lets those holding the model finish (at most
``grace_s``), then frees it. Loads, unloads and rescans run one at a time (``_lock``), each shielded from its
caller's cancellation so that a client that hangs up never leaves a model half loaded.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from serving.config import ServerConfig
from serving.contract import layout
from serving.contract.manifest import ModelManifest
from serving.errors import InvalidInput, ModelNotFound, ModelRejected, NotReady
from serving.runtime import loader
from serving.runtime.batcher import DynamicBatcher
from serving.runtime.fairshare import Holdings
from serving.runtime.loader import GoldenResult, LoadedModel
from serving.runtime.metrics import Metrics
from serving.runtime.predictor import Predictor

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    LOADING = "LOADING"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"


@dataclass(eq=False)  # an entry is itself, whatever its fields: compared and hashed by identity
class ServedModel:
    """One model of the repository: the chosen version, its state and, once it passed its checks, its runtime."""

    name: str
    version: int
    versions: list[int]
    path: Path
    state: ModelState = ModelState.LOADING
    reason: str = ""
    manifest: ModelManifest | None = None
    predictor: Predictor | None = None
    batcher: DynamicBatcher | None = None
    golden: GoldenResult | None = None
    verification: dict = field(default_factory=dict)
    active: int = 0  # images of the requests holding this entry: admitted and not finished
    holders: Holdings = field(default_factory=Holdings)  # of those, each client's (serving.runtime.fairshare)
    unloading: bool = False  # an unload is draining it (its state is NOT_SERVING meanwhile)


@dataclass(frozen=True)
class _Attempt:
    """One try at loading a version: the model that passed, or why it was refused."""

    version: int
    path: Path
    manifest: ModelManifest | None
    loaded: LoadedModel | None
    reason: str = ""


# Awaited on every state change; None: the server's overall state may have changed (loading finished).
StateListener = Callable[[ServedModel | None], Awaitable[None]]


def shown(text: str, limit: int = 64) -> str:
    """A client-chosen string as messages quote it: repr, cut at ``limit`` characters (error messages travel in
    gRPC trailers, which clients cap at 16 KiB: a long name must not turn NOT_FOUND into a transport error)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def parse_version(version: str | int | None) -> int | None:
    """A requested version: '' / '0' / 0 / None → None (the served version); a version folder's name → its number;
    anything else → ``ModelNotFound``."""
    if version in (None, "", "0", 0):
        return None
    if isinstance(version, int):
        if version < 0:
            raise ModelNotFound(f"no model version {version}")
        return version
    number = layout.parse_version(version)
    if number is None:
        raise ModelNotFound(f"no model version {shown(version)} (versions are integers)")
    return number


class ModelRegistry:
    """The served models by name; transports read it through :class:`~serving.runtime.dataplane.DataPlane`."""

    def __init__(self, config: ServerConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.loading_done = False
        self.shutting_down = False
        self._listeners: list[StateListener] = []
        self._lock = asyncio.Lock()  # one load or rescan at a time
        # (name, version) → (fingerprint of its files, reason) for versions that failed their checks
        self._refused: dict[tuple[str, int], tuple[tuple, str]] = {}
        self._retiring: dict[ServedModel, asyncio.Task[None]] = {}
        self._control: set[asyncio.Task] = set()  # loads and unloads asked for, running shielded
        self.unloaded: dict[str, int] = {}  # name → the version it served, for the models unloaded on request
        self._pinned: dict[str, int | None] = dict(layout.parse_selector(s) for s in config.models)
        if config.model_control == "explicit" and not config.models:
            layout.discover(config.repository)  # the folder must exist; loading what is in it waits for requests
            return
        chosen = layout.select(config.repository, list(config.models))
        for name, (version, versions) in chosen.items():
            self.models[name] = ServedModel(name, version, versions, Path(config.repository) / name / str(version))
        if not self.models:
            raise FileNotFoundError(f"no model in {config.repository} (expected NAME/VERSION/model.json)")

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def on_state_change(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    async def _set_state(self, model: ServedModel, state: ModelState, reason: str = "") -> None:
        model.state, model.reason = state, reason
        if self.metrics is not None:
            self.metrics.model_ready.labels(model.name, str(model.version)).set(state is ModelState.SERVING)
        for listener in self._listeners:
            await listener(model)

    async def load_all(self) -> None:
        """Load and self-check every model, one after the other, off the event loop."""
        async with self._lock:
            for model in list(self.models.values()):
                if self.shutting_down:
                    break
                await self._update(model.name, model.versions)
        self.loading_done = True
        for listener in self._listeners:
            await listener(None)

    async def rescan(self) -> None:
        """Load the models and versions added to the repository since the last look (after loading finished); only
        under ``--model-control poll``."""
        if not self.loading_done or self.shutting_down or self.config.model_control != "poll":
            return
        loop = asyncio.get_running_loop()
        async with self._lock:
            try:
                found = await loop.run_in_executor(None, layout.discover, self.config.repository)
            except OSError as e:
                log.warning("repository rescan failed: %s", e)
                return
            for name, versions in found.items():
                if self.shutting_down:
                    return
                if not self._pinned or name in self._pinned:
                    await self._update(name, versions)

    def _candidates(self, name: str, versions: list[int]) -> list[int]:
        """Versions worth trying now, newest first: the pinned one, or those newer than the serving one (all of
        them while none serves); a refused version only once its files changed."""
        model = self.models.get(name)
        pinned = self._pinned.get(name)
        if pinned is not None:
            wanted = [pinned] if pinned in versions else []
        elif model is not None and model.state is ModelState.SERVING:
            wanted = [v for v in versions if v > model.version]
        else:
            wanted = list(versions)
        return [v for v in sorted(wanted, reverse=True) if not self._refused_unchanged(name, v)]

    def _refused_unchanged(self, name: str, version: int) -> bool:
        refused = self._refused.get((name, version))
        path = Path(self.config.repository) / name / str(version)
        return refused is not None and refused[0] == layout.fingerprint(path)

    async def _update(self, name: str, versions: list[int], new: str = "appeared in the repository") -> list[_Attempt]:
        """Bring one model up to date: try its candidate versions, newest first, and serve the first that passes.
        Returns the versions refused on the way."""
        model = self.models.get(name)
        if model is None:  # added to the repository while running, or loaded on request
            model = self.models[name] = ServedModel(name, versions[-1], list(versions),
                                                    Path(self.config.repository) / name / str(versions[-1]))
            log.info("model %s %s (versions %s)", name, new, versions)
            await self._set_state(model, ModelState.LOADING)
        model.versions = list(versions)
        failures: list[_Attempt] = []
        for version in self._candidates(name, versions):
            if self.shutting_down:
                return failures
            attempt = await self._try(name, version)
            if self.shutting_down:  # the batchers are closing: serve nothing new
                return failures
            if attempt.loaded is not None:
                await self._activate(model, attempt)
                break
            failures.append(attempt)
            if model.manifest is None and attempt.manifest is not None:
                model.manifest = attempt.manifest  # what the folder says, for GetModel on a refused model
        current = self.models[name]
        if current.state is ModelState.SERVING:
            newer = [(v, r) for (n, v), (_, r) in sorted(self._refused.items()) if n == name and v > current.version
                     and v in versions]
            current.reason = "; ".join(f"version {v} refused: {r}" for v, r in reversed(newer))
            if failures:
                log.error("model %s serves version %d; %s", name, current.version, current.reason,
                          extra={"model": name, "version": current.version})
        elif failures:
            reason = failures[0].reason if len(failures) == 1 else "; ".join(
                f"version {a.version}: {a.reason}" for a in failures)
            await self._set_state(current, ModelState.NOT_SERVING, reason)
        return failures

    async def _try(self, name: str, version: int) -> _Attempt:
        """Load and check one version off the event loop; a refusal is logged and remembered with the files' state."""
        path = Path(self.config.repository) / name / str(version)
        stamp = layout.fingerprint(path)
        manifest: ModelManifest | None = None
        try:
            manifest = loader.read_manifest(path)
            loaded = await asyncio.get_running_loop().run_in_executor(None, self._load_version, path, manifest)
            self._refused.pop((name, version), None)
            return _Attempt(version, path, manifest, loaded)
        except ModelRejected as e:
            reason = str(e)
            log.error("model %s version %d refused: %s", name, version, e, extra={"model": name, "version": version})
        except Exception as e:
            reason = f"load failed: {type(e).__name__}: {e}"
            log.exception("model %s version %d failed to load", name, version,
                          extra={"model": name, "version": version})
        self._refused[(name, version)] = (stamp, reason)
        return _Attempt(version, path, manifest, None, reason)

    def _load_version(self, path: Path, manifest: ModelManifest) -> LoadedModel:
        return loader.load_model(path, device=self.config.device, threads=self.config.threads,
                                 max_pixels=self.config.max_pixels, manifest=manifest,
                                 instances=self.config.instances)

    async def _activate(self, old: ServedModel, attempt: _Attempt) -> None:
        """Serve a version that passed its checks. The entry is replaced, not edited: a request that already holds
        the old one finishes on the old predictor and batcher, which close once nobody holds them."""
        loaded = attempt.loaded
        assert loaded is not None
        assert attempt.manifest is not None
        predictor = loaded.predictor
        holdings = Holdings(self.config.max_admitted)
        batcher = DynamicBatcher(
            [functools.partial(predictor.run, max_batch=self.config.max_batch, instance=i)
             for i in range(predictor.instances)], name=old.name,
            max_batch=self.config.max_batch,
            max_delay_s=self.config.max_queue_delay_ms / 1000, max_queue=self.config.max_queue,
            metrics=self.metrics, holdings=holdings if self.config.client_share > 0 else None,
        )
        batcher.start()
        model = ServedModel(old.name, attempt.version, old.versions, attempt.path, ModelState.LOADING,
                            manifest=attempt.manifest, predictor=loaded.predictor, batcher=batcher,
                            golden=loaded.golden, verification=loaded.verification, holders=holdings)
        self.models[old.name] = model
        if old.batcher is not None:
            log.info("model %s: version %d replaces version %d", old.name, model.version, old.version,
                     extra={"model": old.name, "version": model.version})
            if self.metrics is not None and old.version != model.version:
                self.metrics.model_ready.labels(old.name, str(old.version)).set(0)
            self._retiring[old] = asyncio.get_running_loop().create_task(self._retire(old))
        await self._set_state(model, ModelState.SERVING)

    async def _retire(self, old: ServedModel) -> None:
        """Close a replaced version once the requests holding it finished (at most ``grace_s`` later)."""
        try:
            await self._close_when_idle(old)
        finally:
            self._retiring.pop(old, None)

    async def _close_when_idle(self, model: ServedModel) -> None:
        """Close an entry's batcher once the requests holding it finished (at most ``grace_s`` later)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + max(self.config.grace_s, 1.0)
        while model.active and loop.time() < until:
            await asyncio.sleep(0.05)
        if model.active:
            log.warning("model %s version %d: closing with %d requests still running", model.name, model.version,
                        model.active)
        if model.batcher is not None:
            await model.batcher.close()

    # ---- model control (--model-control explicit) --------------------------------------------------------------
    async def on_disk(self) -> dict[str, list[int]]:
        """Model name → its versions, as the repository folder holds them now (read off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(None, layout.discover, self.config.repository)

    def _check_control(self, name: str) -> None:
        if self.config.model_control != "explicit":
            # Triton's words first (tools match them), then ours; Triton answers UNAVAILABLE too.
            raise NotReady(f"explicit model load / unload is not allowed with --model-control "
                           f"{self.config.model_control}: start the server with --model-control explicit")
        if not layout.is_model_name(name or ""):  # never a path: "../x" or "a/b" must not reach the file system
            raise ModelNotFound(f"no model {shown(name)} in the repository (a model name is a folder name: "
                                f"{layout.NAME_PATTERN})")

    async def _shielded(self, work: Awaitable[ServedModel | None]) -> ServedModel | None:
        """Run ``work`` to its end even if the caller is cancelled (a client hanging up mid-load); ``close()``
        cancels it at shutdown."""
        task = asyncio.ensure_future(work)
        self._control.add(task)
        task.add_done_callback(self._control.discard)
        return await asyncio.shield(task)

    async def load(self, name: str) -> ServedModel:
        """Load ``name`` from the repository, or reload it: the newest version (or the pinned one) after the same
        checks as at start. A model that serves keeps serving when no newer version passes; ``ModelRejected`` says
        why. ``ModelNotFound`` for a name the repository does not hold."""
        self._check_control(name)
        model = await self._shielded(self._load(name))
        assert model is not None
        return model

    async def _load(self, name: str) -> ServedModel:
        async with self._lock:
            if self.shutting_down:
                raise NotReady("the server is shutting down")
            found = await self.on_disk()
            if name not in found:
                raise ModelNotFound(f"no model {shown(name)} in the repository (it has: {', '.join(found) or 'none'})")
            versions = found[name]
            pinned = self._pinned.get(name)
            if pinned is not None and pinned not in versions:
                raise ModelNotFound(f"model {name!r}: the pinned version {pinned} (--models {name}:{pinned}) is not "
                                    f"in the repository (versions: {versions})")
            for key in [k for k in self._refused if k[0] == name]:
                del self._refused[key]  # asked for explicitly: try again even a version refused before
            failures = await self._update(name, versions, new="is loading on request")
            self.unloaded.pop(name, None)
            model = self.models[name]
            if model.state is not ModelState.SERVING:
                raise ModelRejected(f"model {name!r} failed to load: {model.reason or 'shutting down'}")
            if failures:  # a newer version was refused: the one that passed serves, and the caller hears why
                refused = "; ".join(f"version {a.version} refused: {a.reason}" for a in failures)
                raise ModelRejected(f"model {name!r}: {refused}; version {model.version} serves")
            log.info("model %s loaded on request: version %d serves", name, model.version,
                     extra={"model": name, "version": model.version})
            return model

    async def unload(self, name: str) -> None:
        """Stop serving ``name``: new requests are refused at once (UNAVAILABLE), those holding it finish (at most
        ``grace_s``), then its sessions are freed. Unloading a model that is not loaded does nothing;
        ``ModelNotFound`` for a name the server and the repository do not know."""
        self._check_control(name)
        await self._shielded(self._unload(name))

    async def _unload(self, name: str) -> None:
        async with self._lock:
            model = self.models.get(name)
            if model is None:
                if name not in self.unloaded and name not in await self.on_disk():
                    raise ModelNotFound(f"no model {shown(name)} in the repository or on this server")
                return
            model.unloading = True
            await self._set_state(model, ModelState.NOT_SERVING, "unloading")
            await self._close_when_idle(model)
            del self.models[name]
            self.unloaded[name] = model.version
            log.info("model %s version %d unloaded on request", name, model.version,
                     extra={"model": name, "version": model.version})
            for listener in self._listeners:
                await listener(None)

    @property
    def ready(self) -> bool:
        """Serving as a whole: loading finished, not shutting down, and at least one model passed its checks — or,
        under ``--model-control explicit``, no model is held at all (none asked for at start, or all unloaded:
        Triton's rule, nothing asked for has failed)."""
        return (self.loading_done and not self.shutting_down
                and (not self.models or any(m.state is ModelState.SERVING for m in self.models.values())))

    async def close(self) -> None:
        self.shutting_down = True
        for task in [*self._control, *self._retiring.values()]:
            task.cancel()
        await asyncio.gather(*self._control, *self._retiring.values(), return_exceptions=True)
        for model in [*self.models.values(), *self._retiring]:
            if model.batcher is not None:
                await model.batcher.close()

    # ---- lookups ---------------------------------------------------------------------------------------------
    def find(self, name: str, version: str | int | None = None) -> ServedModel:
        """The model entry, whatever its state; ``ModelNotFound`` for an unknown name or version, ``NotReady`` for a
        model unloaded on request."""
        if not name:
            raise InvalidInput("no model name given")
        model = self.models.get(name)
        if model is None:
            if name in self.unloaded:  # as Triton: a model unloaded on request is unavailable, not unknown
                raise NotReady(f"model {name!r} is unloaded (load it again: RepositoryModelLoad, "
                               f"python -m serving models load {name})")
            raise ModelNotFound(f"model {shown(name)} not found (this server has: "
                                f"{', '.join(sorted(self.models)) or 'none'})")
        wanted = parse_version(version)
        if wanted is not None and wanted != model.version:
            if wanted in model.versions:
                raise ModelNotFound(f"model {name!r} version {wanted} is not loaded: this server serves version "
                                    f"{model.version} (pin another with --models {name}:{wanted})")
            raise ModelNotFound(f"model {name!r} has no version {wanted} (versions: {model.versions})")
        return model

    def get(self, name: str, version: str | int | None = None) -> ServedModel:
        """The model, ready to answer; ``NotReady`` while it loads or after it was refused."""
        model = self.find(name, version)
        # No check of shutting_down here: a request gRPC accepted before the shutdown is served during the grace
        # period (gRPC itself refuses new ones); the batchers refuse only once they are closed.
        if model.state is ModelState.LOADING:
            raise NotReady(f"model {name!r} is still loading")
        if model.state is ModelState.NOT_SERVING:
            raise NotReady(f"model {name!r} is not serving: {model.reason}")
        return model
