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
    collect_ignore.append("_torch_encoder.py")


def pytest_collection_modifyitems(config, items):
    needs = {
        "sklearn_dbksvd.interop": _HAS_SAFETENSORS,
        "sklearn_dbksvd.interop.to_torch": _HAS_TORCH,
    }
    skip = pytest.mark.skip(reason="needs pip install 'sklearn-dbksvd[torch]'")
    for item in items:
        if needs.get(item.name, True) is False:
            item.add_marker(skip)
