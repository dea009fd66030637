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
        return _external(settings)
    record = VLLMServer(settings).start(progress)
    return Endpoint(base_url=record.base_url, model=record.model, api_key="EMPTY", managed=True)


def _external(settings: Settings) -> Endpoint:
    url = settings.llm_url.rstrip("/")
    base_url = url if url.endswith("/v1") else f"{url}/v1"
    try:
        response = httpx.get(f"{base_url}/models", timeout=10.0,
                             headers={"Authorization": f"Bearer {settings.llm_api_key}"})
        response.raise_for_status()
        models = [m["id"] for m in response.json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise StropError(
            f"Cannot reach an OpenAI-compatible server at {url} (llm_url / STROP_LLM_URL): {exc}",
            fix="Start that server or correct the URL; unset STROP_LLM_URL to use the embedded vLLM.",
        ) from exc
    if settings.llm_model and settings.llm_model not in models:
        raise StropError(f"Model {settings.llm_model!r} is not served at {url}; it serves {models}.",
                         fix="Set llm_model (STROP_LLM_MODEL) to one of those.")
    if not models:
        raise StropError(f"The server at {url} lists no models.", fix="Load a model on that server.")
    return Endpoint(base_url=base_url, model=settings.llm_model or models[0],
                    api_key=settings.llm_api_key, managed=False)
