"""Chunking keeps whole sentences, bounds chunk size and overlaps neighbours."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from strop.memory.chunking import chunk_text, sentences

words = st.text(alphabet="abcdefghij", min_size=1, max_size=12)
sentence = st.builds(lambda ws, end: " ".join(ws).capitalize() + end, st.lists(words, min_size=1, max_size=15),
                     st.sampled_from([".", "!", "?"]))


def test_short_text_is_one_chunk():
    assert chunk_text("One sentence. Two sentences.", max_chars=100) == ["One sentence. Two sentences."]


def test_splits_at_sentence_ends_not_abbreviation_like_lowercase():
    assert sentences("It rained. Then it stopped! Did it? yes.\n\nNext paragraph") == [
        "It rained.", "Then it stopped!", "Did it? yes.", "Next paragraph"]


def test_empty_text_has_no_chunks():
    assert chunk_text("   \n ") == []


@given(st.lists(sentence, min_size=1, max_size=40), st.integers(60, 400), st.integers(0, 120))
def test_chunks_are_bounded_whole_sentences_covering_the_text(parts, max_chars, overlap):
    text = " ".join(parts)
    chunks = chunk_text(text, max_chars=max_chars, overlap=overlap)
    assert all(len(c) <= max_chars for c in chunks)
    joined = " ".join(chunks)
    for part in parts:
        if len(part) <= max_chars:
            assert any(part in c for c in chunks)  # a sentence that fits is never cut
    assert set(joined.split()) == set(text.split())


def test_neighbouring_chunks_share_the_overlap_sentences():
    text = " ".join(f"Sentence number {i} is here." for i in range(30))
    chunks = chunk_text(text, max_chars=200, overlap=60)
    assert len(chunks) > 3
    for before, after in zip(chunks, chunks[1:], strict=False):
        first_of_after = after.split(". ")[0] + "."
        assert before.endswith(before.split(". ")[-1]) and first_of_after in before, (before, after)
        assert before.split(". ")[-1] in after  # the last sentence is repeated
