"""The current policy: which model folder and adapter the server answers with, and switching it safely.

``serve.adapter_mode = merged`` (the CPU default): the active adapter is merged into a model folder and
served as a plain model, at the base model's speed. Promotion and rollback merge (if needed), start a
second server on the new folder, switch to it once healthy, drain and stop the old one, and only then
record the new active adapter: a merge that fails or a server that does not start leaves the old one
serving and nothing promoted. Candidates are trained as fresh LoRAs over the current policy (which is also
their DPO reference) and gated merged too, on a server started beside the current one for the gate.

``serve.adapter_mode = lora``: every adapter is a runtime LoRA beside the base model (GPU servers with many
adapters), trained further from its parent.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from strop.config import Settings
from strop.errors import StropError
from strop.serving import models
from strop.serving.adapters import (
    Adapter,
    Registry,
    load_adapter,
    requested_adapter,
    require_trained_on,
    resolve_adapter,
    trained_on_served,
)
from strop.serving.endpoint import Endpoint, connect, managed_endpoint
from strop.serving.merge import base_model_dir, ensure_merged, policy_model_dir
from strop.serving.server import Progress, VLLMServer

T = TypeVar("T")


def merged_mode(settings: Settings, endpoint: Endpoint) -> bool:
    """Whether the active adapter is served merged: so configured, and the server is the one strop manages."""
    return settings.serve.adapter_mode == "merged" and endpoint.managed and not settings.llm_url


def training_base(settings: Settings, registry: Registry, endpoint: Endpoint) -> tuple[Path, Adapter | None]:
    """The model folder the next candidate trains on (its DPO reference too) and the adapter it continues.

    merged: a fresh LoRA over the current policy's merged folder; lora: the base model, continuing the
    active adapter's LoRA.
    """
    active = registry.get(registry.active) if registry.active else None
    merged = merged_mode(settings, endpoint)
    if merged and active is not None:
        return ensure_merged(settings, active.name), None
    return models.model_dir(settings.resolved_models_dir).resolve(), None if merged else active


def ensure_loaded(settings: Settings, endpoint: Endpoint, adapter: str | None) -> Endpoint:
    """Make ``adapter`` (None: the current policy) servable at the endpoint and return the endpoint to use.

    A managed server is looked up again (it may have been restarted or swapped since ``endpoint`` was made)
    and brought to the registry's policy; a runtime LoRA is (re)loaded under its content-hashed name.

    Raises:
        StropError: when merged mode cannot serve ``adapter`` from the current policy's server.
    """
    if endpoint.managed:
        endpoint = connect(settings)
    if adapter is None or adapter == endpoint.policy:
        return endpoint
    wanted = Registry(settings.adapters_dir).get(adapter)
    require_trained_on(wanted, endpoint)
    load_adapter(endpoint, wanted)
    return endpoint


@contextlib.contextmanager
def candidate_endpoint(settings: Settings, endpoint: Endpoint, name: str,
                       progress: Progress | None = None) -> Iterator[Endpoint]:
    """Where the gate asks candidate ``name``: in merged mode, merged and served by a server beside the current
    one (at the base model's speed, stopped afterwards; clients keep using the current one); else loaded as a
    runtime LoRA on ``endpoint``.

    Raises:
        StropError: when the candidate cannot be merged, served or loaded.
    """
    if not merged_mode(settings, endpoint):
        load_adapter(endpoint, Registry(settings.adapters_dir).get(name))
        yield endpoint
        return
    if progress:
        progress(f"merging {name} and starting a server for it beside the current one")
    with VLLMServer(gate_serving(settings)).beside(ensure_merged(settings, name), name) as record:
        yield managed_endpoint(settings, record)


@contextlib.contextmanager
def evaluation_endpoint(settings: Settings, endpoint: Endpoint, requested: str | None,
                        progress: Progress | None = None) -> Iterator[tuple[str | None, Endpoint]]:
    """The adapter an evaluation answers with (``requested``: a name, None for the active one, ``"base"`` for
    none) and the endpoint to ask: the serving server, with the adapter loaded as a runtime LoRA where it is not
    the policy served. In merged mode the base model, or an adapter trained on another model than the served one
    (an earlier policy's candidate), cannot be served that way: it is merged and served beside for the evaluation,
    as the gate serves its candidate (with its n-gram speculation when answers are greedy), then stopped.

    Raises:
        StropError: when the adapter does not exist, or its server beside cannot be merged or started.
    """
    registry = Registry(settings.adapters_dir)
    name = requested_adapter(registry, requested)
    as_runtime_lora = name is not None and trained_on_served(registry.get(name), endpoint)
    if not merged_mode(settings, endpoint) or name == endpoint.policy or as_runtime_lora:
        yield resolve_adapter(settings, endpoint, requested), endpoint
        return
    if progress:
        progress(f"serving {name or 'the base model'} merged, beside the current policy")
    model_dir = ensure_merged(settings, name) if name else base_model_dir(settings)
    serving = gate_serving(settings) if settings.sampling.temperature == 0 else settings
    with VLLMServer(serving).beside(model_dir, name) as record:
        yield name, managed_endpoint(settings, record)


def gate_serving(settings: Settings) -> Settings:
    """``settings`` for the gate's servers beside: with ``improve.gate_ngram``, vLLM's n-gram speculation (a
    greedy answer is the same with or without it; sampled ones are not, so the serving server never has it)."""
    tokens = settings.improve.gate_ngram
    if not tokens:
        return settings
    speculation = json.dumps({"method": "ngram", "num_speculative_tokens": tokens, "prompt_lookup_max": 4,
                              "prompt_lookup_min": 2})
    extra = [*settings.serve.extra_args, "--speculative-config", speculation]
    return settings.model_copy(update={"serve": settings.serve.model_copy(update={"extra_args": extra})})


@contextlib.contextmanager
def current_gate_endpoint(settings: Settings, endpoint: Endpoint,
                          progress: Progress | None = None) -> Iterator[Endpoint]:
    """Where the gate asks the current policy: with ``improve.gate_ngram`` in merged mode, the policy served beside
    as the candidate is (the same server settings for both sides); else ``endpoint``."""
    if not settings.improve.gate_ngram or not merged_mode(settings, endpoint):
        yield endpoint
        return
    with _policy_beside(gate_serving(settings), endpoint, "a server with n-gram speculation for the current policy",
                        progress) as served:
        yield served


def rolls_on_copy(settings: Settings, endpoint: Endpoint) -> bool:
    """Whether rollouts are to sample from a copy of the policy in ``improve.rollout_dtype`` beside ``endpoint``."""
    return settings.improve.rollout_dtype != "serve" and merged_mode(settings, endpoint)


@contextlib.contextmanager
def rollout_endpoint(settings: Settings, endpoint: Endpoint, progress: Progress | None = None) -> Iterator[Endpoint]:
    """Where a round samples its rollouts: in merged mode with ``improve.rollout_dtype`` set to a dtype, the current
    policy served beside in it, without runtime LoRA (stopped afterwards; clients keep using the current server);
    else, or when that server does not start (said through ``progress``), ``endpoint``."""
    if not rolls_on_copy(settings, endpoint):
        yield endpoint
        return
    dtype = settings.improve.rollout_dtype
    sampler = settings.model_copy(update={"serve": settings.serve.model_copy(update={"dtype": dtype})})
    with _policy_beside(sampler, endpoint, f"a {dtype} copy of the current policy", progress) as served:
        yield served


@contextlib.contextmanager
def _policy_beside(settings: Settings, endpoint: Endpoint, what: str,
                   progress: Progress | None = None) -> Iterator[Endpoint]:
    """The current policy served beside ``endpoint`` by a server with ``settings`` for one job, stopped after it;
    ``endpoint`` itself when that server does not start (said through ``progress``): a faster server is not
    worth a failed job."""
    progress = progress or (lambda _text: None)
    progress(f"starting {what}")
    model_dir, policy = policy_model_dir(settings)
    with contextlib.ExitStack() as stack:
        try:
            served = managed_endpoint(settings, stack.enter_context(VLLMServer(settings).beside(model_dir, policy)))
        except StropError as exc:
            progress(f"{what} did not start ({exc.message}); using the serving server")
            served = endpoint
        yield served


def activate(settings: Settings, endpoint: Endpoint, name: str | None, event: str, reason: str,
             progress: Progress | None = None) -> None:
    """Make ``name`` (None: the base model) the active adapter: in merged mode, merge and swap the server first.

    Idempotent (a resumed promotion neither swaps nor records twice). A failure leaves the old server serving
    and the registry as it was.
    """
    registry = Registry(settings.adapters_dir)
    if name is not None:
        registry.get(name)
    if merged_mode(settings, endpoint):
        model_dir = ensure_merged(settings, name) if name else base_model_dir(settings)
        VLLMServer(settings).swap(model_dir, name, progress)
    registry.set_active(name, event, reason)


def switch_to(settings: Settings, endpoint: Endpoint, requested: str, event: str, reason: str,
              progress: Progress | None = None) -> str | None:
    """Make ``requested`` (``"base"``: the base model) active by hand: merged mode swaps the server to it; lora
    mode loads it before agents switch to it. Returns the adapter now active."""
    name = None if requested == "base" else requested
    if not merged_mode(settings, endpoint) and name is not None:
        load_adapter(ensure_loaded(settings, endpoint, None), Registry(settings.adapters_dir).get(name))
    activate(settings, endpoint, name, event, reason, progress)
    return name


class OnDemand(Generic[T]):
    """The value of ``opener()``, entered in ``stack`` the first time it is asked for: a server beside takes
    seconds to start, and a resumed job may have nothing left to ask it."""

    def __init__(self, stack: contextlib.ExitStack, opener: Callable[[], contextlib.AbstractContextManager[T]]):
        self._stack, self._opener, self._value = stack, opener, []

    def __call__(self) -> T:
        if not self._value:
            self._value.append(self._stack.enter_context(self._opener()))
        return self._value[0]

    @property
    def started(self) -> bool:
        return bool(self._value)
