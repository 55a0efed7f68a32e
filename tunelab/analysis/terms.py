"""Frequent terms: word counts without stop words, template words or numbers; the word cloud; c-TF-IDF names."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

WORD = re.compile(r"[a-zA-Z][a-zA-Z'-]+")


def stop_words(template_text: str = "") -> set[str]:
    """English stop words (wordcloud's list) plus the template's own literal words (e.g. Instruction, Response)."""
    from wordcloud import STOPWORDS
    return {w.lower() for w in STOPWORDS} | {w.lower() for w in WORD.findall(template_text)}


def tokens(text: str, stops: set[str]) -> list[str]:
    return [w for w in (m.lower().strip("'-") for m in WORD.findall(text)) if len(w) > 2 and w not in stops]


def top_terms(texts: list[str], stops: set[str], n: int = 25) -> list[dict]:
    """The `n` most frequent terms with count and share of all counted terms."""
    counts = Counter(t for text in texts for t in tokens(text, stops))
    total = sum(counts.values()) or 1
    return [{"term": t, "count": c, "share": round(c / total, 5)} for t, c in counts.most_common(n)]


def word_cloud(texts: list[str], stops: set[str], out: Path) -> None:
    """A PNG word cloud (wordcloud's bundled font: no system fonts, no network)."""
    from wordcloud import WordCloud
    freqs = Counter(t for text in texts for t in tokens(text, stops))
    if not freqs:
        freqs = Counter({"(no terms)": 1})
    cloud = WordCloud(width=900, height=450, background_color="white", random_state=0, collocations=False)
    cloud.generate_from_frequencies(freqs).to_file(str(out))


def class_tfidf_names(texts: list[str], labels: list[int], stops: set[str], n: int = 3) -> dict[int, list[str]]:
    """Most distinctive terms per cluster (BERTopic's class-based TF-IDF: tf_t,c * log(1 + A / f_t))."""
    per_class: dict[int, Counter] = {}
    for text, label in zip(texts, labels):
        per_class.setdefault(label, Counter()).update(tokens(text, stops))
    total = Counter()
    for counts in per_class.values():
        total.update(counts)
    avg_words = sum(total.values()) / max(len(per_class), 1)
    names = {}
    for label, counts in per_class.items():
        size = sum(counts.values()) or 1
        scored = {t: (c / size) * math.log(1 + avg_words / total[t]) for t, c in counts.items()}
        names[label] = [t for t, _ in sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]
    return names
