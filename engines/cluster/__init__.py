"""Xinference clusters as another place to run models: a supervisor with workers, maybe on many machines.

``xinference`` is the typed REST client; ``store`` the clusters the user added and
where their secrets live; ``session`` the right credentials per call; ``launching``
Ember's engine choice and parameters as Xinference's launch; ``diagnosis`` the
cluster's failures in the local diagnosis' kinds and fixes; ``ops`` what the CLI,
the gateway and the desktop call.
"""
