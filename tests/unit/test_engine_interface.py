"""Every engine, taken from the registry, implements the whole Engine interface.

Table-driven over Ember's five engines: each member is there with the right
kind, the roles name real keys of the engine's schema, the fixes are
:class:`Fix` objects the engine itself accepts, and ``loaded`` returns what it
declares. A plan for each engine is made the way launch makes it (validate,
then prepare), on fake machines named as such.
"""
from __future__ import annotations

import inspect
import types
import typing

import pytest

from engines.diagnosis.types import Fix, Kind, LogPattern
from engines.machine.fit import FitEstimate, LoadedReport
from engines.machine.hardware import GPU, HardwareProfile
from engines.models.store import ModelSpec
from engines.running import backends, launch
from engines.running.backends.base import ContextShape, Engine, Prepared, Roles
from engines.running.params import ParamSpec
from engines.running.supervisor import Command

GIB = 1024 ** 3

# What llama.cpp prints at start-up (xllamacpp 2026.10, verbosity 4) for the starter model.
LLAMACPP_LOG = [
    "load_tensors: offloaded 0/29 layers to GPU",
    "load_tensors:   CPU_Mapped model buffer size =   240.19 MiB",
    "llama_context: n_ctx         = 2048",
    "llama_kv_cache: size =   22.00 MiB (  2048 cells,  28 layers,  1/1 seqs), K (f16):   11.00 MiB",
    "srv    load_model: initializing slots, n_slots = 1",
    "slot   load_model: id  0 | task -1 | new slot, n_ctx_slot = 2048",
    "srv  init: n_slots = 1, n_ctx_slot = 2048",
]

#: engine -> (the roles it must declare, the format of the model it runs here)
ENGINES = {
    "llamacpp": (Roles(context="n_ctx", parallel="n_parallel", gpu_layers="n_gpu_layers"), "gguf"),
    "transformers": (Roles(context="max_model_len"), "pytorch"),
    "vllm": (Roles(context="max_model_len", parallel="max_num_seqs"), "pytorch"),
    "sglang": (Roles(context="context_length", parallel="max_running_requests"), "pytorch"),
    "mlx": (Roles(), "mlx"),
}


def fake_cuda_pc() -> HardwareProfile:
    return HardwareProfile("linux", "x86_64", 16, 64 * GIB, 58 * GIB,
                           [GPU("NVIDIA GeForce RTX 4090 (fake)", "nvidia", "cuda", 24 * GIB, 22 * GIB, "CUDA0")],
                           "fake CPU", False, "cuda")


@pytest.fixture(scope="module")
def specs(starter_spec):
    folder = ModelSpec(name="qwen2.5-0.5b", format="pytorch", quantization="none",
                       architecture="Qwen2ForCausalLM", path="/models/qwen2.5-0.5b (fake)", context_length=32768)
    return {"gguf": starter_spec, "pytorch": folder,
            "mlx": ModelSpec(name="qwen-mlx", format="mlx", quantization="4bit", path="/models/qwen-mlx (fake)")}


def plan_for(engine: Engine, spec: ModelSpec, overrides: dict[str, object]):
    """The plan launch.plan would make for this engine (selection aside)."""
    hw = fake_cuda_pc()
    user = engine.validate(overrides)
    prepared = engine.prepare(spec, hw, user)
    return launch.LaunchPlan(spec, engine.name, prepared.values, user, hw, None, prepared.estimate,
                             prepared.warnings)


@pytest.mark.parametrize("name", list(ENGINES))
def test_every_member_is_there_with_the_right_kind(name):
    engine = backends.get(name)
    assert isinstance(engine, Engine) and not inspect.isabstract(type(engine))
    assert engine.name == name and engine.label == backends.LABELS[name]
    assert isinstance(engine.roles, Roles) and engine.roles == ENGINES[name][0]
    assert engine.log_patterns and all(isinstance(p, LogPattern) and isinstance(p.kind, Kind)
                                       for p in engine.log_patterns)
    for method in ("schema", "validate", "prepare", "command", "loaded", "fixes_for", "context",
                   "memory_estimate", "context_override"):
        assert inspect.ismethod(getattr(engine, method)), method
    schema = engine.schema()
    assert schema and all(isinstance(k, str) and isinstance(s, ParamSpec) and s.key == k for k, s in schema.items())


@pytest.mark.parametrize("name", list(ENGINES))
def test_roles_name_real_keys_of_the_schema(name):
    engine = backends.get(name)
    schema = engine.schema()
    for role in ("context", "parallel", "gpu_layers"):
        key = getattr(engine.roles, role)
        if key is not None:
            assert key in schema, f"{name}: its {role} role {key!r} is not one of its parameters"
            assert schema[key].type == "int"


@pytest.mark.parametrize("name", list(ENGINES))
def test_context_goes_through_the_role(name, specs):
    engine = backends.get(name)
    override = engine.context_override(2048)
    if engine.roles.context is None:
        assert override == {}
        return
    assert override == {engine.roles.context: 2048}
    assert engine.validate(override) == override
    plan = plan_for(engine, specs[ENGINES[name][1]], override)
    shape = engine.context(plan)
    assert isinstance(shape, ContextShape) and shape.total == 2048 and shape.per_slot == 2048
    assert launch.context_override(name, 1024) == {engine.roles.context: 1024}


