"""Statistics over populations of members (Hooker et al.), vectorised for permutation tests:
modal labels of many groups of members at once, PIE counts, and the number of classes Welch's
test calls disparately impacted.

Members are the unit of replication: a permutation test reassigns members between populations
(within member index k: member k of every population is swapped as a block, which keeps paired
members paired), and a bootstrap resamples members with replacement. Under "compression changes
nothing", members of the compressed and of the second dense population are exchangeable, so the
permutation p-value is exact whatever the number of members.
"""

from __future__ import annotations

import numpy as np
from scipy import special


def modes(pool: np.ndarray, groups: np.ndarray, classes: int) -> np.ndarray:
    """Modal labels [G, N] of each group of members: `pool` [M, N] predicted labels, `groups`
    [G, K] member indices into the pool. Ties go to the largest label (Hooker et al.'s
    `mode().max()`, compalign.populations.modal_labels)."""
    onehot = (pool[:, :, None] == np.arange(classes)).astype(np.int16)  # [M, N, C]
    votes = np.zeros((groups.shape[0], pool.shape[1], classes), dtype=np.int16)
    for member in range(groups.shape[1]):
        votes += onehot[groups[:, member]]
    # the most votes, ties to the largest label: one argmax over votes * classes + label
    votes *= classes
    votes += np.arange(classes, dtype=np.int16)
    return votes.argmax(axis=2)


def member_recalls(
    pool: np.ndarray, labels: np.ndarray, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """([M, C] each member's recall of each class (NaN for an absent class), [M] its top-1)."""
    correct = pool == labels[None, :]
    support = np.bincount(labels, minlength=classes).astype(np.float64)
    hits = np.stack([np.bincount(labels[row], minlength=classes) for row in correct])
    with np.errstate(invalid="ignore", divide="ignore"):
        recalls = np.where(support > 0, hits / support, np.nan)
    return recalls, correct.mean(axis=1)


def impacted_counts(
    recalls: np.ndarray,
    top1: np.ndarray,
    reference: np.ndarray,
    groups: np.ndarray,
    alpha: float,
) -> np.ndarray:
    """[G] classes with Welch p <= alpha between the `reference` members' normalised recalls and
    each group's (recall minus the POPULATION's mean top-1, Hooker et al.'s gen_tstatistic.py);
    a class whose recalls vary in neither population is not tested (as class_impact)."""

    def normalised(indices: np.ndarray) -> np.ndarray:  # [..., K, C]
        return recalls[indices] - top1[indices].mean(axis=-1, keepdims=True)[..., None]

    dense = normalised(reference)  # [K, C]
    other = normalised(groups)  # [G, K, C]
    k1, k2 = dense.shape[0], other.shape[-2]
    mean1, mean2 = dense.mean(axis=0), other.mean(axis=-2)
    var1, var2 = dense.var(axis=0, ddof=1), other.var(axis=-2, ddof=1)
    se2 = var1 / k1 + var2 / k2
    tested = se2 > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        statistic = (mean1 - mean2) / np.sqrt(se2)
        dof = se2**2 / ((var1 / k1) ** 2 / (k1 - 1) + (var2 / k2) ** 2 / (k2 - 1))
        p = 2 * special.stdtr(dof, -np.abs(statistic))
    return np.sum(tested & np.isfinite(p) & (p <= alpha), axis=-1)


def slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of y [..., L] on x [L] (the trend a test reads)."""
    centred = x - x.mean()
    return (y * centred).sum(axis=-1) / (centred**2).sum()


def block_permutations(members: int, groups: int, permutations: int, seed: int) -> np.ndarray:
    """[B, G, K] a random reassignment of member k of each of G populations among them, for each
    k independently (the identity first is not included)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((permutations, members, groups)), axis=2)  # [B, K, G]
    return np.transpose(order, (0, 2, 1))  # [B, G, K]: which population's member k goes to g


def pooled(populations: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(pool [G*K, N], index [G, K]) of G populations of K members each."""
    pool = np.concatenate(populations, axis=0)
    size = populations[0].shape[0]
    return pool, np.arange(len(populations) * size).reshape(len(populations), size)


def permuted_index(index: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """The pool indices [..., G, K] after `permutation` [..., G, K] (which population's member k
    goes to group g)."""
    return index[permutation, np.arange(index.shape[1])]


def pie_counts(
    pool: np.ndarray, groups: np.ndarray, dense_modes: np.ndarray, classes: int, chunk: int = 100
) -> np.ndarray:
    """PIE counts [..., G] of groups of members ([..., G, K] indices into `pool`) against the
    dense population's modal labels, in chunks of `chunk` leading rows (memory)."""
    shape = groups.shape[:-1]
    flat = groups.reshape(-1, groups.shape[-1])
    # where every member of the pool agrees, every group's mode is that label: such an example
    # is a PIE of every group or of none, so only the others are counted group by group
    unanimous = (pool == pool[:1]).all(axis=0)
    constant = int((unanimous & (pool[0] != dense_modes)).sum())
    varying = ~unanimous
    part, reference = pool[:, varying], dense_modes[varying]
    step = chunk * (shape[-1] if len(shape) else 1)
    counts = [
        (modes(part, flat[start : start + step], classes) != reference[None, :]).sum(axis=1)
        for start in range(0, len(flat), step)
    ]
    return (np.concatenate(counts) + constant).reshape(shape)


def bootstrap_members(members: int, samples: int, seed: int) -> np.ndarray:
    """[B, K] member indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, members, size=(samples, members))
