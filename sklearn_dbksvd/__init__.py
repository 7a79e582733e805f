"""Double-Batch K-SVD sparse dictionary learning for scikit-learn."""

from ._dbksvd import DBKSVDDictionaryLearning
from ._encode import sparse_encode_mp
from ._matryoshka import MatryoshkaDBKSVD
from ._omp import sparse_encode_omp
from .persistence import load_dictionary, save_dictionary

__version__ = "0.1.0.dev0"

__all__ = [
    "DBKSVDDictionaryLearning",
    "MatryoshkaDBKSVD",
    "__version__",
    "load_dictionary",
    "save_dictionary",
    "sparse_encode_mp",
    "sparse_encode_omp",
]
