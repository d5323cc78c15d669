"""Models: the local store, the curated catalog, downloads and Hub access.

Imports run one way, so no module here reaches back into one that imports it:

- ``hub`` (where the Hub is, its token and cache), ``records`` (verified
  downloads) and ``store`` (ModelSpec, local models) import nothing of the others;
- ``remote_gguf`` reads GGUF headers through ``hub``;
- ``catalog`` builds on ``store``, ``records`` and ``remote_gguf``;
- ``downloads`` (the transfer) and ``lookup`` (a name to a ModelSpec) sit on top.
"""
