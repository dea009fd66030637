"""The built-in `notes` suite: a person's notes as a memory corpus, and 40+ questions each answered by one note."""

import json

from strop.scenarios.graders import AnyOf
from strop.scenarios.suite import load_suite


def corpus_and_questions():
    suite = load_suite("notes")
    folder = suite.path.parent
    notes = {row["id"]: row for row in map(json.loads, (folder / suite.defaults.memory.path).read_text().splitlines())}
    questions = [json.loads(line) for line in (folder / "data/notes/questions.jsonl").read_text().splitlines()]
    return suite, notes, questions


def test_the_notes_suite_loads_with_forty_questions_and_its_own_memory():
    suite, notes, _ = corpus_and_questions()
    assert suite.name == "notes" and not suite.problems
    assert len(suite.cases) >= 40
    assert {len(suite.select(split)) > 0 for split in ("train", "gate", "test")} == {True}
    assert suite.defaults.memory is not None and suite.defaults.memory.id_field == "id"
    assert set(suite.defaults.tools) == {"think", "search_memory"}
    assert len(notes) >= 20 and all(note["text"].strip() for note in notes.values())


def test_every_question_is_answered_by_its_note():
    _, notes, questions = corpus_and_questions()
    for question in questions:
        text = notes[question["note"]]["text"].casefold()
        assert any(answer.casefold() in text for answer in question["answers"]), question["id"]


def test_the_questions_cover_the_kinds_of_facts_people_note():
    suite, _, questions = corpus_and_questions()
    kinds = {question["kind"] for question in questions}
    assert kinds == {"code", "date", "name", "amount", "place"}
    assert all(len(case.tags) == 1 and case.tags[0] in kinds for case in suite.cases)
    assert all(isinstance(grader, AnyOf) for case in suite.cases for grader in case.graders)
