"""Failures explained. ``types`` (Kind, Fix, Diagnosis, LogPattern) is shared with the engines;
``evidence`` reads logs, ``case`` reads a plan through its engine, ``context``/``memory``/``failures``
word each kind, and ``diagnose`` dispatches. The diagnosis imports the engines, never the reverse."""
