"""scikit-learn's own MiniBatchDictionaryLearning tests, run on our estimator.

The test module ``sklearn/decomposition/tests/test_dict_learning.py`` of the
installed scikit-learn is imported at test time (never copied here). Every
test function of it that builds a ``MiniBatchDictionaryLearning`` (in its body
or in its parametrisation) runs again with that name bound to
:class:`~sklearn_dbksvd.DBKSVDDictionaryLearning`, with every parameter set of
its ``pytest.mark.parametrize`` marks. A scikit-learn release whose tests our
estimator no longer passes therefore fails here.

Dropped, as the only exception: assertions on MBDL's private statistics
``_A`` and ``_B`` (the inner sums of its online algorithm, which DB-KSVD does
not have). A test may only fail on such an assertion when every assertion
before it passed and nothing but ``_A``/``_B`` assertions follow it
(:func:`_fails_only_on_private_statistics`); today that is
``test_minibatch_dictionary_learning_dtype_match``. No test is deselected.
"""

import inspect
import itertools
import traceback

import pytest
from sklearn.decomposition import MiniBatchDictionaryLearning

from sklearn_dbksvd import DBKSVDDictionaryLearning

sklearn_tests = pytest.importorskip(
    "sklearn.decomposition.tests.test_dict_learning",
    reason="scikit-learn's test modules are not installed",
)

_PRIVATE_STATISTICS = ("._A", "._B")

# The lasso coders ("cd") of those tests stop at their iteration cap on tiny
# data, as they do under MBDL: not what these tests are about.
pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning"
)


def _ours(estimator):
    """Our estimator with the parameters of a ``MiniBatchDictionaryLearning``."""
    return DBKSVDDictionaryLearning(**estimator.get_params(deep=False))


def _parameter_sets(func):
    """Keyword arguments of every case of ``func``'s parametrize marks."""
    marks = [m for m in getattr(func, "pytestmark", []) if m.name == "parametrize"]
    axes = []
    for mark in marks:
        names, values = mark.args[0], mark.args[1]
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        cases = []
        for value in values:
            if isinstance(value, type(pytest.param(None))):
                value = value.values
            value = value if len(names) > 1 else (value,)
            cases.append(dict(zip(names, value, strict=True)))
        axes.append(cases)
    for combination in itertools.product(*axes):
        kwargs = {}
        for part in combination:
            kwargs.update(part)
        yield kwargs


def _builds_mbdl(func):
    """Whether the body of ``func`` (not its decorators) builds an MBDL."""
    source = inspect.getsource(func)
    body = source[source.index(f"def {func.__name__}(") :]
    return "MiniBatchDictionaryLearning(" in body


def _cases():
    cases = []
    for name, func in sorted(vars(sklearn_tests).items()):
        if not name.startswith("test_") or not callable(func):
            continue
        for kwargs in _parameter_sets(func):
            in_parameters = any(
                isinstance(v, MiniBatchDictionaryLearning) for v in kwargs.values()
            )
            if not (_builds_mbdl(func) or in_parameters):
                continue
            label = "-".join(
                type(v).__name__ if hasattr(v, "get_params") else repr(v)
                for v in kwargs.values()
            )
            cases.append(pytest.param(name, kwargs, id=f"{name}[{label}]"))
    return cases


CASES = _cases()


def _fails_only_on_private_statistics(func, error):
    """Whether ``error`` comes from an ``_A``/``_B`` line followed by no other.

    The failing line of ``func`` must read ``_A`` or ``_B``, and every
    statement after it as well: all of the test's other assertions ran.
    """
    frames = [
        f for f in traceback.extract_tb(error.__traceback__)
        if f.name == func.__name__ and f.filename == inspect.getsourcefile(func)
    ]
    if not frames:
        return False
    lines, first = inspect.getsourcelines(func)
    rest = lines[frames[-1].lineno - first :]
    statements = [line.strip() for line in rest if line.strip()]
    return bool(statements) and all(
        any(attribute in line for attribute in _PRIVATE_STATISTICS)
        for line in statements
    )


def test_the_shim_finds_scikit_learns_mbdl_tests():
    names = {case.values[0] for case in CASES}
    # Those of scikit-learn 1.9; a release may add more, never lose these.
    assert {
        "test_minibatch_dictionary_learning_positivity",
        "test_minibatch_dictionary_learning_lars",
        "test_dict_learning_online_estimator_shapes",
        "test_dict_learning_online_initialization",
        "test_dict_learning_online_partial_fit",
        "test_minibatch_dictionary_learning_dtype_match",
        "test_get_feature_names_out",
    } <= names


@pytest.mark.parametrize("name, kwargs", CASES)
def test_scikit_learn_mbdl_test_passes_with_our_estimator(name, kwargs, monkeypatch):
    # Only the module's global name is patched, and restored after the test.
    monkeypatch.setattr(
        sklearn_tests, "MiniBatchDictionaryLearning", DBKSVDDictionaryLearning
    )
    func = getattr(sklearn_tests, name)
    kwargs = {
        k: _ours(v) if isinstance(v, MiniBatchDictionaryLearning) else v
        for k, v in kwargs.items()
    }
    if "monkeypatch" in inspect.signature(func).parameters:
        kwargs["monkeypatch"] = monkeypatch
    try:
        func(**kwargs)
    except AttributeError as error:
        if not _fails_only_on_private_statistics(func, error):
            raise
