"""Where the model is: a server the user runs (``llm_url``) or the embedded vLLM strop manages."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from strop.config import Settings
from strop.errors import StropError
from strop.serving.server import Progress, VLLMServer


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint and the model to ask there."""

    base_url: str  # ends in /v1
    model: str
    api_key: str
    managed: bool  # True when strop started the server itself


def connect(settings: Settings, progress: Progress | None = None) -> Endpoint:
    """Return a ready endpoint, starting the embedded server when no ``llm_url`` is configured."""
    if settings.llm_url:
        return _external(settings.llm_url, settings.llm_api_key.get_secret_value(), settings.llm_model,
                         "llm_url / STROP_LLM_URL", "unset STROP_LLM_URL to use the embedded vLLM")
    record = VLLMServer(settings).start(progress)
    return Endpoint(base_url=record.base_url, model=record.model, api_key="EMPTY", managed=True)


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
