"""What a dictionary knows of where it was fitted, read by evaluate and the dashboard.

A dictionary fitted on a harvest has ``provenance_`` (a dict: ``model_name``,
``model_fingerprint``, ``module``, ``hook_name``, ``layer``,
``context_size``, ``prepend_bos``, ``dtype``, ``harvest``). Its settings fill
in what a user did not give; another layer than the fitted one is refused
unless asked for, and other differences (another model name, context size
or BOS setting) are warned about, since a user may mean them.
"""

import contextlib
import os
import sys
import warnings


class ProvenanceWarning(UserWarning):
    """A setting differs from the one the dictionary was fitted with."""


def provenance_of(estimator):
    """The estimator's ``provenance_`` dict, or an empty dict."""
    provenance = getattr(estimator, "provenance_", None)
    return provenance if isinstance(provenance, dict) else {}


def fitted_where(provenance):
    """The fitted layer as a phrase, or None when the provenance has none."""
    hook = provenance.get("hook_name")
    module = provenance.get("module")
    if hook and module and hook != module:
        return f"{hook} ({module})"
    return hook or module or None


def check_same_layer(provenance, module, hook_name, *, what, allow_other_layer):
    """Refuse ``module`` unless it is the one the dictionary was fitted on.

    Parameters
    ----------
    provenance : dict
    module : str
        Full name of the submodule used now.
    hook_name : str
        Its SAELens hook name.
    what : str
        What uses it, for the message (``"the evaluation"``).
    allow_other_layer : bool
        Accept another layer with a warning instead.
    """
    fitted = fitted_where(provenance)
    if fitted is None:
        return
    if provenance.get("module"):
        same = provenance["module"] == module
    else:
        same = provenance.get("hook_name") == hook_name
    if same:
        return
    now = hook_name if hook_name == module else f"{hook_name} ({module})"
    message = f"the dictionary was fitted on {fitted}, {what} uses {now}"
    if not allow_other_layer:
        raise ValueError(
            f"{message}; pass allow_other_layer=True (--allow-other-layer) to "
            "use it there anyway."
        )
    warnings.warn(f"{message}.", ProvenanceWarning, stacklevel=3)


def warn_if_different(provenance, key, value, *, what):
    """Warn when ``value`` differs from the fitted setting ``key``."""
    fitted = provenance.get(key)
    if fitted is None or fitted == "" or value is None:
        return
    if key == "model_name":
        same = _base_name(fitted) == _base_name(value)
    else:
        same = fitted == value
    if not same:
        warnings.warn(
            f"the dictionary was fitted with {key}={fitted!r}, {what} uses "
            f"{value!r}.",
            ProvenanceWarning,
            stacklevel=3,
        )


def _base_name(name):
    return os.path.basename(str(name).rstrip("/"))


@contextlib.contextmanager
def provenance_warnings_to(stream=None, prefix=""):
    """Print each :class:`ProvenanceWarning` as one line when it is issued.

    For the command line; other warnings are shown as usual.
    """
    stream = sys.stderr if stream is None else stream
    with warnings.catch_warnings():
        warnings.simplefilter("always", ProvenanceWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, ProvenanceWarning):
                print(f"{prefix}warning: {message}", file=stream)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield
