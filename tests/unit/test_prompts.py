"""Prompts are files; a folder given as prompts_dir replaces them by name."""

import pytest

from strop.errors import StropError
from strop.prompts import load_prompt


def test_a_builtin_prompt_fills_its_placeholders_and_leaves_other_braces():
    prompt = load_prompt("strop.scenarios", "rubric")
    system, user = prompt.messages(question="What is {x}?", answer="42", rubric="Names 42.")
    assert system["role"] == "system" and "rubric" in system["content"]
    assert user == {"role": "user", "content": "Question: What is {x}?\n\nAnswer: 42\n\nRubric: Names 42."}


def test_a_prompt_without_system_text_sends_only_the_user_turn():
    (only,) = load_prompt("strop.training", "question").messages(passage="Paris is in France.")
    assert only["role"] == "user" and only["content"].startswith("Passage: Paris is in France.")


def test_a_file_in_prompts_dir_replaces_the_builtin_one(tmp_path):
    (tmp_path / "rubric.yaml").write_text("system: Be strict.\nuser: 'Q: {question} A: {answer}'\n")
    prompt = load_prompt("strop.scenarios", "rubric", tmp_path)
    assert prompt.messages(question="q", answer="a", rubric="r") == [
        {"role": "system", "content": "Be strict."}, {"role": "user", "content": "Q: q A: a"}]
    assert load_prompt("strop.scenarios", "pairwise", tmp_path).system.startswith("You compare")  # not replaced


@pytest.mark.parametrize(("text", "message"), [
    ("user: 'Q: {question} {secret}'\n", "uses secret, which this prompt never fills in"),
    ("system: [unclosed\n", "not valid YAML"),
    ("system: only a system text\n", "needs a text field 'user'"),
])
def test_a_bad_replacement_is_refused_naming_the_file(tmp_path, text, message):
    (tmp_path / "rubric.yaml").write_text(text)
    with pytest.raises(StropError) as error:
        load_prompt("strop.scenarios", "rubric", tmp_path)
    assert message in error.value.message and str(tmp_path / "rubric.yaml") in error.value.message


def test_the_agent_reads_its_system_prompt_exemplars_and_answer_prompt_from_prompts_dir(tmp_path):
    from strop.agents.graph import ModelInput, grounded_messages
    from strop.agents.grounding import Passage
    from strop.tools.builtin import BUILTIN_TOOLS
    from strop.tools.toolkit import final_answer

    tools = [*BUILTIN_TOOLS, final_answer]
    (tmp_path / "agent.md").write_text("You are terse. Tools:\n{tools}\n")
    (tmp_path / "exemplars.yaml").write_text("[]\n")
    (tmp_path / "grounded.yaml").write_text("system: Only the notes.\nuser: '{question} <- {notes}'\n")
    shown = ModelInput(tools, prompts_dir=tmp_path)
    assert shown.system.content.startswith("You are terse. Tools:\n- think")
    assert [m.type for m in shown.prefix("What is 2 + 2?")] == ["system"]  # no exemplars
    system, user = grounded_messages(shown.grounded, "Who leads?", [Passage("a1", 0.9, "Ada leads.")])
    assert system.content == "Only the notes." and user.content.startswith("Who leads? <- ")
    default = ModelInput(tools)
    assert "You are terse" not in default.system.content and len(default.prefix("What is 2 + 2?")) > 1
