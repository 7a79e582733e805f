import importlib.util

import pytest

# Running __main__ on import would start the command line.
collect_ignore = ["__main__.py"]

# Optional dependencies of sklearn_dbksvd.interop (the "torch" extra): without
# them its doctests are skipped, and the torch module is not imported to
# collect its doctests.
_HAS_TORCH = importlib.util.find_spec("torch") is not None
_HAS_SAFETENSORS = importlib.util.find_spec("safetensors") is not None
if not _HAS_TORCH:
    collect_ignore.append("interop/_torch_encoder.py")


def pytest_collection_modifyitems(config, items):
    # Doctest items are named by the dotted path of what they document.
    needs = {
        "sklearn_dbksvd.interop.pytorch.": _HAS_TORCH,
        "sklearn_dbksvd.interop": _HAS_SAFETENSORS,
    }
    skip = pytest.mark.skip(reason="needs pip install 'sklearn-dbksvd[torch]'")
    for item in items:
        for prefix, available in needs.items():
            if item.name.startswith(prefix):
                if not available:
                    item.add_marker(skip)
                break
