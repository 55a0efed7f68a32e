"""Analysis pictures: the UMAP cluster map (PNG and an interactive self-contained HTML) and the data map."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def umap_png(xy: np.ndarray, labels: np.ndarray, names: dict[int, str], is_outlier: list[bool], out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 6.5), dpi=110)
    cmap = plt.get_cmap("tab20")
    order = sorted(set(labels.tolist()))
    for c in order:
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(c % 20), alpha=0.7, label=f"{c}: {names[c]}")
    flagged = np.array(is_outlier, dtype=bool)
    if flagged.any():
        ax.scatter(xy[flagged, 0], xy[flagged, 1], s=40, facecolors="none", edgecolors="black", linewidths=1.0,
                   label="outlier")
    ax.set_title("Problem types: UMAP of embeddings, coloured by KMeans cluster")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def map_html(xy: np.ndarray, labels: np.ndarray, names: dict[int, str], texts: list[str],
             is_outlier: list[bool], out: Path) -> None:
    """Interactive map: hover shows the question. plotly.js is inlined: no network needed to view it."""
    import plotly.graph_objects as go
    fig = go.Figure()
    for c in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == c)
        fig.add_trace(go.Scattergl(x=xy[idx, 0], y=xy[idx, 1], mode="markers", name=f"{c}: {names[c]}",
                                   text=[_wrap(texts[i]) for i in idx], hoverinfo="text", marker={"size": 5}))
    flagged = np.flatnonzero(np.array(is_outlier, dtype=bool))
    if len(flagged):
        fig.add_trace(go.Scattergl(x=xy[flagged, 0], y=xy[flagged, 1], mode="markers", name="outlier",
                                   text=[_wrap(texts[i]) for i in flagged], hoverinfo="text",
                                   marker={"size": 11, "color": "rgba(0,0,0,0)",
                                           "line": {"width": 1.5, "color": "black"}}))
    fig.update_layout(title="Problem types (UMAP + KMeans) — hover for the question", template="plotly_white",
                      xaxis={"visible": False}, yaxis={"visible": False})
    fig.write_html(str(out), include_plotlyjs=True, full_html=True)


def _wrap(text: str, width: int = 80) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) > width:
            lines.append(line)
            line = ""
        line += w + " "
    lines.append(line)
    return "<br>".join(lines[:8])


def cartography_png(points: list[dict], out: Path) -> None:
    plt = _pyplot()
    colours = {"easy-to-learn": "tab:green", "ambiguous": "tab:orange", "hard-to-learn": "tab:red"}
    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=110)
    for region, colour in colours.items():
        pts = [p for p in points if p["region"] == region]
        if pts:
            ax.scatter([p["variability"] for p in pts], [p["confidence"] for p in pts], s=8, color=colour,
                       alpha=0.7, label=f"{region} ({len(pts)})")
    ax.set_xlabel("variability (std of target probability across epochs)")
    ax.set_ylabel("confidence (mean target probability)")
    ax.set_title("Data map (dataset cartography) of the training examples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def lengths_png(totals, max_length: int, out: Path) -> None:
    """Histogram of prompt + target token lengths, with train.max_length marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    ax.hist(totals, bins=min(60, max(10, len(set(totals.tolist())))), color="tab:blue", alpha=0.8)
    ax.axvline(max_length, color="tab:red", ls="--", label=f"train.max_length = {max_length}")
    ax.set(title="Tokens per training row (prompt + target + EOS)", xlabel="tokens", ylabel="rows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
