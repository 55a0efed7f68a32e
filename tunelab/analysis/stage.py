"""The analyze stage: a run's data and model: terms and word cloud, embeddings, UMAP + KMeans clusters named by
c-TF-IDF, outliers (embedding isolation + per-example loss), and training dynamics (data map).

No label is used in clustering or outlier scoring; when the data has a label field, clusters are
scored against it afterwards (adjusted Rand index, purity).

Run as: tunelab analyze runs/smoke
        tunelab analyze --recipe quickstart --run-dir runs/q-insights     # before training
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict

import numpy as np

from tunelab.analysis import plots
from tunelab.analysis.embed import embed
from tunelab.analysis.terms import class_tfidf_names, stop_words, top_terms, word_cloud
from tunelab.config import Recipe
from tunelab.data import Example, load_splits, question_text, source_of
from tunelab.errors import UserError
from tunelab.rundir import HeldOutLossDir, RepliesDir, RunDir, merge_rows

log = logging.getLogger(__name__)
MIN_ROWS = 3


def done(run: RunDir) -> bool:
    return run.analysis_summary.exists()


def analyze(cfg: Recipe, run: RunDir) -> dict:
    """Analyse the recipe's train + validation rows; write analysis/ in `run`; return its summary.

    Raises:
        UserError: too few rows, all rows identical, k larger than the rows.
    """
    seconds: dict[str, float] = {}
    clock = time.time()
    splits = load_splits(cfg.data, cfg.eval)
    rows = _rows(cfg, splits)
    texts = [question_text(e) for e in rows]
    k = cfg.analysis.k
    _check(texts, k)
    run.analysis_dir.mkdir(parents=True, exist_ok=True)
    stops = stop_words(" ".join([cfg.data.template, *cfg.data.template_if_empty.values(), cfg.data.target]))

    terms = _terms(run, texts, stops)
    seconds["terms"], clock = time.time() - clock, time.time()

    embedder = cfg.analysis.embedder
    vectors = embed(texts, embedder, run, cfg)
    seconds["embed"], clock = time.time() - clock, time.time()

    labels, k, silhouettes = _kmeans(vectors, k, cfg)
    seconds["kmeans"], clock = time.time() - clock, time.time()
    xy = _umap(vectors, cfg.train.seed)
    seconds["umap"], clock = time.time() - clock, time.time()

    losses = _final_losses(run)
    outliers = _outliers(vectors, rows, texts, {i: loss for i, (_, loss) in losses.items()},
                         cfg.analysis.outlier_share)
    clusters = _clusters(rows, texts, labels, stops, losses, vectors, run, embedder, cfg)
    summary = {"rows": len(rows), "embedder": embedder, "k": k, "silhouette": silhouettes.get(k),
               "silhouette_by_k": silhouettes, "outliers": len(outliers),
               "top_terms": [t["term"] for t in terms["train"][:10]]}
    truth = [e.label for e in rows]
    if all(t is not None for t in truth):
        summary.update(_label_agreement(truth, labels, outliers, rows))
    run.write_json(run.clusters, clusters)
    run.write_json(run.outliers, outliers)
    seconds["clusters_outliers"], clock = time.time() - clock, time.time()

    outlier_ids = {o["id"] for o in outliers}
    flagged = [e.id in outlier_ids for e in rows]
    names = {c["cluster"]: c["name"] for c in clusters}
    plots.umap_png(xy, labels, names, flagged, run.umap)
    plots.map_html(xy, labels, names, texts, flagged, run.map_html)
    dynamics = _cartography(run, rows)
    if dynamics:
        plots.cartography_png(dynamics["points"], run.cartography_png)
        run.write_json(run.cartography, dynamics)
        summary["cartography"] = dynamics["regions"]
    seconds["plots"], clock = time.time() - clock, time.time()
    _data_checks(cfg, run, splits)
    seconds["data_checks"] = time.time() - clock
    summary["seconds"] = {k_: round(v, 2) for k_, v in seconds.items()}
    summary["seconds_total"] = round(sum(seconds.values()), 2)
    run.write_json(run.analysis_summary, summary)
    return summary


def _terms(run: RunDir, texts: list[str], stops: set[str]) -> dict:
    """Top terms and word clouds of the training questions and (after eval) the tuned completions."""
    terms = {"train": top_terms(texts, stops)}
    word_cloud(texts, stops, run.wordcloud)
    completions = [p["completion"] for p in run.read_predictions() if p["model"] == "tuned"]
    if completions:
        terms["tuned_completions"] = top_terms(completions, stops)
        word_cloud(completions, stops, run.wordcloud_completions)
    run.write_json(run.terms, terms)
    return terms


def _data_checks(cfg: Recipe, run: RunDir, splits) -> None:
    """The data checks of `tunelab check`, written into analysis/ for the report's Data section."""
    from tunelab import cost
    from tunelab.data import checks
    from tunelab.models import load_tokenizer
    tok = load_tokenizer(cfg.model)
    result, totals = checks.run_checks(cfg, splits, tok, embed_texts=checks.minilm)
    result["estimate"] = run.read_optional(run.estimate) or cost.estimate_or_unpriced(
        cost.splits_work(cfg, splits, tok), "cpu")
    result["verdict"] = checks.verdict(result)
    checks.write(run, result, totals)


