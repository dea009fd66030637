"""The adapter registry: trained LoRA adapters under ``<state>/adapters/``, the active one, and its history.

An adapter folder appears only once complete (it is trained into a temporary folder and renamed), and
holds ``strop-adapter.json``: base model checksum, data checksum, training config, metrics and parent.
``registry.json`` names the active adapter (agents use it) and lists every promotion and rollback with
its reason; it is replaced atomically, so a crash leaves the old or the new registry, never half of one.

Serving: an adapter is hot-loaded into the running vLLM under its own name (``/v1/load_lora_adapter``),
beside the base model and earlier adapters, so requests in flight on the old one finish undisturbed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from strop.errors import StropError
from strop.files import write_atomic
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
        """Make ``name`` (None: the base model) the active adapter and record why."""
        if name is not None:
            self.get(name)
        state = self._state()
        state["history"].append({"event": event, "adapter": name, "previous": state["active"],
                                 "reason": reason, "at": time.time()})
        state["active"] = name
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / REGISTRY, json.dumps(state, indent=2))

    def previous(self) -> str | None:
        """What was active before the current adapter was promoted (the rollback target)."""
        active = self.active
        for entry in reversed(self.history):
            if entry["adapter"] == active and entry["event"] == "promote":
                return entry["previous"]
        return None


# -- serving ---------------------------------------------------------------------------------

def served_models(endpoint: Endpoint) -> list[str]:
    response = httpx.get(f"{endpoint.base_url}/models", headers=_auth(endpoint), timeout=10.0)
    response.raise_for_status()
    return [m["id"] for m in response.json()["data"]]


def load_adapter(endpoint: Endpoint, adapter: Adapter, timeout_s: float = 120.0) -> float:
    """Hot-load ``adapter`` into the server (no restart) unless it is served already; returns seconds taken.

    Raises:
        StropError: with the server's own words when it refuses the adapter.
    """
    began = time.perf_counter()
    try:
        if adapter.name in served_models(endpoint):
            return 0.0
        response = httpx.post(f"{endpoint.base_url}/load_lora_adapter", headers=_auth(endpoint), timeout=timeout_s,
                              json={"lora_name": adapter.name, "lora_path": str(adapter.path.resolve())})
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

    The adapter is hot-loaded into the server first if it is not served yet (e.g. after a restart).
    """
    registry = Registry(settings.adapters_dir)
    name = registry.active if requested is None else (None if requested == "base" else requested)
    if name is not None:
        load_adapter(endpoint, registry.get(name))
    return name
