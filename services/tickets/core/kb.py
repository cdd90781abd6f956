"""Knowledge-base search without a text index: tokens stored on the article, scored here.

FerretDB has no ``$text``; an article keeps the normalised words of its title, tags and body in
array fields, so a store finds candidates by token equality (an index on the array field) and
this module orders them by relevance.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*", re.UNICODE)
_STOP = "a an and are as at be by for from how i in is it of on or the to what when why with"
_STOP_FI_SV = "ja on ei se tai kun mitä miten och är att det som"
STOPWORDS = frozenset(f"{_STOP} {_STOP_FI_SV}".split(" "))
MAX_QUERY_TOKENS = 12


def tokens(text: str) -> list[str]:
    """Lower-cased, accent-kept words of at least two characters, stop words dropped."""
    norm = unicodedata.normalize("NFKC", text).casefold()
    out: list[str] = []
    for match in _WORD.finditer(norm):
        word = match.group(0)
        for part in (word, *word.split("-")):
            if len(part) >= 2 and part not in STOPWORDS and part not in out:
                out.append(part)
    return out


@dataclass(frozen=True)
class ArticleTokens:
    title: tuple[str, ...]
    tags: tuple[str, ...]
    body: tuple[str, ...]

    @property
    def all(self) -> list[str]:
        return sorted({*self.title, *self.tags, *self.body})


def index(title: str, tags: Iterable[str], body: str) -> ArticleTokens:
    return ArticleTokens(
        tuple(tokens(title)), tuple(t for tag in tags for t in tokens(tag)), tuple(tokens(body))
    )


def score(query: list[str], article: ArticleTokens) -> float:
    """Title words weigh 3, tags 2, body 1; every query word found adds a bonus."""
    total = 0.0
    found = 0
    for word in query:
        hit = 0.0
        if word in article.title:
            hit += 3
        if word in article.tags:
            hit += 2
        if word in article.body:
            hit += 1
        if hit:
            found += 1
        total += hit
    return total + 2.0 * found * found
