"""Where the model is: a server the user runs (``llm_url``) or the embedded vLLM strop manages."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from strop.config import Settings
from strop.errors import StropError
from strop.serving.merge import policy_model_dir
from strop.serving.server import Progress, ServerRecord, VLLMServer


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint and the model to ask there."""

    base_url: str  # ends in /v1
    model: str
    api_key: str
    managed: bool  # True when strop started the server itself
    policy: str | None = None  # the adapter merged into the served model (serve.adapter_mode = merged)
    model_dir: str | None = None  # the model folder a managed server serves
    adapters_dir: Path | None = None  # where adapter names are looked up, for their served names

    def model_for(self, adapter: str | None) -> str:
        """The model name to request for ``adapter``: the served model itself when the adapter is merged into
        it, else the adapter's served name (its name and content hash)."""
        if adapter is None or adapter == self.policy:
            return self.model
        if self.adapters_dir is not None:
            from strop.serving.adapters import ADAPTER_META, Adapter

            folder = self.adapters_dir / adapter
            if (folder / ADAPTER_META).is_file():
                return Adapter(adapter, folder, {}).served_name
        return adapter

    def serving(self, adapter: str | None) -> Endpoint:
        """This endpoint asking for ``adapter`` (None: the served model)."""
        return replace(self, model=self.model_for(adapter)) if adapter else self


def connect(settings: Settings, progress: Progress | None = None) -> Endpoint:
    """Return a ready endpoint, starting the embedded server when no ``llm_url`` is configured."""
    if settings.llm_url:
        endpoint = _external(settings.llm_url, settings.llm_api_key.get_secret_value(), settings.llm_model,
                             "llm_url / STROP_LLM_URL", "unset STROP_LLM_URL to use the embedded vLLM")
        return replace(endpoint, adapters_dir=settings.adapters_dir)
    return managed_endpoint(settings, serve_policy(settings, progress))


def refreshed(settings: Settings, endpoint: Endpoint) -> Endpoint:
    """``endpoint`` as the embedded server is now. A promotion or rollback in another process (``strop improve
    --watch``) moves it to a new server with another address and model; a long-lived client follows it here
    before its next request, while the old server still drains."""
    if not endpoint.managed:
        return endpoint
    record = VLLMServer(settings).running()
    if record is None or (record.base_url, record.model_dir, record.policy) == (
            endpoint.base_url, endpoint.model_dir, endpoint.policy):
        return endpoint
    return managed_endpoint(settings, record)


def managed_endpoint(settings: Settings, record: ServerRecord) -> Endpoint:
    """The endpoint of a server strop started (``record``), asking for the model it serves."""
    return Endpoint(base_url=record.base_url, model=record.model, api_key=record.api_key or "EMPTY", managed=True,
                    policy=record.policy, model_dir=record.model_dir, adapters_dir=settings.adapters_dir)


def serve_policy(settings: Settings, progress: Progress | None = None) -> ServerRecord:
    """The embedded server, started if needed, serving the registry's policy (a swap first if it serves another).

    The registry is the truth: a swap killed after its switch but before the promotion was recorded is
    undone here, so the server never serves an adapter that was not promoted.
    """
    server = VLLMServer(settings)
    record = server.start(progress)
    model_dir, policy = policy_model_dir(settings, verify=False)
    if record.policy != policy or Path(record.model_dir) != model_dir:
        model_dir, policy = policy_model_dir(settings)
        record = server.swap(model_dir, policy, progress) or server.start(progress)
    return record


def judge_endpoint(settings: Settings, agent: Endpoint) -> Endpoint:
    """Where the LLM judge runs: ``[critic] llm_url`` if set, else the agent's server with its base model."""
    critic = settings.critic
    if critic.llm_url:
        return _external(critic.llm_url, critic.llm_api_key.get_secret_value(), critic.llm_model,
                         "critic.llm_url / STROP_CRITIC__LLM_URL", "unset it to judge with the agent's own model")
    return agent


def _external(url: str, api_key: str, model: str | None, setting: str, otherwise: str) -> Endpoint:
    url = url.rstrip("/")
    base_url = url if url.endswith("/v1") else f"{url}/v1"
    try:
        response = httpx.get(f"{base_url}/models", timeout=10.0,
                             headers={"Authorization": f"Bearer {api_key}"})
        response.raise_for_status()
        models = [m["id"] for m in response.json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise StropError(
            f"Cannot reach an OpenAI-compatible server at {url} ({setting}): {exc}",
            fix=f"Start that server or correct the URL; {otherwise}.",
        ) from exc
    if model and model not in models:
        raise StropError(f"Model {model!r} is not served at {url}; it serves {models}.",
                         fix=f"Set the model name beside {setting.split(' / ')[0]} to one of those.")
    if not models:
        raise StropError(f"The server at {url} lists no models.", fix="Load a model on that server.")
    return Endpoint(base_url=base_url, model=model or models[0], api_key=api_key, managed=False)