def _rows(cfg: Recipe, splits) -> list[Example]:
    rows = splits.train + splits.val
    if cfg.analysis.max_rows:
        rows = rows[:cfg.analysis.max_rows]
    return rows


def _check(texts: list[str], k: int | None) -> None:
    if len(texts) < MIN_ROWS:
        raise UserError(f"analysis: {len(texts)} rows; need at least {MIN_ROWS} to cluster")
    distinct = len(set(texts))
    if distinct == 1:
        raise UserError(f"analysis: all {len(texts)} rows are identical; nothing to cluster")
    if k is not None and k >= distinct:
        raise UserError(f"analysis.k: {k} clusters need more than {k} distinct rows (got {distinct})")


def _kmeans(vectors: np.ndarray, k: int | None, cfg: Recipe) -> tuple[np.ndarray, int, dict]:
    """KMeans labels; k given, or the best silhouette over k_min..k_max (on a sample of <= 3000 rows)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    distinct = len(np.unique(vectors.round(5), axis=0))
    rng = np.random.default_rng(cfg.train.seed)
    sample = rng.choice(len(vectors), size=min(len(vectors), 3000), replace=False)
    candidates = [k] if k else list(range(cfg.analysis.k_min, min(cfg.analysis.k_max, distinct - 1) + 1))
    if not candidates:
        candidates = [2]
    best, scores = None, {}
    for c in candidates:
        model = KMeans(n_clusters=c, n_init=4, random_state=cfg.train.seed).fit(vectors)
        labels = model.labels_
        if len(set(labels[sample])) > 1:
            scores[c] = round(float(silhouette_score(vectors[sample], labels[sample])), 4)
        else:
            scores[c] = -1.0
        if best is None or scores[c] > scores[best[0]]:
            best = (c, labels)
    return best[1], best[0], scores


def _umap(vectors: np.ndarray, seed: int) -> np.ndarray:
    """(N, 2) layout for the pictures only; clusters and outliers use the full embeddings."""
    if len(vectors) < 5:
        from sklearn.decomposition import PCA
        return PCA(n_components=2).fit_transform(vectors)
    import umap
    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(vectors) - 1), min_dist=0.1, metric="cosine",
                        random_state=seed, n_jobs=1)
    return reducer.fit_transform(vectors)


def _final_losses(run: RunDir) -> dict[str, tuple[str, float]]:
    """Each example's (split, loss) in the last epoch it was measured (a row measured in windows, data.chunk, or
    trained twice an epoch: its token-weighted mean there)."""
    latest: dict[str, tuple[int, str, float]] = {}
    for e in merge_rows(run.read_examples()):
        if e["id"] not in latest or e["epoch"] >= latest[e["id"]][0]:
            latest[e["id"]] = (e["epoch"], e["split"], e["loss"])
    return {i: (split, loss) for i, (_, split, loss) in latest.items()}


def _outliers(vectors: np.ndarray, rows: list[Example], texts: list[str], losses: dict[str, float],
              share: float) -> list[dict]:
    """Rare problems: embedding-space isolation (local outlier factor), combined with the model's
    per-example loss by mean rank percentile when the run has losses."""
    from sklearn.neighbors import LocalOutlierFactor
    n = len(vectors)
    neighbours = max(2, min(50, n - 1))
    lof = LocalOutlierFactor(n_neighbors=neighbours, metric="cosine").fit(vectors)
    isolation = -lof.negative_outlier_factor_  # > 1 = sparser than its neighbours
    iso_pct = _percentile_ranks(isolation)
    loss = np.array([losses.get(e.id, np.nan) for e in rows])
    has_loss = ~np.isnan(loss)
    score = iso_pct.copy()
    loss_pct = np.full(n, np.nan)
    if has_loss.sum() >= MIN_ROWS:
        loss_pct[has_loss] = _percentile_ranks(loss[has_loss])
        score[has_loss] = (iso_pct[has_loss] + loss_pct[has_loss]) / 2
    top = np.argsort(-score)[:max(1, round(share * n))]
    out = []
    for i in top:
        why = [f"isolated in embedding space (LOF {isolation[i]:.2f}, more isolated than {100 * iso_pct[i]:.0f} % of "
               "rows)"]
        if has_loss[i]:
            why.append(f"model loss {loss[i]:.3f} (higher than {100 * loss_pct[i]:.0f} % of rows)")
        out.append({"id": rows[i].id, "score": round(float(score[i]), 4), "lof": round(float(isolation[i]), 4),
                    "loss": None if not has_loss[i] else round(float(loss[i]), 4), "why": "; ".join(why),
                    "text": texts[i], **({"label": rows[i].label} if rows[i].label else {})})
    return out


def _percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank as a share of the others in [0, 1] (ties share their mean rank)."""
    from scipy.stats import rankdata
    return (rankdata(values) - 1) / max(len(values) - 1, 1)


