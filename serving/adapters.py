"""The adapter registry: trained LoRA adapters under ``<state>/adapters/``, the active one, and its history.

An adapter folder appears only once complete (it is trained into a temporary folder and renamed), and
holds ``strop-adapter.json``: base model checksum, data checksum, training config, metrics and parent.
``registry.json`` names the active adapter (agents use it) and lists every promotion and rollback with
its reason; it is replaced atomically, so a crash leaves the old or the new registry, never half of one.

Serving: an adapter is hot-loaded into the running vLLM (``/v1/load_lora_adapter``) beside the base model
and earlier adapters, so requests in flight on the old one finish undisturbed. It is served under its name
and content hash (``v3-1a2b3c4d5e6f``): two state folders sharing one server both have a ``v1``, and each
must get its own weights. In ``serve.adapter_mode = merged`` the active adapter is instead merged into the
model the server serves (see ``merge.py`` and ``policy.py``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from strop.errors import StropError
from strop.files import write_atomic

if TYPE_CHECKING:
    from strop.serving.endpoint import Endpoint

ADAPTER_META = "strop-adapter.json"
REGISTRY = "registry.json"


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    meta: dict[str, Any]

    @property
    def parent(self) -> str | None:
        return self.meta.get("parent")

    @property
    def served_name(self) -> str:
        """The name the server knows these weights by: the adapter's name and its content hash."""
        return f"{self.name}-{adapter_digest(self)[:12]}"


_DIGESTS: dict[tuple[str, int, int], str] = {}


def adapter_digest(adapter: Adapter) -> str:
    """SHA-256 over the adapter's config and weight files (cached while the files are unchanged)."""
    files = sorted(p for p in adapter.path.iterdir()
                   if p.is_file() and (p.name == "adapter_config.json" or p.suffix in (".safetensors", ".bin")))
    stamp = (str(adapter.path.resolve()), *(max(((p.stat().st_mtime_ns, p.stat().st_size) for p in files),
                                                default=(0, 0))))
    if stamp not in _DIGESTS:
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        _DIGESTS[stamp] = digest.hexdigest()
    return _DIGESTS[stamp]


class Registry:
    """Adapters on disk and which one agents use."""

    def __init__(self, root: Path):
        self.root = root

    def adapters(self) -> list[Adapter]:
        """Complete adapters, oldest first."""
        found = []
        for meta_path in self.root.glob(f"*/{ADAPTER_META}"):
            try:
                found.append(Adapter(meta_path.parent.name, meta_path.parent, json.loads(meta_path.read_text())))
            except (OSError, json.JSONDecodeError):
                continue  # unreadable metadata: never offered for use
        return sorted(found, key=lambda a: a.meta.get("created_at", 0.0))

    def get(self, name: str) -> Adapter:
        for adapter in self.adapters():
            if adapter.name == name:
                return adapter
        known = ", ".join(a.name for a in self.adapters()) or "none yet"
        raise StropError(f"No adapter named {name!r} in {self.root}.",
                         fix=f"Pick one of: {known} (`strop adapters list`).")

    def next_name(self) -> str:
        taken = {p.name for p in self.root.glob("v*")}
        number = 1
        while f"v{number}" in taken:
            number += 1
        return f"v{number}"

    def lineage(self, name: str) -> list[str]:
        """``name``, its parent, the parent's parent, ... back to the base model."""
        by_name = {a.name: a for a in self.adapters()}
        chain = []
        while name and name in by_name and name not in chain:
            chain.append(name)
            name = by_name[name].parent
        return chain

    # -- the active adapter ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        path = self.root / REGISTRY
        if not path.exists():
            return {"active": None, "history": []}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise StropError(f"The adapter registry {path} is unreadable ({exc}).",
                             fix="Restore it from a backup, or delete it to serve the base model.") from exc

    @property
    def active(self) -> str | None:
        return self._state()["active"]

    @property
    def history(self) -> list[dict[str, Any]]:
        return self._state()["history"]

    def set_active(self, name: str | None, event: str, reason: str) -> None:
        """Make ``name`` (None: the base model) the active adapter and record why.

        Idempotent: making the active adapter active again (a promotion resumed after a kill) records nothing,
        so the rollback target stays the adapter before it.
        """
        if name is not None:
            self.get(name)
        state = self._state()
        if state["active"] == name and state["history"]:
            return
        state["history"].append({"event": event, "adapter": name, "previous": state["active"],
                                 "reason": reason, "at": time.time()})
        state["active"] = name
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / REGISTRY, json.dumps(state, indent=2))

    def previous(self) -> str | None:
        """What was active before the current adapter was promoted (the rollback target)."""
        active = self.active
        for entry in reversed(self.history):
            if entry["adapter"] == active and entry["event"] == "promote" and entry["previous"] != active:
                return entry["previous"]
        return None

    def record_merge(self, name: str, entry: dict[str, Any]) -> None:
        """Keep where adapter ``name`` was merged, with the merged folder's checksum and lineage."""
        state = self._state()
        state.setdefault("merged", {})[name] = entry | {"lineage": entry.get("lineage", {}) | {
            "chain": self.lineage(name)}}
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / REGISTRY, json.dumps(state, indent=2))


