"""One name, any model: the local store first, then the catalog's downloadable variants.

The store and the catalog do not know each other (the catalog builds on the
store's ModelSpec); whoever takes a name from a person (``ember serve NAME``,
the chat window, the models window) resolves it here.
"""
from __future__ import annotations

from engines.models import catalog, store


def resolve(name_or_path: str) -> store.ModelSpec:
    """A local model or path, else a catalog variant (``path`` set once downloaded).

    Raises :class:`~engines.models.store.ModelError` (kind ``unknown``) with a
    did-you-mean hint when neither knows the name.
    """
    spec = store.find_local(name_or_path)
    if spec is not None:
        return spec
    try:
        return catalog.resolve(name_or_path)
    except LookupError:
        raise store.unknown(name_or_path) from None
