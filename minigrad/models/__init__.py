"""``mg.models``: models written as plain cost functions over mg ops.

No model has a hand-written gradient: ``mg.grad`` derives it, and because the embedding
tables are reached only through row gathers / ``mg.sparse.dot``, their gradients are
row-sparse. Every model keeps its parameters as ``mg.shared`` attributes (``.params``)
and nothing else, so it pickles and works with every optimizer and ``mg.parallel``.
"""
from minigrad.models.fm import FactorizationMachine
from minigrad.models.masked_embedding import (
    BagOfWords,
    MaskedEmbeddingClassifier,
    bag_of_words,
    log_inverse_frequency,
)
from minigrad.models.triplet import TripletEmbedding, triplets_from_classes

__all__ = [
    "BagOfWords",
    "FactorizationMachine",
    "MaskedEmbeddingClassifier",
    "TripletEmbedding",
    "bag_of_words",
    "log_inverse_frequency",
    "triplets_from_classes",
]