# -- serving ---------------------------------------------------------------------------------

def served_models(endpoint: Endpoint) -> list[str]:
    response = httpx.get(f"{endpoint.base_url}/models", headers=_auth(endpoint), timeout=10.0)
    response.raise_for_status()
    return [m["id"] for m in response.json()["data"]]


def load_adapter(endpoint: Endpoint, adapter: Adapter, timeout_s: float = 120.0) -> float:
    """Hot-load ``adapter`` into the server (no restart) unless these weights are served already; returns seconds.

    The adapter is served as :attr:`Adapter.served_name`, so another state folder's adapter of the same name
    is never taken for this one.

    Raises:
        StropError: with the server's own words when it refuses the adapter.
    """
    began = time.perf_counter()
    name = adapter.served_name
    try:
        if name in served_models(endpoint):
            return 0.0
        response = httpx.post(f"{endpoint.base_url}/load_lora_adapter", headers=_auth(endpoint), timeout=timeout_s,
                              json={"lora_name": name, "lora_path": str(adapter.path.resolve())})
    except httpx.HTTPError as exc:
        raise StropError(f"Cannot reach the model server at {endpoint.base_url} to load adapter {adapter.name}: "
                         f"{exc}", fix="Start the server (`strop serve start`) and try again.") from exc
    if response.status_code != 200:
        raise StropError(f"The model server refused adapter {adapter.name} ({response.status_code}): "
                         f"{response.text[:300]}",
                         fix="The server needs LoRA enabled with a rank >= the adapter's (serve.max_lora_rank) "
                             "and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; the adapter path must be readable by it.")
    return time.perf_counter() - began


def unload_adapter(endpoint: Endpoint, name: str) -> None:
    """Drop an adapter the server no longer needs to hold (unknown names are ignored)."""
    httpx.post(f"{endpoint.base_url}/unload_lora_adapter", headers=_auth(endpoint), timeout=60.0,
               json={"lora_name": name})


def _auth(endpoint: Endpoint) -> dict[str, str]:
    return {"Authorization": f"Bearer {endpoint.api_key}"}


def resolve_adapter(settings, endpoint: Endpoint, requested: str | None) -> str | None:
    """The adapter to answer with: ``requested``, or the active one when None; ``"base"`` means none.

    The adapter is hot-loaded into the server first if it is not served yet (e.g. after a restart). When the
    server serves an adapter merged into its model (``endpoint.policy``), that one needs no loading, and a
    runtime LoRA is served only over the model it was trained on.
    """
    registry = Registry(settings.adapters_dir)
    name = requested_adapter(registry, requested)
    if name is None and endpoint.policy is not None:
        raise StropError(f"The server serves adapter {endpoint.policy} merged into its model; the base model "
                         "is not served beside it.",
                         fix="Roll back to the base model (`strop adapters rollback`), or set "
                             "serve.adapter_mode = lora to serve adapters beside the base model.")
    if name is not None and name != endpoint.policy:
        adapter = registry.get(name)
        require_trained_on(adapter, endpoint)
        load_adapter(endpoint, adapter)
    return name


def requested_adapter(registry: Registry, requested: str | None) -> str | None:
    """``requested`` by name (checked to exist), the active adapter for None, no adapter for ``"base"``."""
    name = registry.active if requested is None else (None if requested == "base" else requested)
    if name is not None:
        registry.get(name)
    return name


def trained_on_served(adapter: Adapter, endpoint: Endpoint) -> bool:
    """Whether the endpoint serves the model ``adapter`` was trained on (or either is not known)."""
    trained_on, served = adapter.meta.get("base_model"), endpoint.model_dir
    return not (trained_on and served) or Path(trained_on).resolve() == Path(served).resolve()


def require_trained_on(adapter: Adapter, endpoint: Endpoint) -> None:
    """A runtime LoRA changes the model it was trained on; over another model it would serve other weights."""
    if not trained_on_served(adapter, endpoint):
        raise StropError(
            f"Adapter {adapter.name} was trained on {adapter.meta['base_model']}, but the server serves "
            f"{endpoint.model_dir} "
            f"(the policy {endpoint.policy or 'base model'}).",
            fix=f"Make it active (`strop adapters use {adapter.name}`) to serve it merged, or set "
                "serve.adapter_mode = lora.")
