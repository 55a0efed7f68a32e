"""Analysis validated against ground truth: synthetic:arith families (never shown to the clustering)."""

import json

import pytest

from tunelab.analysis import analyze
from tunelab.analysis.terms import class_tfidf_names, stop_words, top_terms
from tunelab.cli import main
from tunelab.config import load_recipe
from tunelab.errors import UserError
from tunelab.rundir import RunDir
from conftest import write_jsonl


@pytest.fixture(scope="module")
def synthetic_analysis(tmp_path_factory):
    cfg = load_recipe("quickstart", ["data.synthetic_rows=2200"])
    run = RunDir(tmp_path_factory.mktemp("ana") / "insights")
    return run, analyze(cfg, run)


@pytest.mark.slow
def test_clusters_recover_the_families(synthetic_analysis):
    run, summary = synthetic_analysis
    assert summary["rows"] == 2200
    assert summary["adjusted_rand_index"] >= 0.5
    clusters = json.loads((run.analysis_dir / "clusters.json").read_text())
    assert sum(c["size"] for c in clusters) == 2200 and len(clusters) == summary["k"]
    assert all(len(c["examples"]) == 3 and len(c["terms"]) == 3 for c in clusters)
    shopping = [c for c in clusters if "shopping" in c["labels"] and c["labels"]["shopping"] > 0.9 * c["size"]]
    assert shopping and {"buys", "money", "spend", "much", "total"} & set(shopping[0]["terms"])


@pytest.mark.slow
def test_each_clusters_examples_are_its_rows_nearest_its_centroid(synthetic_analysis):
    """The report's example of a cluster is its most typical row, not its first in the file."""
    import numpy as np
    from tunelab.analysis.embed import embed
    from tunelab.analysis.stage import _kmeans, _rows
    from tunelab.data import load_splits, question_text
    run, summary = synthetic_analysis
    cfg = load_recipe("quickstart", ["data.synthetic_rows=2200", f"analysis.k={summary['k']}"])
    texts = np.array([question_text(e) for e in _rows(cfg, load_splits(cfg.data, cfg.eval))])
    vectors = embed(texts.tolist(), cfg.analysis.embedder, run, cfg)  # cached by the analysis: the same vectors
    labels, _, _ = _kmeans(vectors, summary["k"], cfg)
    moved = 0
    for c in json.loads(run.clusters.read_text()):
        members = np.flatnonzero(labels == c["cluster"])
        distance = np.linalg.norm(vectors[members] - vectors[members].mean(0), axis=1)
        assert c["examples"] == texts[members[np.argsort(distance)[:3]]].tolist()
        moved += c["examples"][0] != texts[members[0]]
    assert moved  # somewhere the first row in the file is not the most typical


@pytest.mark.slow
def test_rare_family_is_found_among_the_top_outliers(synthetic_analysis):
    run, summary = synthetic_analysis
    outliers = json.loads((run.analysis_dir / "outliers.json").read_text())
    assert len(outliers) == round(0.02 * 2200)
    assert summary["rarest_label"] == "rare"
    rare_rows = summary["rarest_label_rows"]
    assert sum(o["label"] == "rare" for o in outliers) >= 0.5 * rare_rows
    assert all("isolated in embedding space" in o["why"] for o in outliers)


@pytest.mark.slow
def test_pictures_and_interactive_map_are_written(synthetic_analysis):
    run, summary = synthetic_analysis
    out = run.analysis_dir
    for name in ("umap.png", "wordcloud.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "map.html").read_text()
    assert "Plotly.newPlot" in html and 'src="http' not in html  # plotly.js inlined: works offline
    assert "shares them equally among" in html  # hover text carries the questions
    terms = json.loads((out / "terms.json").read_text())["train"]
    assert terms[0]["count"] >= terms[1]["count"] and "response" not in {t["term"] for t in terms}
    assert set(summary["seconds"]) >= {"embed", "umap", "kmeans"}


@pytest.mark.slow
def test_embeddings_are_cached(synthetic_analysis, tmp_path, monkeypatch):
    def no_second_embed(*args, **kwargs):
        raise AssertionError("embedded the same texts again instead of reading the cache")
    monkeypatch.setattr("tunelab.analysis.embed._sentence_embeddings", no_second_embed)
    cfg = load_recipe("quickstart", ["data.synthetic_rows=2200", "analysis.k=8"])
    summary = analyze(cfg, RunDir(tmp_path / "again"))
    assert summary["k"] == 8 and summary["rows"] == 2200


def test_terms_ignore_template_and_stop_words_and_ctfidf_names_the_distinctive_ones():
    stops = stop_words("Instruction: {question}\nResponse: ")
    texts = ["Instruction: the cat sat", "Instruction: the cat ran", "Response: a dog barked", "dog dog bone"]
    assert [t["term"] for t in top_terms(texts, stops)][:2] == ["dog", "cat"]
    names = class_tfidf_names(texts, [0, 0, 1, 1], stops, n=1)
    assert names == {0: ["cat"], 1: ["dog"]}


@pytest.mark.parametrize("rows, extra, message", [
    ([], [], "0 usable train rows"),
    ([{"question": "one", "answer": "1"}] * 5, [], "all 5 rows are identical; nothing to cluster"),
    ([{"question": f"q{i}", "answer": "1"} for i in range(6)], ["-k", "9"],
     "analysis.k: 9 clusters need more than 9 distinct rows (got 6)"),
])
def test_bad_inputs_get_a_clear_message(rows, extra, message, tmp_path, capsys):
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    rc = main(["analyze", "--recipe", "quickstart", "--set", f"data.source={src}", "--set", "data.label_field=null",
               "--run-dir", str(tmp_path / "run"), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_one_row_is_refused(tmp_path):
    from tunelab.analysis.stage import _check
    with pytest.raises(UserError, match="1 rows; need at least 3"):
        _check(["only"], None)
