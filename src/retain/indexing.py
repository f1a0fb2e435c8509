"""What gets indexed for a memory, and what a query sends to keyword search.

A verbatim chat turn is often unsearchable on its own: "Yes, twice last year!"
answers a question asked in the turn before, and who said it matters ("what
did Caroline research?"). So a turn stored with `add(infer=False)` is
embedded as its speaker line, "speaker: content", and keyword-indexed as that
line followed by the turns just before it in the same conversation, while the
memory's returned text stays the verbatim content.

The context goes into the keyword index only, and only for short turns (at
most 30 words). Embedding it too made the turns after an answer look like the
answer, so they outranked it on LongMemEval, and on LoCoMo it gained nothing
over keyword-only context (recall@10 0.713 vs 0.714). Context on long turns
did the same on LongMemEval through BM25 (turn recall@10 0.824 -> 0.790); short
turns are the elliptical ones that need it. See BENCHMARKS.md.

A user's turn often says its fact in passing: "Can you suggest BBQ sauce
recipes? By the way, I got a smoker last week." Its one vector is about the
request, so "what kitchen appliance did I buy?" misses it. Each sentence of a
user turn of several is therefore embedded too, as a facet, and the turn
scores as its best vector (`facet_texts`, `store.vector_index`). On
LongMemEval that took dense-only turn recall@10 from 0.70 to 0.88. Assistant
turns get none: they run to ~17 sentences each (LongMemEval's dev split has
425k sentences in assistant turns against 71k in user turns; see BENCHMARKS.md).

Keyword search drops English stopwords from the query: BM25 gives them little
weight anyway, but each one costs a posting-list scan, and question words
("what", "when", "did") otherwise match most turns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .models import ChatMessage, Message

#: Turns of at most this many words are indexed with context: a short turn ("Yes, twice!") leans on
#: what it answers, a long one stands alone, and context on long turns let an answer's neighbours
#: crowd it out (see BENCHMARKS.md).
SHORT_TURN_WORDS = 30
#: Each context turn is cut to this many characters: enough for a short turn, a hint of a long one.
CONTEXT_CHARS = 300

_STOPWORD_TEXT = """
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me might more most must my myself no nor not now
of off on once only or other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up very was we were what
when where which while who whom why will with would you your yours yourself yourselves ever also like likely
"""
#: A small English stopword list (question words included) for the keyword side of a query.
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_WORD = re.compile(r"[\w']+", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
#: A sentence of fewer words ("Thanks!", "Oh, and") says too little to be searched for on its own.
FACET_MIN_WORDS = 3
#: At most this many facets a turn: bounds the vectors a long turn adds.
MAX_FACETS = 8
#: A facet this close (cosine) to its turn's vector adds little; it is not stored (see `split_facets`).
FACET_REDUNDANT = 0.7


def turn_line(content: str, name: str | None) -> str:
    """A turn as it is embedded: with its speaker's name when it has one."""
    return f"{name}: {content}" if name else content


def facet_texts(content: str, role: str | None) -> list[str]:
    """The sentences of a user's turn embedded besides the turn itself; none for a turn of one sentence."""
    if role != "user":
        return []
    sentences = [s.strip() for s in _SENTENCE_END.split(content) if len(s.split()) >= FACET_MIN_WORDS]
    return sentences[:MAX_FACETS] if len(sentences) > 1 else []


def split_facets(
    vectors: npt.NDArray[np.float32], sentences: Sequence[Sequence[str]], turns: npt.NDArray[np.float32]
) -> list[Any | None]:
    """The facet vectors of each turn, from the vectors of all turns' `sentences` in order (None: none).

    A facet within cosine `FACET_REDUNDANT` of its turn's own vector (`turns`, one row per turn) is dropped:
    it would score about as the turn does, and every facet costs search time.
    """
    out: list[Any | None] = []
    start = 0
    for own, turn in zip(sentences, turns, strict=True):
        block = np.asarray(vectors[start : start + len(own)], dtype=np.float32)
        start += len(own)
        block = block[block @ np.asarray(turn, dtype=np.float32) < FACET_REDUNDANT]
        out.append(block if len(block) else None)
    return out


def embedding_text(text: str, index_text: str | None, metadata: dict[str, Any]) -> str:
    """What a stored memory's vector was computed from (to re-embed it, e.g. on import)."""
    name = metadata.get("name")
    return turn_line(text, name if isinstance(name, str) else None) if index_text is not None else text


def index_texts(
    messages: Sequence[Message],
    earlier: Sequence[ChatMessage | Message],
    context_turns: int,
    short_words: int = SHORT_TURN_WORDS,
) -> list[str | None]:
    """The keyword-index text of each message (None when it would equal the content).

    `earlier` holds the turns of the same conversation that came before `messages`, oldest first.
    Only turns of at most `short_words` words get context.
    """
    history = [_context_line(m) for m in earlier]
    out: list[str | None] = []
    for message in messages:
        own = turn_line(message.content, message.name)
        short = len(message.content.split()) <= short_words
        context = history[len(history) - context_turns :] if context_turns and short else []
        text = "\n".join([own, *context])
        out.append(None if text == message.content else text)
        history.append(_context_line(message))
    return out


def _context_line(message: ChatMessage | Message) -> str:
    content = " ".join(message.content.split())
    if len(content) > CONTEXT_CHARS:
        content = content[:CONTEXT_CHARS].rsplit(" ", 1)[0] + " …"
    return turn_line(content, message.name or message.role)


def keyword_query(query: str) -> str:
    """The query without stopwords (possessives reduced to the noun); the query itself if nothing is left."""
    words = []
    for word in _WORD.findall(query):
        lowered = word.lower().strip("'")
        if lowered.endswith("'s"):
            word, lowered = word[:-2], lowered[:-2]
        if lowered and lowered not in STOPWORDS:
            words.append(word)
    return " ".join(words) if words else query
