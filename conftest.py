# scikit-learn's array_api_dispatch needs SciPy's array API support, which is
# read once when SciPy is imported: set it before any test imports SciPy.
import os

os.environ.setdefault("SCIPY_ARRAY_API", "1")
