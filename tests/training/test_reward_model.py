"""The reward-model judge: trained with TRL on labelled pairs, judged on questions it never saw."""

import pytest

from strop.scenarios.judge import LabelledPair
from strop.training.reward_model import (
    META,
    Recipe,
    RewardModel,
    cross_fitted,
    folds_by_question,
    from_feedback,
    train,
)
from tests.training.test_dpo import BASE

# A cue a tiny training can pick up: people chose the answer that helps, and rejected the curt refusal.
TOPICS = ["the moon", "bread", "rivers", "chess", "glass", "owls", "tides", "paper", "salt", "bees"]
TINY = Recipe(epochs=4.0, learning_rate=5e-3, lora_r=4, target_modules=("q_proj", "v_proj"), max_length=64)


def labelled(topic: str, n: int = 0) -> LabelledPair:
    return LabelledPair(f"{topic}-{n}", "helpful", f"Tell me about {topic}.",
                        f"Gladly! Here is a short, friendly explanation of {topic}.", "No.", "test.jsonl")


def test_folds_keep_each_question_whole_and_are_balanced():
    pairs = [labelled(t, n) for t in TOPICS for n in range(2)]
    folds = folds_by_question(pairs, 2, seed=0)
    by_question = {}
    for pair, fold in zip(pairs, folds, strict=True):
        by_question.setdefault(pair.prompt, set()).add(fold)
    assert all(len(f) == 1 for f in by_question.values())  # never trained on and judged
    assert sorted(folds.count(f) for f in (0, 1)) == [10, 10]
    assert folds == folds_by_question(pairs, 2, seed=0)


def test_feedback_pairs_become_question_and_answers_once():
    pair = {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Who leads?"}],
            "chosen": [{"role": "assistant", "content": "Ada."}],
            "rejected": [{"role": "assistant", "content": "The printer."}], "provenance": {"source": "human"}}
    made = from_feedback([pair, pair, {"prompt": [], "chosen": [], "rejected": []}])
    assert [(p.prompt, p.chosen, p.rejected) for p in made] == [("Who leads?", "Ada.", "The printer.")]


def test_a_missing_reward_model_says_how_to_train_one(tmp_path):
    from strop.errors import StropError

    with pytest.raises(StropError, match="strop critic train-reward"):
        RewardModel(tmp_path / "none", BASE)


@pytest.mark.timeout(600)
def test_a_trained_reward_model_prefers_what_people_chose_on_questions_it_never_saw(tmp_path):
    out = train([labelled(t) for t in TOPICS[:8]], BASE, tmp_path / "rm", TINY)
    assert (out / META).is_file() and not list(tmp_path.glob(".*.partial"))
    judge = RewardModel(out, BASE)
    for topic in TOPICS[8:]:
        pair = labelled(topic)
        # decided beyond the tie margin: an untrained head's rewards differ by far less
        assert judge.preference(pair.prompt, pair.chosen, pair.rejected).winner == "a"
        assert judge.preference(pair.prompt, pair.rejected, pair.chosen).winner == "b"  # no side to be biased by
    outcomes = cross_fitted([labelled(t) for t in TOPICS], BASE, tmp_path / "folds", 2, recipe=TINY)
    assert [o.pair.id for o in outcomes] == [labelled(t).id for t in TOPICS]  # every pair judged, in order
    assert sum(o.verdict == "agree" for o in outcomes) >= 8