def _clusters(rows, texts, labels, stops, losses, vectors, run: RunDir, embedder: str, cfg) -> list[dict]:
    names = class_tfidf_names(texts, labels.tolist(), stops)
    accuracy = _cluster_accuracy(run, vectors, labels, embedder, cfg)
    held_out = _cluster_held_out_loss(run, vectors, labels, embedder, cfg)
    replied = _cluster_replies(run, vectors, labels, embedder, cfg)
    out = []
    for c in sorted(set(labels.tolist()), key=lambda c: -(labels == c).sum()):
        members = _by_centrality(vectors, np.flatnonzero(labels == c))
        measured = [losses[rows[i].id] for i in members if rows[i].id in losses]
        member_losses = [loss for _, loss in measured]
        val_losses = [loss for split, loss in measured if split == "val"]
        entry = {"cluster": int(c), "name": " / ".join(names[c]), "terms": names[c], "size": len(members),
                 "share": round(len(members) / len(rows), 4), "examples": [texts[i] for i in members[:3]],
                 "mean_loss": round(float(np.mean(member_losses)), 4) if member_losses else None,
                 "mean_val_loss": round(float(np.mean(val_losses)), 4) if val_losses else None}
        entry.update(accuracy.get(c, {}) | held_out.get(c, {}) | replied.get(c, {}))
        if rows[0].label is not None:
            counts = Counter(rows[i].label for i in members)
            entry["labels"] = dict(counts.most_common(3))
        if cfg.data.mix:  # which sources a cluster's rows came from: a topic of one source, or shared
            entry["sources"] = dict(Counter(source_of(rows[i].id, cfg.data) for i in members).most_common())
        out.append(entry)
    return out


def _by_centrality(vectors: np.ndarray, members: np.ndarray) -> list[int]:
    """A cluster's row indices, nearest its centroid first (Euclidean, as KMeans assigns them): its first rows are
    its most typical, the examples the report shows."""
    distance = np.linalg.norm(vectors[members] - vectors[members].mean(0), axis=1)  # (m,)
    return members[np.argsort(distance, kind="stable")].tolist()


def _nearest(questions: list[str], vectors, labels, embedder: str, run: RunDir, cfg) -> dict[str, int]:
    """Each held-out question's cluster: the one of its nearest centroid in the training rows' embedding space."""
    questions = list(dict.fromkeys(questions))
    centroids = np.stack([vectors[labels == c].mean(0) for c in range(labels.max() + 1)])
    return dict(zip(questions, (embed(questions, embedder, run, cfg) @ centroids.T).argmax(1).tolist()))


def _cluster_held_out_loss(run: RunDir, vectors, labels, embedder: str, cfg) -> dict[int, dict]:
    """When the held-out answers are measured by loss (eval/loss/): per cluster, its held-out rows and their
    token-weighted target loss under the base model and the tuned adapter; each row's cluster into
    analysis/eval_clusters.json."""
    rows = [r for r in HeldOutLossDir(run.path).read_jsonl(HeldOutLossDir(run.path).losses)
            if r["model"] in ("base", "tuned") and r.get("question")]
    if not rows:
        return {}
    nearest = _nearest([r["question"] for r in rows], vectors, labels, embedder, run, cfg)
    run.write_json(run.eval_clusters, {r["id"]: nearest[r["question"]] for r in rows})
    sums: dict[int, dict] = defaultdict(lambda: defaultdict(lambda: [0.0, 0, 0]))  # loss x tokens, tokens, rows
    for r in rows:
        total = sums[nearest[r["question"]]][r["model"]]
        total[0], total[1], total[2] = total[0] + r["loss"] * r["tokens"], total[1] + r["tokens"], total[2] + 1
    return {c: {f"{m}_held_out_loss": round(t / max(n, 1), 4) for m, (t, n, _) in models.items()}
            | {"held_out_rows": max(k for _, _, k in models.values())} for c, models in sums.items()}


