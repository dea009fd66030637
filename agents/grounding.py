"""Answers grounded in what a memory search returned, and the repairs a small model's actions need.

- Passages: ``search_memory`` reports ``[id8] (score) text`` lines; :func:`parse_passages` reads them back,
  so strop knows what was found whatever the model does with it.
- Sources: :func:`supporting` picks the passages whose text holds the answer (strop fills ``sources``
  from them instead of trusting the model to copy ids).
- Loops: :func:`cut_loop` ends a text where it starts repeating itself (a word n-gram seen before, or a
  short run of characters repeated many times), which is how a 135M model fails when it does not stop.
- Queries: :func:`usable_query` keeps the model's search query only when it is not degenerate.
- Span answers: :func:`span_choices` lists the short spans of the passages an answer may be built from.
"""

from __future__ import annotations

import functools
import html
import re
from dataclasses import dataclass

NOT_FOUND = "I could not find that in memory."
LOOP_NGRAM = 4  # words: a 4-word sequence seen twice within one argument is a loop
_LINE = re.compile(r"^\[([0-9a-f]{8})\] \((-?[\d.]+)\) (.*)$")
_CHAR_LOOP = re.compile(r"(.{1,12}?)\1{4,}", re.DOTALL)  # a short piece repeated 5+ times in a row
_WORD = re.compile(r"[^\W_]+(?:[-'.,:/][^\W_]+)*", re.UNICODE)
_STOP = frozenset([
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and", "or", "is", "are",
    "was", "were", "be", "been", "what", "which", "who", "whom", "whose", "when", "where", "why", "how",
    "does", "do", "did", "this", "that", "these", "those", "it", "its", "my", "our", "your", "their", "his",
    "her", "me", "we", "you", "they", "i", "there", "as", "into", "about", "than", "then", "so", "not", "no",
    "yes", "can", "could", "would", "should", "will", "shall", "may", "might", "must", "has", "have", "had",
])


@dataclass(frozen=True)
class Passage:
    id: str  # the 8 hex digits the model sees
    score: float
    text: str


def parse_passages(result: str) -> list[Passage]:
    """The passages of a ``search_memory`` result (none for "No passages found." or an error)."""
    found = (_LINE.match(line) for line in result.splitlines())
    return [Passage(m[1], float(m[2]), m[3]) for m in found if m]


def plain_text(text: str) -> str:
    """``text`` without HTML tags, entities or Markdown markup: what a small model should read."""
    text = html.unescape(re.sub(r"<[^>]{0,200}>", " ", text))
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [label](url) -> label
    text = re.sub(r"(^|\s)#{1,6}\s+", r"\1", text)
    text = re.sub(r"[*_`~|]{1,3}", "", text)
    return re.sub(r"\s+([.,;:!?])(?=\s|$)", r"\1", " ".join(text.split()))


def words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in _STOP}


def cut_loop(text: str, n: int = LOOP_NGRAM) -> str:
    """``text`` up to where it starts repeating: before the second occurrence of any ``n``-word sequence,
    or after the first copy of a short piece repeated five times or more."""
    chars = _CHAR_LOOP.search(text)
    if chars:
        text = text[:chars.start() + len(chars[1])]
    spans = [(m.start(), m[0].casefold()) for m in _WORD.finditer(text)]
    seen: set[tuple[str, ...]] = set()
    for i in range(len(spans) - n + 1):
        gram = tuple(w for _, w in spans[i:i + n])
        if gram in seen:
            return text[:spans[i][0]].rstrip(" ,;:-")
        seen.add(gram)
    return text


def loops(text: str) -> bool:
    """Whether ``text`` repeats itself (see :func:`cut_loop`)."""
    return cut_loop(text) != text


def usable_query(query: str, question: str, limit: int) -> str:
    """The model's query, or the question when the query loops, says nothing, or shares no word with it."""
    cut = cut_loop(query).strip()
    asked = content_words(question)
    degenerate = (cut != query.strip() or len(content_words(cut)) == 0 or len(cut) > limit
                  or (asked and not content_words(cut) & asked))
    return _clip(question if degenerate else cut, limit)


