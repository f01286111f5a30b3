"""2-D projection of latent codes for the scatter plot, and a cheap pixel embedding.

PCA keeps this fast and deterministic for 60 000 points (t-SNE would take minutes on a CPU and
UMAP is one more dependency). The projection is fitted on a random subsample of at most
`fit_max` rows and applied to all of them, so its cost grows linearly with N.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA


def _pca(x: np.ndarray, components: int, seed: int, fit_max: int) -> np.ndarray:
    """(N, D) -> (N, components), zero-padded when D or N is too small for that many."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    n, d = x.shape
    out = np.zeros((n, components), dtype=np.float32)
    if n < 2 or d == 0:
        return out
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    rng = np.random.default_rng(seed)
    fit_rows = x if n <= fit_max else x[rng.choice(n, size=fit_max, replace=False)]
    usable = min(components, d, len(fit_rows))
    pca = PCA(n_components=usable, random_state=seed).fit(fit_rows)
    out[:, :usable] = pca.transform(x)
    # Fix each axis' sign so the same data always gives the same picture.
    for j in range(usable):
        if out[:, j].sum() < 0:
            out[:, j] = -out[:, j]
    return out


def project_2d(embeddings: np.ndarray, seed: int = 0, fit_max: int = 10_000) -> np.ndarray:
    """(N, D) latent codes -> (N, 2) float32 points (the first two principal components)."""
    return _pca(embeddings, 2, seed, fit_max)


def pixel_embedding(x: np.ndarray, dim: int = 32, seed: int = 0, fit_max: int = 5_000) -> np.ndarray:
    """(N, C, H, W) images -> (N, dim) PCA codes: a model-free embedding for the cold start."""
    return _pca(np.asarray(x, dtype=np.float32).reshape(len(x), -1), dim, seed, fit_max)