def _cluster_replies(run: RunDir, vectors, labels, embedder: str, cfg) -> dict[int, dict]:
    """When the held-out replies were generated and scored (eval/replies/, eval.overlap): per cluster, its held-out
    rows and the mean chrF of the base model's and the tuned adapter's replies to them (each row by its question's
    nearest centroid, as the loss's)."""
    view = RepliesDir(run.path)
    if not (view.read_eval_summary() or {}).get("overlap"):
        return {}
    rows = [r for r in view.read_predictions() if r["model"] in ("base", "tuned") and r.get("question")]
    if not rows:
        return {}
    nearest = _nearest([r["question"] for r in rows], vectors, labels, embedder, run, cfg)
    scores: dict[int, dict] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        scores[nearest[r["question"]]][r["model"]].append(r["chrf"])
    return {c: {f"{m}_reply_chrf": round(sum(v) / len(v), 4) for m, v in models.items()}
            | {"reply_rows": max(len(v) for v in models.values())} for c, models in scores.items()}


def _cluster_accuracy(run: RunDir, vectors, labels, embedder: str, cfg) -> dict[int, dict]:
    """Eval accuracy per cluster: each scored test question joins the cluster of its nearest centroid."""
    preds = run.read_predictions()
    if not preds:
        return {}
    nearest = _nearest([p["question"] for p in preds], vectors, labels, embedder, run, cfg)
    run.write_json(run.eval_clusters, {p["id"]: nearest[p["question"]] for p in preds})
    acc: dict[int, dict] = defaultdict(lambda: defaultdict(list))
    for p in preds:
        acc[nearest[p["question"]]][p["model"]].append(p["flexible_correct"])
    return {c: {f"{m}_accuracy": round(sum(v) / len(v), 4) for m, v in models.items()} | {"eval_questions": max(
        len(v) for v in models.values())} for c, models in acc.items()}


def _label_agreement(truth: list[str], labels: np.ndarray, outliers: list[dict], rows) -> dict:
    from sklearn.metrics import adjusted_rand_score
    ari = adjusted_rand_score(truth, labels)
    purity = sum(Counter(t for t, l in zip(truth, labels) if l == c).most_common(1)[0][1]
                 for c in set(labels.tolist())) / len(truth)
    rarest, rare_n = min(Counter(truth).items(), key=lambda kv: kv[1])
    caught = sum(1 for o in outliers if o.get("label") == rarest)
    return {"adjusted_rand_index": round(float(ari), 4), "purity": round(float(purity), 4),
            "rarest_label": rarest, "rarest_label_rows": rare_n, "rarest_label_in_outliers": caught,
            "rarest_label_recall": round(caught / rare_n, 4)}


def _cartography(run: RunDir, rows: list[Example]) -> dict | None:
    """Dataset cartography: per training example, confidence = mean over epochs of exp(-loss) (the
    geometric-mean probability of its target tokens), variability = its std across epochs. A row trained more than
    once in an epoch (data.weight, data.mix weights), or in windows (a plain text over train.max_length: data.chunk),
    counts its token-weighted mean loss there; one not drawn in an epoch (a weight below 1) counts the epochs it was
    trained in."""
    per: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e in merge_rows(run.read_examples()):
        if e["split"] == "train":
            per[e["id"]][e["epoch"]].append(e["loss"])
    epochs = {ep for d in per.values() for ep in d}
    if len(epochs) < 2:
        return None
    text = {e.id: question_text(e) for e in rows}
    points = []
    for i, by_epoch in per.items():
        probs = np.exp(-np.array([np.mean(by_epoch[k]) for k in sorted(by_epoch)]))
        conf, var = float(probs.mean()), float(probs.std())
        region = "ambiguous" if var >= 0.1 else ("easy-to-learn" if conf >= 0.5 else "hard-to-learn")
        points.append({"id": i, "confidence": round(conf, 4), "variability": round(var, 4), "region": region,
                       "text": text.get(i, "")})
    regions = dict(Counter(p["region"] for p in points))
    hardest = sorted(points, key=lambda p: p["confidence"])[:10]
    return {"epochs": len(epochs), "regions": regions, "rule": "variability >= 0.1: ambiguous; else confidence "
            ">= 0.5: easy-to-learn, < 0.5: hard-to-learn", "hardest": hardest, "points": points}