def supporting(answer: str, passages: list[Passage], limit: int = 3) -> list[Passage]:
    """The passages whose text holds the answer: all of it, or else most of its content words."""
    wanted = content_words(answer) or set(words(answer))
    if not wanted:
        return []
    flat = _flat(answer)
    whole = [p for p in passages if flat and flat in _flat(p.text)]
    if whole:
        return whole[:limit]
    scored = [(len(wanted & set(words(p.text))) / len(wanted), p) for p in passages]
    best = max((share for share, _ in scored), default=0.0)
    return [p for share, p in scored if share >= 0.5 and share == best][:limit]


def span_choices(passages: list[Passage], max_words: int = 4, limit: int = 2000) -> list[str]:
    """Every 1..``max_words``-word span of the passages (in order, without repeats), at most ``limit``."""
    choices: dict[str, None] = {}
    for passage in passages:
        tokens = plain_text(passage.text).split()
        for start in range(len(tokens)):
            for length in range(1, max_words + 1):
                if start + length <= len(tokens):
                    span = " ".join(tokens[start:start + length]).strip(".,;:!?()\"'")
                    if span:
                        choices.setdefault(span)
                if len(choices) >= limit:
                    return list(choices)
    return list(choices)


def clean_answer(text: str, limit: int) -> str:
    """A generated answer with its loop cut, one line, at most ``limit`` characters."""
    text = " ".join(cut_loop(text).split()).strip(" \"'")
    if text.lower().startswith("answer:"):
        text = text[7:].strip()
    return _clip(text, limit)


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut if cut else text[:limit]


