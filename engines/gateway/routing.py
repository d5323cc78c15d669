"""Which model names the gateway serves, and how a name becomes an engine to talk to.

The names are those of ``ember models``: the starter, models the user added or
downloaded, the models of remote servers (``lab/qwen2.5``) and the models running
on the clusters the user added (``gpu-lab/starter``, Xinference's uid after the
cluster's name). A local model
that is not running is started on demand through the shared
:class:`~engines.running.manager.EngineManager` (its :meth:`serve` makes room
first and starts one engine however many requests ask at once). Blocking
calls: the HTTP layer runs them on a worker thread.
"""
from __future__ import annotations

import difflib
import logging
import time
from dataclasses import dataclass
from typing import Callable

from engines.chat import remotes
from engines.cluster import ops as clusters
from engines.models import catalog, records, store
from engines.running import launch
from engines.running.manager import EngineManager, Running

log = logging.getLogger(__name__)

#: Seconds the lists of installed and remote models are reused; a name not in them is looked up
#: afresh before it is refused, so a model downloaded a moment ago is served at once.
LIST_TTL = 30.0


@dataclass(frozen=True)
class Target:
    """Where one request goes: the engine's (or remote's) base URL and key, and the model id it knows."""

    name: str                  # the name the client used and gets back
    base_url: str              # ends in /v1
    api_key: str | None
    upstream_model: str        # what the upstream server calls the model
    local: bool                # an engine Ember runs (busy while streaming; unloads when idle)


@dataclass
class ModelNotServed(LookupError):
    """A request named a model the gateway does not serve; ``served`` is what it does serve."""

    name: str | None
    served: list[str]
    not_downloaded: bool = False  # a catalog model: known, but not on this computer yet

    def __str__(self) -> str:
        if self.name is None:
            return "The request names no model. Served here: " + _listing(self.served)
        if self.not_downloaded:
            return (f"The model '{self.name}' is not downloaded yet: run `ember pull {self.name}` or use "
                    f"Download in Ember's models window. Served here: " + _listing(self.served))
        close = difflib.get_close_matches(self.name, self.served, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"The model '{self.name}' is not served here.{hint} Served here: " + _listing(self.served)


def _listing(names: list[str]) -> str:
    return ", ".join(names) if names else "none (add or download a model in Ember first)"


class Router:
    """Names to engines. ``pinned``: serve that one model only (``ember serve MODEL``)."""

    def __init__(self, manager: EngineManager, pinned: str | None = None,
                 make_plan: Callable[[str], launch.LaunchPlan] = launch.default_plan,
                 remote_timeout: float = 3.0):
        self.manager, self.pinned, self.make_plan = manager, pinned, make_plan
        self.remote_timeout = remote_timeout
        self._cache: dict[str, tuple[float, object]] = {}

    def _cached(self, what: str, make: Callable[[], object], fresh: bool = False) -> object:
        """``make()`` reused for :data:`LIST_TTL` seconds: the model folders, the remotes file and the
        keyring are not read again for every request (a request's first token waited for them)."""
        now = time.monotonic()
        hit = self._cache.get(what)
        if fresh or hit is None or now - hit[0] > LIST_TTL:
            hit = self._cache[what] = (now, make())
        return hit[1]

    def _running_names(self) -> set[str]:
        names = {r.plan.model.name for r in self.manager.running()}
        return names & {self.pinned} if self.pinned else names

    def local_names(self, fresh: bool = False) -> list[str]:
        if self.pinned:
            return [self.pinned]
        names = list(self._cached("local", _installed_names, fresh))
        names += [r.plan.model.name for r in self.manager.running() if r.plan.model.name not in names]
        return names

    def remote_targets(self, fresh: bool = False) -> dict[str, Target]:
        if self.pinned:
            return {}
        return self._cached("remote", fresh=fresh, make=lambda: {
            ep.name: Target(ep.name, ep.base_url, ep.api_key, ep.model_id or ep.name, False)
            for ep in remotes.endpoints(self.remote_timeout)})

    def cluster_targets(self, fresh: bool = False) -> dict[str, Target]:
        """The models running on the user's clusters, as ``CLUSTER/uid``."""
        if self.pinned:
            return {}
        return self._cached("cluster", fresh=fresh, make=lambda: {
            ep.name: Target(ep.name, ep.base_url, ep.api_key, ep.model_id or ep.name, False)
            for ep in clusters.endpoints(self.remote_timeout)})

    def elsewhere(self, fresh: bool = False) -> dict[str, Target]:
        """Remote servers' models and clusters' running models (a remote's name wins a clash)."""
        return {**self.cluster_targets(fresh), **self.remote_targets(fresh)}

    def names(self) -> list[str]:
        """Every name a request may use, local first (what ``/v1/models`` lists)."""
        return self.local_names() + list(self.elsewhere())

    def choose(self, requested: str | None) -> str:
        """The served name for a request's ``model``: pinned servers take a missing name as theirs.
        Raises :class:`ModelNotServed`."""
        if requested is None and self.pinned:
            return self.pinned
        if requested is not None and requested in self._running_names():
            return requested  # the common case, without reading the model folders on every request
        for fresh in (False, True):  # from the lists as they were, then as they are now
            local = self.local_names(fresh)
            if requested in local:
                return requested
            if requested is not None and not self.pinned and requested in self.elsewhere(fresh):
                return requested
        if requested is not None and not self.pinned:
            # never a path: a request must not make Ember open a file the user did not add
            raise ModelNotServed(requested, self.names(), not_downloaded=_is_catalog_model(requested))
        raise ModelNotServed(requested, self.names() if not self.pinned else local)

    def target(self, name: str, timeout: float = 300.0) -> Target:
        """The engine for a chosen name, started (after making room) when it is not running.
        Raises what starting raises: PlanError, ParamError, ModelError, EngineStartError, DoesNotFit."""
        local = name in self._running_names() or name in self.local_names()
        remote = None if local else self.elsewhere().get(name)
        if remote is not None:
            return remote
        run: Running = self.manager.serve(name, lambda: self.make_plan(name), timeout)
        return Target(name, run.proc.base_url, run.proc.api_key, name, True)


def _installed_names() -> list[str]:
    names = [s.name for s in store.local_models(assemble_starter=False)]
    if store.STARTER not in names and store.starter_available():
        names.insert(0, store.STARTER)  # assembled from its package when first asked for
    return names + [n for n in records.ready_map() if n not in names]


def _is_catalog_model(name: str) -> bool:
    """A name the catalog knows (so: "not downloaded", not "unknown")."""
    try:
        catalog.resolve(name)
    except LookupError:
        return False
    return True
