"""Log and message patterns that name a failure, as data.

Each entry is ``(regex, kind)`` or ``(regex, kind, facts)``:

- ``regex``: a string (compiled case-insensitively) or a compiled pattern,
  searched in one log line (or in an HTTP error message);
- ``kind``: a :class:`engines.diagnosis.diagnose.Kind` value (plain string);
- ``facts`` (optional): a dict merged into the diagnosis' facts when the
  line matches, e.g. ``{"problem": "wrong_magic"}``. Named groups of the regex
  become facts too (``(?P<mib>[\\d.]+) MiB`` -> ``facts["mib"] = "1234.5"``).

The table is ordered: when several lines match, the entry that comes first in
the table wins (specific before generic). An engine's backend module may
define its own ``LOG_PATTERNS`` list of the same shape; it is consulted before
this table (see ``engines.diagnosis.diagnose.patterns_for``).

Sources: the seed's "Common Issues" (older llama.cpp, Metal), the lines
provoked on this machine (FACTS.md, xllamacpp 2026.10, CPU) and the CUDA
allocator's wording.
"""
from __future__ import annotations

#: llama.cpp (and anything that prints llama.cpp's lines), most specific first.
LLAMACPP: list[tuple] = [
    # -- port / start-up ------------------------------------------------------------------
    (r"couldn't bind HTTP server socket.*?port: (?P<port>\d+)", "port_in_use"),
    (r"couldn't bind HTTP server socket", "port_in_use"),
    (r"address already in use", "port_in_use"),
    # -- not a valid model file -----------------------------------------------------------
    (r"failed to open GGUF file '(?P<file>[^']*)' \((?P<os_error>[^)]*)\)", "invalid_model", {"problem": "missing"}),
    (r"gguf_init_from_reader: failed to read magic", "invalid_model", {"problem": "empty"}),
    (r"invalid magic characters: '(?P<magic>[^']*)'", "invalid_model", {"problem": "not_gguf"}),
    (r"failed to read key-value pairs", "invalid_model", {"problem": "truncated"}),
    (r"failed to read tensor info", "invalid_model", {"problem": "truncated"}),
    (r"data is not within the file bounds", "invalid_model", {"problem": "truncated"}),
    (r"model is corrupted or incomplete", "invalid_model", {"problem": "truncated"}),
    (r"unknown model architecture: '(?P<architecture>[^']*)'", "invalid_model", {"problem": "unknown_architecture"}),
    (r"unsupported model architecture", "invalid_model", {"problem": "unknown_architecture"}),
    (r"GGUF version \d+ is not supported|unsupported GGUF version", "invalid_model", {"problem": "unsupported"}),
    (r"error loading model vocabulary", "invalid_model", {"problem": "corrupt"}),
    (r"wrong number of tensors", "invalid_model", {"problem": "corrupt"}),
    # -- image encoding ran out of memory (seed error 1) ----------------------------------
    (r"failed to process image", "image_failed"),
    (r"failed to encode image", "image_failed"),
    (r"clip_image_batch_encode: .*failed", "image_failed"),
    (r"mtmd_helper_eval failed", "image_failed"),
    # -- the request is longer than a slot (seed error 2) ---------------------------------
    (r"request \((?P<n_prompt_tokens>\d+) tokens\) exceeds the available context size \((?P<n_ctx_slot>\d+) tokens\)",
     "context_exceeded"),
    (r"the request exceeds the available context size", "context_exceeded"),
    (r"exceed_context_size_error", "context_exceeded"),
    # -- the KV cache is full or memory ran out while decoding (seed error 3) -------------
    (r"Input prompt is too big compared to KV size", "kv_cache_full"),
    (r"KV cache is full", "kv_cache_full"),
    (r"failed to find free space in the KV cache", "kv_cache_full", {"cause": "space"}),
    (r"failed to find a memory slot for batch", "kv_cache_full", {"cause": "space"}),
    (r"Context size has been exceeded", "kv_cache_full", {"cause": "space"}),
    (r"failed to decode the batch", "kv_cache_full"),
    (r"llama_decode: failed to decode", "kv_cache_full"),
    (r"decode\(\) failed", "kv_cache_full"),
    # -- out of memory while loading (weights or KV buffers) -------------------------------
    (r"insufficient memory \(attempted to allocate (?P<alloc_mb>[\d.]+) MB\)", "oom_load", {"memory": "ram"}),
    (r"allocating (?P<alloc_mib>[\d.]+) MiB on device (?P<device>\d+): cudaMalloc failed: out of memory",
     "oom_load", {"memory": "gpu"}),
    (r"cudaMalloc failed: out of memory", "oom_load", {"memory": "gpu"}),
    (r"failed to allocate (?P<buffer>(?:CUDA|ROCm|Vulkan|Metal|MTL|SYCL)\d*) buffer", "oom_load", {"memory": "gpu"}),
    (r"CUDA error: out of memory", "oom_load", {"memory": "gpu"}),
    (r"kIOGPUCommandBufferCallbackErrorOutOfMemory|error: Insufficient Memory \(", "oom_load", {"memory": "gpu"}),
    (r"ErrorOutOfDeviceMemory|vk::Device::allocateMemory", "oom_load", {"memory": "gpu"}),
    (r"failed to allocate buffer for kv cache", "oom_load"),
    (r"failed to allocate (?P<buffer>CPU\w*) buffer", "oom_load", {"memory": "ram"}),
    (r"unable to allocate .*backend buffer", "oom_load"),
    (r"failed to allocate compute (?:pp )?buffers?", "oom_load"),
    (r"std::bad_alloc", "oom_load", {"memory": "ram"}),
    (r"\bout of memory\b", "oom_load"),
    # -- crashes ---------------------------------------------------------------------------
    (r"GGML_ASSERT\((?P<assertion>.*)\) failed", "engine_crashed"),
    (r"Segmentation fault|segfault", "engine_crashed"),
    # -- generic start-up failure (last: it accompanies every cause above) -----------------
    (r"n_seq_max must be <= (?P<max_parallel>\d+)", "bad_parameter", {"parameter": "n_parallel"}),
    (r"llama_model_load: error loading model: (?P<detail>.*)", "invalid_model", {"problem": "load_error"}),
    (r"failed to load model", "startup_failed"),
    (r"Failed to init server", "startup_failed"),
    (r"llama\.cpp failed to start", "startup_failed"),
]

#: Remote servers (any OpenAI-compatible endpoint), matched against error messages.
HTTP: list[tuple] = [
    (r"invalid api key|incorrect api key|unauthorized|invalid authentication", "auth_failed"),
    (r"maximum context length is (?P<n_ctx_slot>\d+) tokens.*?(?P<n_prompt_tokens>\d+) (?:input )?tokens",
     "context_exceeded"),
    (r"maximum context length", "context_exceeded"),
]
