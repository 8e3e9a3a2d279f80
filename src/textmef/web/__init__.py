"""A local web page for fusing exposure stacks: ``textmef serve``.

:func:`create_app` builds the Flask application around an already loaded model; the
``serve`` subcommand (:mod:`textmef.web.cli`) loads the model and runs the app under
waitress. Flask and waitress come with the ``web`` extra: ``pip install "textmef[web]"``.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    # Lazy, so that ``textmef.web.cli`` can register its parser (and explain a missing
    # Flask) without importing Flask first.
    if name == "create_app":
        from textmef.web.app import create_app

        return create_app
    raise AttributeError(f"module 'textmef.web' has no attribute {name!r}")
