"""Every prompt strop sends is a file, and a caller can replace it.

Built-in prompts ship beside the code that sends them (``<room>/prompts/<name>.yaml``) with a ``system``
text and a ``user`` template whose ``{placeholders}`` are filled in when the prompt is sent. A folder given
as the ``prompts_dir`` setting replaces any of them by file name; a replacement must keep the template's
placeholders (it may leave some out, never add unknown ones). The agent's own system prompt
(``agent.md``, ``{tools}`` filled in) and few-shot episodes (``exemplars.yaml``) are replaced the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from strop.errors import StropError

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class PromptTemplate:
    """A system text and a user template."""

    name: str
    system: str
    user: str

    def messages(self, **values: str) -> list[dict[str, str]]:
        """The chat messages with ``values`` put in for their placeholders (other braces are left alone)."""
        user = _PLACEHOLDER.sub(lambda m: str(values[m[1]]) if m[1] in values else m[0], self.user)
        return [*([{"role": "system", "content": self.system}] if self.system else []),
                {"role": "user", "content": user}]


def prompt_file(package: str, filename: str, prompts_dir: Path | None = None) -> str:
    """The text of ``<package>/prompts/<filename>``, or of its replacement in ``prompts_dir``."""
    replacement = prompts_dir / filename if prompts_dir else None
    if replacement is not None and replacement.is_file():
        return replacement.read_text(encoding="utf-8")
    return resources.files(package).joinpath("prompts", filename).read_text(encoding="utf-8")


def load_prompt(package: str, name: str, prompts_dir: Path | None = None) -> PromptTemplate:
    """The prompt ``name`` of ``package`` (e.g. ``strop.scenarios``), or its replacement in ``prompts_dir``."""
    builtin = _parse(prompt_file(package, f"{name}.yaml"), f"{package}:prompts/{name}.yaml", name)
    replacement = prompts_dir / f"{name}.yaml" if prompts_dir else None
    if replacement is None or not replacement.is_file():
        return builtin
    custom = _parse(replacement.read_text(encoding="utf-8"), str(replacement), name)
    unknown = set(_PLACEHOLDER.findall(custom.user)) - set(_PLACEHOLDER.findall(builtin.user))
    if unknown:
        raise StropError(f"{replacement}: field 'user' uses {', '.join(sorted(unknown))}, which this prompt never "
                         "fills in.", fix=f"Use only {builtin.user!r}'s placeholders.")
    return custom


def _parse(text: str, where: str, name: str) -> PromptTemplate:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StropError(f"{where}: not valid YAML ({exc}).", fix="Write the prompt as `system: ...` and `user: ...`."
                         ) from None
    if not isinstance(data, dict) or not isinstance(data.get("user"), str) or not isinstance(
            data.get("system", ""), str):
        raise StropError(f"{where}: needs a text field 'user' (and optionally 'system').",
                         fix="Write the prompt as `system: ...` and `user: ...`.")
    return PromptTemplate(name, data.get("system", "").strip(), data["user"].strip())