@pytest.mark.parametrize("name", list(ENGINES))
def test_prepare_and_command_give_the_declared_types(name, specs):
    engine = backends.get(name)
    spec = specs[ENGINES[name][1]]
    prepared = engine.prepare(spec, fake_cuda_pc(), {})
    assert isinstance(prepared, Prepared) and isinstance(prepared.values, dict)
    assert prepared.estimate is None or isinstance(prepared.estimate, FitEstimate)
    assert all(isinstance(w, str) for w in prepared.warnings)
    cmd = engine.command(spec, prepared.values, "127.0.0.1", 8123, "k-secret")
    assert isinstance(cmd, Command) and cmd.argv and "k-secret" not in cmd.display


@pytest.mark.parametrize("name", list(ENGINES))
def test_loaded_returns_the_declared_type(name):
    engine = backends.get(name)
    declared = typing.get_type_hints(type(engine).loaded)["return"]
    report = engine.loaded(LLAMACPP_LOG)
    assert isinstance(report, declared)
    if name == "llamacpp":  # the only engine that reports what it did
        assert isinstance(report, LoadedReport) and report.n_ctx == 2048 and report.n_ctx_slot == 2048
        assert report.gpu_layers == 0 and report.kv_cache_mib == 22.0
    else:
        assert report is None


@pytest.mark.parametrize("name", list(ENGINES))
def test_fixes_are_fix_objects_the_engine_accepts(name, specs):
    engine = backends.get(name)
    override = engine.context_override(8192)
    plan = plan_for(engine, specs[ENGINES[name][1]], override)
    fixes = engine.fixes_for(Kind.OOM_LOAD, {"memory": "gpu"}, plan)
    assert fixes, f"{name} offers nothing when memory runs out at load"
    for kind in Kind:
        for f in engine.fixes_for(kind, {"memory": "gpu", "cause": "space", "n_prompt_tokens": 9000,
                                         "n_ctx_slot": 8192}, plan):
            assert isinstance(f, Fix) and f.label and f.changes and f.action is None
            assert engine.validate(f.changes) == f.changes, (kind, f)  # a one-click fix the engine takes


@pytest.mark.parametrize("name", list(ENGINES))
def test_memory_estimate_is_an_estimate_or_none(name, specs):
    engine = backends.get(name)
    plan = plan_for(engine, specs[ENGINES[name][1]], engine.context_override(2048))
    est = engine.memory_estimate(plan, 4096)
    if name == "llamacpp":
        assert isinstance(est, FitEstimate) and est.kv_cache_bytes > 0
        assert est.kv_cache_bytes > engine.memory_estimate(plan, 2048).kv_cache_bytes
    else:
        assert est is None


def test_registry_finds_by_name_and_refuses_unknown_names():
    assert [e.name for e in backends.all_engines()][:5] == list(backends.ENGINES)
    with pytest.raises(backends.UnknownEngine) as err:
        backends.get("fakeengine")
    assert err.value.name == "fakeengine" and "llamacpp" in str(err.value)
    with pytest.raises(TypeError):
        backends.register(types.SimpleNamespace(name="fakeengine"))
    with pytest.raises(ValueError):
        backends.unregister("vllm")


def test_plan_sets_the_context_in_the_chosen_engines_key(starter_spec):
    """A caller that does not know the engine yet (the chat window) asks for a context in tokens."""
    plan = launch.plan(starter_spec, fake_cuda_pc(), context=1024)
    assert plan.params["n_ctx"] == 1024 and plan.user_params["n_ctx"] == 1024
    plan = launch.plan(starter_spec, fake_cuda_pc(), overrides={"n_ctx": 512}, context=1024)
    assert plan.params["n_ctx"] == 512  # what the user set wins


@pytest.mark.parametrize("name", list(ENGINES))
def test_the_dialect_members_for_logs_read_without_a_launch(name):
    """``ember diagnose`` reads a log with no plan: each engine names its lines, and its fixes need no plan."""
    engine = backends.get(name)
    for member in ("log_signature", "loading_lines", "serving_lines"):
        pattern = getattr(engine, member)
        assert pattern is None or hasattr(pattern, "search"), member
    assert engine.log_signature is not None, f"{name}: a pasted log of it cannot be told apart"
    assert engine.gpu_install is None or isinstance(engine.gpu_install, str)
    assert isinstance(engine.in_ember_terms("plain words"), str)
    for kind in Kind:
        for f in engine.fixes_for(kind, {"memory": "gpu", "cause": "space", "n_prompt_tokens": 9000,
                                         "n_ctx_slot": 8192, "feature": "embeddings", "problem": "cpu_build"}, None):
            assert isinstance(f, Fix) and f.changes and engine.validate(f.changes) == f.changes, (kind, f)
