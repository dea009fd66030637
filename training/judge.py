"""The LLM judge: scores answers against a rubric (scenario graders) through an OpenAI-compatible server.

Its verdict is schema-constrained JSON, reasoning first and score last, so even a small judge model
reasons before it decides and always returns something parseable; anything else is "no verdict".
"""

from __future__ import annotations

import json
from pathlib import Path

import openai

from strop.config import CriticSettings
from strop.serving.endpoint import Endpoint

PROMPTS_DIR = Path(__file__).parent / "prompts"
SCORES = (1, 2, 3, 4, 5)
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"reasoning": {"type": "string", "maxLength": 600}, "score": {"enum": list(SCORES)}},
    "required": ["reasoning", "score"],
    "additionalProperties": False,
}


class LLMJudge:
    """Rubric scoring by a model; the judge sees no adapter, only the base model or a stronger one."""

    def __init__(self, endpoint: Endpoint, settings: CriticSettings, timeout_s: float = 120.0):
        self.endpoint = endpoint
        self.settings = settings
        self.client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key,
                                         timeout=timeout_s, max_retries=2)
        self.system = (PROMPTS_DIR / "rubric.md").read_text().strip()

    async def rubric(self, question: str, answer: str, rubric: str) -> tuple[float | None, str]:
        """A score in 0..1 (None when the judge failed) and the judge's reasoning."""
        prompt = f"Question: {question}\n\nAnswer: {answer}\n\nRubric: {rubric}"
        try:
            reply = await self.client.chat.completions.create(
                model=self.endpoint.model, temperature=0.0, max_tokens=self.settings.max_tokens,
                messages=[{"role": "system", "content": self.system}, {"role": "user", "content": prompt}],
                extra_body={"response_format": {"type": "json_schema", "json_schema": {
                    "name": "verdict", "schema": VERDICT_SCHEMA, "strict": True}}})
        except openai.APIError as exc:
            return None, f"judge call failed: {type(exc).__name__}: {exc}"
        return parse_verdict(reply.choices[0].message.content or "")

    async def close(self) -> None:
        await self.client.close()


def parse_verdict(text: str) -> tuple[float | None, str]:
    """``(score in 0..1, reasoning)`` from the verdict JSON; ``(None, text)`` when it is not one."""
    try:
        verdict = json.loads(text)
        score = verdict["score"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None, text
    if score not in SCORES:
        return None, text
    return (score - 1) / (len(SCORES) - 1), str(verdict.get("reasoning", ""))
