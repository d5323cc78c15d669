"""Log and message patterns that name a failure whatever the engine, as data.

Each engine's own lines live with its backend (``Engine.log_patterns``, e.g.
:mod:`engines.running.backends.llamacpp_diagnosis`); they are read first. These
tables come after them: :data:`GENERIC`, what the operating system, allocators
and servers print in any engine's log, and :data:`HTTP`, what OpenAI-compatible
servers answer. Rows are ``(regex, kind[, facts])`` (see
:func:`engines.diagnosis.types.log_table`); when several lines match, the row
that comes first wins (specific before generic).
"""
from __future__ import annotations

import re

from engines.diagnosis.types import log_table

#: Any engine's log: a taken port, memory that ran out, a crash.
GENERIC = log_table(
    (r"address already in use", "port_in_use"),
    (r"CUDA error: out of memory", "oom_load", {"memory": "gpu"}),
    (r"std::bad_alloc", "oom_load", {"memory": "ram"}),
    (r"(?<!running )(?<!run )\bout of memory\b", "oom_load"),
    (r"Segmentation fault|segfault", "engine_crashed"),
    # the shell's word for a process the kernel killed (SIGKILL: often the out-of-memory killer)
    (r"zsh: killed\b|Killed: 9\b|line \d+: +\d+ Killed\b|^Killed$", "engine_crashed", {"signal": 9}),
)

#: Remote servers (any OpenAI-compatible endpoint), matched against error messages.
HTTP = log_table(
    (r"invalid api key|incorrect api key|unauthorized|invalid authentication", "auth_failed"),
    (r"maximum context length is (?P<n_ctx_slot>\d+) tokens.*?(?P<n_prompt_tokens>\d+) (?:input )?tokens",
     "context_exceeded"),
    (r"maximum context length", "context_exceeded"),
)

#: Lines any engine's log may show once it answers requests (access logs, Ember's worker), and while it loads.
#: With each engine's own (``Engine.serving_lines``, ``loading_lines``) they tell when a failure happened.
SERVING = re.compile(r'"(?:POST|GET) /(?:v1/)?\S+ HTTP/1\.[01]" 200|ember-worker: ready|ember-mlx: model loaded')
LOADING = re.compile(r"Loading checkpoint shards|Loading model|load_model|ember-worker: starting")
