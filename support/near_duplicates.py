"""Near-duplicate entries in an instruction dataset (scripts/dataset_report.py and the dataset tests)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _ngram_rows(texts: Sequence[str], n: int, vocabulary: dict[str, int]) -> list[tuple[list[int], list[float]]]:
    """Each text as (columns, values): its character n-gram counts, scaled to unit length."""
    rows = []
    for text in texts:
        counts: dict[int, int] = {}
        for k in range(max(len(text) - n + 1, 1)):
            column = vocabulary.setdefault(text[k : k + n], len(vocabulary))
            counts[column] = counts.get(column, 0) + 1
        norm = math.sqrt(sum(c * c for c in counts.values()))
        rows.append((list(counts), [c / norm for c in counts.values()]))
    return rows


def _sparse_matrix(rows: list[tuple[list[int], list[float]]], width: int) -> torch.Tensor:
    """The rows as one sparse matrix (memory grows with the text, not with width)."""
    row_ids = [r for r, (columns, _) in enumerate(rows) for _ in columns]
    columns = [c for row_columns, _ in rows for c in row_columns]
    values = [v for _, row_values in rows for v in row_values]
    return torch.sparse_coo_tensor(
        torch.tensor([row_ids, columns], dtype=torch.int64).reshape(2, -1),
        torch.tensor(values, dtype=torch.float32),
        size=(len(rows), width),
        check_invariants=True,
    )


def find_near_duplicates(
    data: Sequence[dict], threshold: float = 0.9, n: int = 3, other: Sequence[dict] | None = None, block_size: int = 256
) -> list[tuple[int, int, float]]:
    """Pairs of entries whose instruction + input are alike: cosine similarity of character n-gram counts.

    Returns (i, j, similarity) for every pair at or above `threshold`, most similar first: pairs
    i < j within `data`, or, when `other` is given, every i in `data` against every j in `other`.
    Memory stays bounded for large datasets: the n-gram counts are kept sparse and the similarities
    are computed `block_size` entries of the second dataset at a time, never as one n x n matrix.
    """

    def normalized(entries: Sequence[dict]) -> list[str]:
        return [" ".join(f"{e['instruction']} {e.get('input', '')}".lower().split()) for e in entries]

    vocabulary: dict[str, int] = {}
    left = _ngram_rows(normalized(data), n, vocabulary)
    right = left if other is None else _ngram_rows(normalized(other), n, vocabulary)
    left_matrix = _sparse_matrix(left, len(vocabulary))
    pairs = []
    for start in range(0, len(right), block_size):
        block = torch.zeros(len(vocabulary), min(block_size, len(right) - start))
        for offset, (columns, values) in enumerate(right[start : start + block_size]):
            block[columns, offset] = torch.tensor(values)
        similarity = torch.sparse.mm(left_matrix, block)  # (len(data), block): one block of the similarity matrix
        i, j = torch.nonzero(similarity >= threshold - 1e-6, as_tuple=True)
        for a, b in zip(i.tolist(), j.tolist()):
            if other is not None or a < start + b:
                pairs.append((a, start + b, float(similarity[a, b])))
    return sorted(pairs, key=lambda pair: (-pair[2], pair[0], pair[1]))
