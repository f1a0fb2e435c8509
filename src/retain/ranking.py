"""Fusion of the retrieval signals by reciprocal rank, and the re-ranking steps after it.

RRF needs no score calibration between cosine similarity and BM25, which live
on different scales and shift with corpus size; it only trusts each signal's
order. The fused score is scaled so that 1.0 means "ranked first by every
signal". k = 10 rather than the usual 60 weighs the top ranks more (LoCoMo dev
evidence recall@10 0.465 -> 0.532). A keyword rank counts 1.5 times a vector
rank by default (`Settings.keyword_weight`): with turns keyword-indexed with
their speaker and context, BM25 is the sharper signal on LoCoMo; it counted
twice until sentence facets made the vector side stronger. See BENCHMARKS.md.

After fusion: a hit lifts its neighbouring turns, and less the turns two places
away (`lift_neighbours`), then priors on who spoke and when re-weigh the head of
the list: turns of a speaker the query names are boosted (`boost_speakers`; the
searches look for the rest of the query, `without_speakers`; a speaker named only as the owner of
what another one is asked about is not, `voices`),
memories from a date the query names are boosted (`boost_in_windows`, windows
from `retain.dates`), and in a two-party chat the turns of the side the query
does not ask about are damped (`prefer_role`: "what did I ..." is answered by
the user's turns, "what did you recommend ..." by the assistant's). Optionally
the list is re-ordered for diversity (`diversify`, MMR). Weighted score fusion, session-level score
aggregation and per-session diversity were measured and lost (BENCHMARKS.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .indexing import STOPWORDS
from .store.base import Candidate, Origin, Vector

RRF_K = 10


@dataclass(frozen=True)
class Fused:
    id: str
    score: float
    vector: int | None  # 1-based rank in the vector list
    keyword: int | None  # 1-based rank in the keyword list
    bm25: float | None


def fuse(dense: list[Candidate], sparse: list[Candidate], k: int = RRF_K, keyword_weight: float = 1.0) -> list[Fused]:
    """Reciprocal-rank fusion; a keyword rank counts `keyword_weight` times a vector rank."""
    ranks: dict[str, dict[str, int]] = {}
    for name, candidates in (("vector", dense), ("keyword", sparse)):
        for rank, candidate in enumerate(candidates, start=1):
            ranks.setdefault(candidate.id, {})[name] = rank
    bm25 = {c.id: c.score for c in sparse}
    weights = {"vector": 1.0, "keyword": keyword_weight}
    best = (1.0 + keyword_weight) / (k + 1)
    fused = [
        Fused(
            id=id,
            score=sum(weights[name] / (k + r) for name, r in signal.items()) / best,
            vector=signal.get("vector"),
            keyword=signal.get("keyword"),
            bm25=bm25.get(id),
        )
        for id, signal in ranks.items()
    ]
    fused.sort(key=lambda f: (-f.score, f.id))
    return fused


def lift_neighbours(
    fused: list[Fused], adjacent: dict[str, list[tuple[str, int]]], weights: Sequence[float], new_ok: bool
) -> list[Fused]:
    """Raise each hit's turns at distance d (`adjacent`: (id, d)) to at least `weights[d - 1]` x its
    score, then re-sort; turns further away than `len(weights)` are left alone.

    The lift is a max, never a sum: adding scores let turns with two decent neighbours
    overtake the turn that answers (LongMemEval turn recall@5 fell from 0.68 to 0.42).
    With `new_ok` False only turns already among the candidates are lifted.
    """
    by_id = {f.id: f for f in fused}
    lifted = dict.fromkeys(by_id, 0.0)
    for f in fused:
        for other, distance in adjacent.get(f.id, []):
            if distance <= len(weights) and (other in by_id or new_ok):
                lifted[other] = max(lifted.get(other, 0.0), weights[distance - 1] * f.score)
    out = [f if f.score >= lifted[f.id] else Fused(f.id, lifted[f.id], f.vector, f.keyword, f.bm25) for f in fused]
    out += [Fused(id, score, None, None, None) for id, score in lifted.items() if id not in by_id]
    out.sort(key=lambda f: (-f.score, f.id))
    return out


def diversify(fused: list[Fused], vectors: dict[str, Vector], weight: float) -> list[Fused]:
    """Maximal marginal relevance: repeatedly take the candidate with the best
    `weight` x relevance - (1 - weight) x its highest cosine to those already taken.

    Relevance is the fused score over the best one. Candidates without a vector keep their
    order after the others. Scores are unchanged; only the order moves.
    """
    ranked = [f for f in fused if f.id in vectors]
    if not ranked:
        return fused
    top = ranked[0].score or 1.0
    relevance = np.array([f.score / top for f in ranked])
    matrix = np.stack([vectors[f.id] for f in ranked])
    closest = np.full(len(ranked), -np.inf)
    left = np.ones(len(ranked), dtype=bool)
    order: list[int] = []
    while left.any():
        gain = weight * relevance - (1.0 - weight) * np.where(np.isfinite(closest), closest, 0.0)
        pick = int(np.argmax(np.where(left, gain, -np.inf)))
        order.append(pick)
        left[pick] = False
        closest = np.maximum(closest, matrix @ matrix[pick])
    chosen = {f.id for f in ranked}
    return [ranked[i] for i in order] + [f for f in fused if f.id not in chosen]


def named_speakers(query: str, speakers: Iterable[str]) -> frozenset[str]:
    """The speakers (the `name`s verbatim turns were added with) the query names, as whole words in any case;
    a name that is also a common word ("Will", "An") only as it is written."""
    lowered = query.casefold()
    return frozenset(name for name in speakers if name.casefold() in lowered and _named(name).search(query))


def without_speakers(query: str, named: Iterable[str]) -> str:
    """The query with the speakers it names (and their possessive 's) taken out: what it asks about.

    Who said it is `boost_speakers`' part. A name in the query pulls its vector toward every turn embedded
    with that name, whatever the turn says (LoCoMo dev, the vector ranking alone: evidence recall@25 0.59
    with the names, 0.68 without, each turn scored as the best of its vector and its sentences'). The query
    itself when only stopwords would be left ("Who is Bob?" asks about Bob, whoever said it).
    """
    out = query
    for name in sorted(named, key=len, reverse=True):
        out = _named(name, possessive=True).sub(" ", out)
    out = " ".join(out.split())
    return out if any(word.casefold() not in STOPWORDS for word in re.findall(r"\w+", out)) else query


def voices(query: str, named: frozenset[str]) -> frozenset[str]:
    """The named speakers whose own turns answer the query.

    In "What does Melanie think about Caroline's decision to adopt?" Melanie speaks and Caroline's
    decision is what she speaks about: a speaker named only as an owner ("Caroline's") beside one named
    plainly is the topic, not the voice, and is not boosted. "Tim and John's favorite player" makes both
    owners together, so both stay, and a query that names everyone as an owner keeps them all.
    """
    plain = frozenset(
        name for name in named if any(not _owner(query, m, named - {name}) for m in _named(name).finditer(query))
    )
    return plain or named


def _owner(query: str, mention: re.Match[str], others: frozenset[str]) -> bool:
    """Whether a mention of a speaker is possessive ("Caroline's") and not joint with another ("Tim and John's")."""
    if not _POSSESSIVE.match(query, mention.end()):
        return False
    before = query[: mention.start()]
    return not any(_JOINT.fullmatch(before, m.end()) for other in others for m in _named(other).finditer(before))


_POSSESSIVE = re.compile(r"['’]s(?!\w)")
_JOINT = re.compile(r"\s+(?:and|&)\s+")


def _named(name: str, possessive: bool = False) -> re.Pattern[str]:
    """`name` as a whole word (with its possessive 's), in any case unless it is also a common word."""
    suffix = "(?:['’]s)?" if possessive else ""
    flags = 0 if name.casefold() in STOPWORDS else re.I
    return re.compile(rf"(?<!\w){re.escape(name)}{suffix}(?!\w)", flags)


def boost_speakers(fused: list[Fused], origins: dict[str, Origin], named: frozenset[str], boost: float) -> list[Fused]:
    """Raise by `boost` (x (1 + boost)) the turns spoken by someone the query names (`named_speakers`).

    "What did Caroline research?" is mostly answered by Caroline's own turns. The speaker is
    the `name` a verbatim turn was added with; queries naming nobody are left as they are.
    """
    if not named:
        return fused
    out = [
        Fused(f.id, f.score * (1.0 + boost), f.vector, f.keyword, f.bm25)
        if f.id in origins and origins[f.id].name in named
        else f
        for f in fused
    ]
    out.sort(key=lambda f: (-f.score, f.id))
    return out


def boost_in_windows(
    fused: list[Fused], origins: dict[str, Origin], windows: list[tuple[int, int]], boost: float
) -> list[Fused]:
    """Raise by `boost` (x (1 + boost)) the memories whose time falls in one of `windows`.

    A memory's time is its `valid_from` (`Origin.at`); `windows` are [start, end) in
    microseconds, from the dates the query names (`retain.dates`).
    """
    if not windows:
        return fused
    out = [
        Fused(f.id, f.score * (1.0 + boost), f.vector, f.keyword, f.bm25)
        if f.id in origins and any(start <= origins[f.id].at < end for start, end in windows)
        else f
        for f in fused
    ]
    out.sort(key=lambda f: (-f.score, f.id))
    return out


#: A query about what the assistant said: "you recommended", "did you say", "remind me", "our last chat".
#: "Can you suggest ..." asks for something new, so the present tense counts only after "did".
_ASKS_ASSISTANT = re.compile(
    r"\byou\s+(?:\w+\s+)?(?:said|mentioned|recommended|suggested|told|gave|listed|provided|shared|wrote|explained"
    r"|described|came up with|named)\b"
    r"|\bdid\s+you\s+(?:say|mention|recommend|suggest|tell|give|list|provide|share|write|explain|describe|name)\b"
    r"|\bremind me\b|\bour\s+(?:\w+\s+)?(?:conversation|chat|discussion)\b",
    re.I,
)


def asked_role(query: str) -> str:
    """Whose words a query is about: "assistant" when it recalls what the assistant said, else "user"."""
    return "assistant" if _ASKS_ASSISTANT.search(query) else "user"


def prefer_role(fused: list[Fused], origins: dict[str, Origin], role: str, prior: float) -> list[Fused]:
    """Divide by (1 + `prior`) the scores of two-party chat turns in the other role than `role`.

    A two-party chat turn is a verbatim turn with a role (user or assistant) and no speaker name.
    Named speakers (the people of a group chat, an agent that saves a memory on purpose) are left
    to the speaker boost, and memories without a role, such as extracted facts, keep their scores.
    """

    def other(origin: Origin | None) -> bool:
        if origin is None or origin.name:
            return False
        return origin.role in ("user", "assistant") and origin.role != role

    out = [
        Fused(f.id, f.score / (1.0 + prior), f.vector, f.keyword, f.bm25) if other(origins.get(f.id)) else f
        for f in fused
    ]
    out.sort(key=lambda f: (-f.score, f.id))
    return out
