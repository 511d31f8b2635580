"""Evaluation beyond validation loss: lm-eval-harness tasks run offline over the toolkit's own model
(:mod:`.lm`), built-in probes generated on the fly (:mod:`.probes`), validation loss past the trained context
(:mod:`.extrapolation`), and the runner that ties them together and writes the results (:mod:`.runner`).

lm-eval-harness is an optional extra (``pip install 'transformer-toolkit[eval]'``); the probes' data and the
extrapolation figures do not need it, running tasks does."""

from __future__ import annotations


def require_lm_eval() -> None:
    """A one-line error naming the extra when lm-eval-harness is not installed."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise ImportError("evaluating tasks needs lm-eval-harness: pip install 'transformer-toolkit[eval]' "
                          "(or pip install lm-eval)")
