"""N-gram count matrices for the caption metrics, built without Python loops over n-grams.

`count_matrix(sentences, max_n)` turns tokenized sentences into one sparse matrix
`counts[sentence, feature]`, where a feature is an n-gram of any order 1..max_n and
`order[feature]` says which. Each order's n-gram ids come from the previous order's:
the id of the (n-1)-gram starting at a position, combined with the token n-1 places
later, is made dense with `np.unique`. So the work is a few numpy passes over all
positions, whatever the vocabulary, and the metrics become sparse matrix algebra.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import numpy as np
import scipy.sparse as sp


@dataclasses.dataclass(frozen=True)
class NgramCounts:
    counts: sp.csr_matrix  # [num_sentences, num_features] float64 term counts
    order: np.ndarray  # [num_features] n-gram order minus one (0 for unigrams)
    lengths: np.ndarray  # [num_sentences] number of tokens
    max_n: int

    def per_order(self, matrix: sp.spmatrix) -> np.ndarray:
        """Row sums of `matrix` (same features as `counts`) split by n-gram order:
        [rows, max_n]."""
        onehot = sp.csr_matrix(
            (np.ones(len(self.order)), (np.arange(len(self.order)), self.order)),
            shape=(len(self.order), self.max_n),
        )
        return np.asarray((matrix @ onehot).todense())


def count_matrix(sentences: Sequence[Sequence[str]], max_n: int = 4) -> NgramCounts:
    lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
    flat = list(itertools.chain.from_iterable(sentences))
    # Token -> id with C-level loops only (dict.fromkeys, map): no Python frame per token.
    vocabulary = {token: i for i, token in enumerate(dict.fromkeys(flat))}
    token_ids = np.fromiter(map(vocabulary.__getitem__, flat), dtype=np.int64, count=len(flat))
    sentence_of = np.repeat(np.arange(len(sentences)), lengths)
    # Position of each token inside its sentence, to know which n-grams fit.
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(sentences) else np.zeros(0, np.int64)
    offset_in_sentence = np.arange(len(token_ids)) - np.repeat(starts, lengths)
    remaining = np.repeat(lengths, lengths) - offset_in_sentence  # tokens from here to the end

    rows, cols, orders = [], [], []
    num_features = 0
    ids = token_ids  # id of the n-gram starting at each position (valid where it fits)
    vocab_size = max(len(vocabulary), 1)
    for n in range(1, max_n + 1):
        if n > 1:
            fits = remaining >= n
            keys = np.full(len(token_ids), -1, dtype=np.int64)
            positions = np.nonzero(fits)[0]
            keys[positions] = ids[positions] * vocab_size + token_ids[positions + n - 1]
        else:
            fits = np.ones(len(token_ids), dtype=bool)
            keys = token_ids
        positions = np.nonzero(fits)[0]
        unique, dense = np.unique(keys[positions], return_inverse=True)
        ids = np.full(len(token_ids), -1, dtype=np.int64)
        ids[positions] = dense
        vocab_size_next = len(unique)
        rows.append(sentence_of[positions])
        cols.append(dense + num_features)
        orders.append(np.full(len(unique), n - 1, dtype=np.int64))
        num_features += len(unique)
        # Next order's keys multiply these ids by the token vocabulary: stay in int64.
        if vocab_size_next and vocab_size and vocab_size_next > (2**62) // vocab_size:
            raise OverflowError("too many distinct n-grams for int64 keys")
    row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    col = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    counts = sp.csr_matrix(
        (np.ones(len(row)), (row, col)), shape=(len(sentences), num_features)
    )  # duplicates (repeated n-grams) are summed
    counts.sum_duplicates()
    order = np.concatenate(orders) if orders else np.zeros(0, np.int64)
    return NgramCounts(counts=counts, order=order, lengths=lengths, max_n=max_n)


def group_rows(group_of_row: np.ndarray, num_groups: int) -> sp.csr_matrix:
    """[num_groups, num_rows] 0/1 matrix: multiplying sums the rows of each group."""
    return sp.csr_matrix(
        (np.ones(len(group_of_row)), (group_of_row, np.arange(len(group_of_row)))),
        shape=(num_groups, len(group_of_row)),
    )


def group_max(matrix: sp.csr_matrix, group_of_row: np.ndarray, num_groups: int) -> sp.csr_matrix:
    """Elementwise maximum of the rows of each group: [num_groups, features]."""
    coo = matrix.tocoo()
    groups = group_of_row[coo.row]
    keys = groups * matrix.shape[1] + coo.col
    # Sort by key, then by value descending: the first of each key is its maximum.
    order = np.lexsort((-coo.data, keys))
    keys, data = keys[order], coo.data[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, data = keys[first], data[first]
    return sp.csr_matrix(
        (data, (keys // matrix.shape[1], keys % matrix.shape[1])), shape=(num_groups, matrix.shape[1])
    )