def _flat(text: str) -> str:
    return " ".join(words(text))


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
# A full stop after a title or an initial ends no sentence: "Dr. Halvorsen", "Mrs. Achebe", "J. Smith".
_ABBREVIATION = re.compile(r"(?:\b(?:Dr|Mr|Mrs|Ms|Mx|Prof|Sr|Jr|St|Mt|Ft|Vol|Fig|Inc|Ltd|Co|Corp|vs|etc|approx|"
                           r"e\.g|i\.e|[A-Z])\.)$")


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` (markup stripped), not split after a title or an initial."""
    parts: list[str] = []
    for piece in _SENTENCE.split(plain_text(text)):
        if parts and _ABBREVIATION.search(parts[-1]):
            parts[-1] = f"{parts[-1]} {piece}"
        elif piece:
            parts.append(piece)
    return parts


@dataclass(frozen=True)
class Sentence:
    shared: int  # question words it holds (5-letter stems)
    rank: int  # its passage's place in the search result
    position: int  # its place in the passage
    passage: Passage  # the passage's id and score, with this sentence as the text


def ranked_sentences(passages: list[Passage], question: str) -> list[Sentence]:
    """Every sentence of the passages, the ones sharing most words with the question first; ties keep the
    better-ranked passage, then the earlier sentence."""
    asked = {_stem(w) for w in content_words(question)}
    found = [Sentence(len(asked & {_stem(w) for w in content_words(text)}), rank, position,
                      Passage(passage.id, passage.score, text))
             for rank, passage in enumerate(passages) for position, text in enumerate(sentences(passage.text))]
    return sorted(found, key=lambda s: (-s.shared, s.rank, s.position))


def focus(passages: list[Passage], question: str, keep: int = 3) -> list[Passage]:
    """The ``keep`` sentences of the passages that share the most words with the question (ties: the
    better-ranked passage first), in the passages' order: a short context a small model reads better
    than whole passages."""
    chosen = ranked_sentences(passages, question)[:keep]
    return [s.passage for s in sorted(chosen, key=lambda s: (s.rank, s.position))]


def _stem(word: str) -> str:
    return word[:5]


# What a question asks for, by its wh-words, and how a span of that kind is written. A kind is checked only
# when a pattern can tell it apart; "what"/"which" questions about other things are left to the model.
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DAY = r"(?:mon|tues|wednes|thurs|fri|satur|sun)day"
_SPANS = {
    "time": r"\b\d{1,2}[:.]\d{2}\b|\b\d{1,2}\s?(?:am|pm)\b|\bnoon\b|\bmidnight\b",
    "date": rf"\b\d{{1,2}}(?:st|nd|rd|th)?(?: of)? {_MONTH}(?: \d{{4}})?|\b{_MONTH} \d{{1,2}}(?:st|nd|rd|th)?\b"
            rf"|\b(?:1[5-9]|20)\d{{2}}\b|\b{_DAY}s?\b",
    "number": r"[A-Za-z-]*\d(?:[\d.,:/-]*\d)?[A-Za-z%-]*(?:\s\d+)*",  # 1,150; GY-20931; 0800 555 0142; -2
    "name": r"\b[A-Z][\w'-]+(?:\s+(?:(?:de|van|von|der|da|di|le|la)\s+)?[A-Z][\w'-]+)*",
}
_ASKS = [  # (question pattern, the kinds an answer may be), first match wins
    (r"\bwhat time\b|\bhow (?:late|early)\b|\bwhen does\b.*\b(?:open|close|start|begin|end|finish)", ("time",)),
    (r"\bwhat (?:date|day)\b|\bwhich (?:date|day)\b|\bwhen\b", ("date", "time")),
    (r"\bhow (?:much|many|long|far|old)\b|\b(?:code|number|pin|password|price|cost|rate|amount|fee|plate|"
     r"level|floor|extension|percentage)\b", ("number",)),
    (r"^\s*(?:who|whom|whose)\b|\bwho\b", ("name",)),
]


def asked_kinds(question: str) -> tuple[str, ...]:
    """The kinds of span (time, date, number, name) ``question`` asks for; () when no pattern tells."""
    folded = question.casefold()
    return next((kinds for pattern, kinds in _ASKS if re.search(pattern, folded)), ())


def typed_spans(text: str, kinds: tuple[str, ...], question: str = "") -> list[str]:
    """The spans of ``text`` of one of ``kinds`` that are not already words of ``question``."""
    asked = set(words(question))
    found = []
    for kind in kinds:
        flags = 0 if kind == "name" else re.IGNORECASE
        for match in re.finditer(_SPANS[kind], text, flags):
            span = match[0].strip(".,;:!?\"'()")
            if kind == "name" and re.fullmatch(rf"{_MONTH}|{_DAY}s?", span, re.IGNORECASE):
                continue  # a capitalised month or weekday is a date, not a name
            if set(words(span)) - asked - _STOP:
                found.append(span)
    return found


MIN_SHARED = 2  # question words the best sentence must hold before it overrules the model (one word is weak)


def checked_answer(answer: str, question: str, ranked: list[Sentence], keep: int = 3) -> str:
    """``answer``, or the sentence that answers the question when the answer contradicts it, or the ``keep``
    best sentences (in the passages' order) when the answer only repeats the question or the question is not
    English (the 135M model answers such a question with words of its own, not from the notes).

    The sentence is the one sharing strictly more words with the question than any other (no tie), and at
    least ``MIN_SHARED`` (measured on unseen notes: a sentence sharing one word overruled a right answer). When the
    question asks for a kind of span a pattern recognises (a time, a date, a number, a name) and that
    sentence holds such spans but the answer contains none of them, the 135M model has taken the span from
    another sentence or left it out: the sentence itself, quoted, is the answer."""
    checked = _typed_check(answer, question, ranked)
    if ranked and (echoes(checked, question) or foreign(question)):
        return " ".join(s.passage.text for s in sorted(ranked[:keep], key=lambda s: (s.rank, s.position)))
    return checked


def _typed_check(answer: str, question: str, ranked: list[Sentence]) -> str:
    kinds = asked_kinds(question)
    if not kinds or not ranked or ranked[0].shared < MIN_SHARED:
        return answer
    if len(ranked) > 1 and ranked[1].shared >= ranked[0].shared:
        return answer
    best = ranked[0].passage.text
    spans = typed_spans(best, kinds, question)
    said = _flat(answer)
    if not spans or any(_flat(span) and f" {_flat(span)} " in f" {said} " for span in spans):
        return answer
    return best


def echoes(answer: str, question: str) -> bool:
    """Whether ``answer`` says nothing but words of ``question`` (5-letter stems)."""
    asked = content_words(question)
    return all(any(_same_word(word, other) for other in asked) for word in content_words(answer))


def foreign(question: str) -> bool:
    """Whether most of the question's words are no English word (measured: English questions of every suite
    at most a third, German, French, Spanish, Italian and Dutch ones more than half)."""
    known = _english_words()
    letters = [w for w in words(question) if w.isalpha()]
    return bool(known and letters) and sum(w not in known for w in letters) > len(letters) / 2


def _same_word(a: str, b: str) -> bool:
    """One word in two forms ("close", "closes"); "Leeds" and "LeedsGuest" are two words."""
    return a == b or (a[:5] == b[:5] and abs(len(a) - len(b)) <= 2)


# -- which questions are about the memory, beyond the embedding's similarity ------------------------------

# First-person possessives (English, German, French, Spanish): a question about the user's own things.
_PERSONAL = re.compile(r"\b(?:my|our|mine|ours|mein(?:e[mnrs]?)?|unser(?:e[mnrs]?)?|mon|ma|mes|notre|nos|mi|mis|"
                       r"nuestr[oa]s?)\b", re.IGNORECASE)
# Things only the user's own notes know, whoever owns them ("the door code of the lab").
_PRIVATE = re.compile(r"\b(?:door code|password|passcode|pin code|wi-?fi|login|username|appointment|birthday|"
                      r"locker)\b", re.IGNORECASE)
_NAME_LIKE = re.compile(r"(?<=\s)[^\W\d_][^\W_]*(?:-[^\W_]+)*|[^\W_]*\d[^\W_]*(?:-[^\W_]+)*")


def personal_question(question: str) -> bool:
    """A question (it ends with "?") about the user's own things: "my", "our" (or "mein", "notre", "mi", ...),
    or a door code, a password, an appointment... A question that carries numbers is a computation, not this."""
    text = question.strip()
    return (text.endswith("?") and not re.search(r"\d", text)
            and bool(_PERSONAL.search(text) or _PRIVATE.search(text)))


@functools.cache
def _english_words() -> frozenset[str]:
    """The words of the default embedding model's (uncased English) vocabulary; empty when it is missing."""
    try:
        from strop.memory.embed import default_model_path

        return frozenset(line.strip() for line in (default_model_path() / "vocab.txt").open(encoding="utf-8"))
    except (ImportError, OSError):
        return frozenset()


def rare_names(question: str) -> list[str]:
    """The question's names that are no English word: capitalised words after its first (or words holding a
    digit) that the English vocabulary does not hold, like "Strop" or "Nordlicht"; the names of general
    knowledge (France, Paris, Python) are English words there."""
    known = _english_words()
    if not known:
        return []
    found = []
    for match in _NAME_LIKE.finditer(question.strip()):
        word = re.sub(r"'s$", "", match[0])
        if (word[:1].isupper() or any(c.isdigit() for c in word)) and len(word) >= 3 and not word.isdigit() \
                and word.casefold() not in known and word not in found:
            found.append(word)
    return found


def names_in(passages: list[Passage], names: list[str]) -> list[str]:
    """The ``names`` that are words of the passages (case-insensitive)."""
    held = {w for p in passages for w in words(p.text)}
    return [n for n in names if n.casefold() in held]
