"""Every action a diagnosis can offer: read from the source, each known to Ember, each with a
command for the terminal that `ember` itself accepts; a fix's change remembered for the next
start; the install command for the engine's interpreter, run with its output."""
from __future__ import annotations

import shlex
import sys
import threading

import pytest

from engines import actions, model_prefs
from engines.actions import Action, Situation
from engines.cli import build_parser
from engines.diagnosis import diagnose
from engines.diagnosis.types import Diagnosis, Fix, Kind
from engines.running import install, launch, params
from engines.running.backends import ENGINES
from tests.helpers import emitted_fixes, fix_actions_in_source

#: what the issue lists; the source must offer at least these
LISTED = {"retry", "install", "download", "redownload", "edit_endpoint", "edit_parameters", "use_engine:llamacpp",
          "show_log", "choose_model", "new_conversation", "relaunch"}


def test_the_source_offers_every_listed_action_and_each_is_known():
    found = fix_actions_in_source()
    names = set(found)
    assert LISTED <= names, f"missing: {LISTED - names}"
    assert not [n for n in names if n.startswith("<")], found  # every action is written so it can be read
    for fix in emitted_fixes():
        s = actions.step(fix)  # UnknownAction for a name without a handler
        assert s.action in Action
    assert {actions.step(f).action for f in emitted_fixes()} == set(Action)  # and every action is offered


@pytest.mark.parametrize("raw,problem", [("reboot", "no such action"), ("use_engine", "needs an engine"),
                                         ("use_engine:ollama", "needs an engine"), ("retry:now", "no argument"),
                                         ("change", "does not name it")])
def test_an_unknown_action_is_refused_with_the_reason(raw, problem):
    with pytest.raises(actions.UnknownAction) as err:
        actions.step(Fix("x", {}, "", action=raw))
    assert problem in err.value.problem


SITUATION = Situation("starter", "llamacpp", {"n_ctx": 512}, log_path="/tmp/engine.log")


@pytest.mark.parametrize("fix", emitted_fixes(), ids=lambda f: f.action or ("change" if f.changes else "advice"))
def test_every_action_has_a_line_for_the_terminal_and_ember_takes_its_commands(fix):
    line = actions.cli_line(fix, SITUATION)
    assert line.text.strip()
    if line.command and line.text.startswith("ember "):
        words = shlex.split(line.text.split("   (")[0])[1:]
        args, extra = build_parser().parse_known_args(words)
        assert not extra, line.text
        assert args.command in ("chat", "serve", "pull", "models", "remote", "params", "settings", "cluster")


def test_the_lines_say_the_command_that_does_what_the_button_does():
    line = lambda fix, where=SITUATION: actions.cli_line(fix, where).text  # noqa: E731
    assert line(Fix("Raise", {"n_ctx": 2048}, "")) == "ember chat starter --set n_ctx=2048"
    assert line(Fix("Restart", {}, "", action="relaunch")) == "ember chat starter --set n_ctx=512"
    assert line(Fix("Raise", {"context": 4096}, "")) == "ember chat starter --set n_ctx=4096"  # a role, in its key
    assert line(Fix("x", {}, "", action="use_engine:vllm")) == "ember chat starter --engine vllm --set max_model_len=512"
    assert line(Fix("x", {}, "", action="download")) == "ember pull starter"
    assert line(Fix("x", {}, "", action="choose_model")) == "ember models --fits"
    assert line(Fix("x", {}, "", action="show_log")) == "tail -n 50 /tmp/engine.log"
    assert line(Fix("x", {}, "", action="redownload"), Situation("llama-3.1-8b-instruct-q4_k_m")) == \
        "ember pull llama-3.1-8b-instruct-q4_k_m --again"
    assert not actions.cli_line(Fix("x", {}, "", action="redownload"), SITUATION).command  # the starter: no source
    assert line(Fix("x", {}, "", action="edit_endpoint"), Situation(remote="lab", remote_url="http://h:1/v1")) == \
        "ember remote add lab http://h:1/v1 --key-stdin"
    assert line(Fix("x", {}, "pip install xllamacpp", action="install")) == \
        shlex.join([sys.executable, "-m", "pip", "install", "xllamacpp"])
    serve = Situation("starter", "llamacpp", {}, command="serve")
    assert line(Fix("Raise", {"n_ctx": 2048}, ""), serve) == "ember serve starter --set n_ctx=2048"


def test_a_setting_fix_names_the_setting_and_ember_settings_changes_it(fresh_home, capsys):
    from engines import cli, settings
    fix = Fix("Wait longer before giving up", {}, "If the model is only slow here, raise stall_timeout_seconds in "
              "Ember's settings.json (now 300 s).", action="settings")
    d = Diagnosis(Kind.ENGINE_STALLED, "The engine stopped responding", "", {"timeout": 300.0}, [fix])
    assert actions.setting_key(actions.step(fix)) == "stall_timeout_seconds"
    line = actions.cli_line(fix, SITUATION, d)
    assert line.text == "ember settings stall_timeout_seconds 600"
    assert cli.main(shlex.split(line.text)[1:]) == 0 and settings.get("stall_timeout_seconds") == 600
    assert cli.main(["settings", "stall_timeout_seconds", "soon"]) == 1
    assert "takes int values" in capsys.readouterr().err
    assert cli.main(["settings", "stall_timeout"]) == 1  # a key Ember does not have
    with pytest.raises(actions.UnknownAction):
        actions.step(Fix("x", {}, "", action="settings:no_such_setting"))


def test_cluster_fixes_name_the_cluster_and_the_model():
    d = Diagnosis(Kind.MODEL_NOT_RUNNING, "qwen is not running on lab", "", {"cluster": "lab", "uid": "qwen"}, [])
    launch_there = Fix("Launch it on lab", {}, "ember cluster launch lab MODEL", action="launch_on_cluster")
    assert actions.cli_line(launch_there, Situation(), d).text == "ember cluster launch lab qwen"
    edit = Fix("Edit the cluster", {}, "", action="edit_cluster")
    assert actions.cli_line(edit, Situation(), d).text == \
        "ember cluster add lab URL --user USER --password-env VARIABLE"
    assert actions.step(Fix("x", {}, "", action="edit_cluster:lab")).argument == "lab"


def test_a_refused_parameter_points_at_the_key_it_means():
    d = diagnose.diagnose_exception(params.ParamError("top_kk", "is not a llama.cpp parameter",
                                                      suggestions=("sampling.top_k",)))
    fix = next(f for f in d.fixes if f.label == "Use sampling.top_k")
    assert actions.parameter_key(actions.step(fix), d) == "sampling.top_k"
    text = actions.render_text(d, Situation("starter", "llamacpp"))
    assert "$ ember chat starter --set sampling.top_k=VALUE   (ember params --engine llamacpp lists them)" in text


def test_render_text_puts_each_fixs_command_under_it(starter_spec, hw):
    plan = launch.plan(starter_spec, hw, overrides={"n_ctx": 512})
    d = diagnose.diagnose_log(["slot update_slots: id  0 | task 0 | n_ctx_slot = 512, n_prompt_tokens = 900",
                               "srv  send_error: task id = 0, error: the request exceeds the available context "
                               "size, try increasing it"], plan, "run")
    text = actions.render_text(d, Situation.of_plan(plan))
    assert "  1. Raise the context to" in text
    assert "     $ ember chat starter --set n_ctx=" in text
    assert "     $ ember chat starter --set n_ctx=512" in text  # a new conversation: the same command again
    as_json = actions.to_dict(d, Situation.of_plan(plan))
    assert as_json["fixes"][0]["cli"].startswith("ember chat starter --set n_ctx=")
    assert as_json["fixes"][-1]["step"] == "new_conversation"


# -- relaunching, remembered -----------------------------------------------------------------------

def test_a_context_fix_is_remembered_and_the_next_start_uses_it(fresh_home, hw):
    plan = launch.default_plan("starter", hw)
    assert plan.params["n_ctx"] == 4096
    s = actions.step(Fix("Lower the context to 2,048 tokens", {"n_ctx": 2048}, ""))
    new = actions.relaunch_plan(s, plan, "starter")
    assert new.params["n_ctx"] == 2048
    actions.remember(s, new, plan)
    prefs = model_prefs.load("starter")
    assert prefs.engine == "llamacpp" and prefs.params["n_ctx"] == 2048
    assert launch.default_plan("starter", hw).params["n_ctx"] == 2048


def test_a_fix_replaces_an_advanced_row_of_the_same_key_and_the_rows_reach_the_next_start(fresh_home, hw):
    model_prefs.save("starter", model_prefs.ModelPrefs("llamacpp", {"n_ctx": 1024},
                                                       advanced=[("n_ctx", "768"), ("sampling.top_k", "7")]))
    assert launch.default_plan("starter", hw).params["n_ctx"] == 768  # the advanced row wins, as in the dialog
    plan = launch.default_plan("starter", hw)
    s = actions.step(Fix("Raise", {"context": 2048}, ""))
    actions.remember(s, actions.relaunch_plan(s, plan, "starter"), plan)
    prefs = model_prefs.load("starter")
    assert prefs.params["n_ctx"] == 2048 and prefs.advanced == [("sampling.top_k", "7")]
    new = launch.default_plan("starter", hw)
    assert new.params["n_ctx"] == 2048 and new.params["sampling.top_k"] == 7


def test_a_gpu_layers_fix_turns_auto_off(fresh_home, hw):
    plan = launch.default_plan("starter", hw)
    s = actions.step(Fix("Run on the CPU", {"n_gpu_layers": 0}, ""))
    actions.remember(s, actions.relaunch_plan(s, plan, "starter"), plan)
    prefs = model_prefs.load("starter")
    assert prefs.params["n_gpu_layers"] == 0 and prefs.auto_gpu_layers is False


def test_another_engine_takes_the_context_in_its_own_key(hw, starter_spec):
    plan = launch.plan(starter_spec, hw, overrides={"n_ctx": 2048, "n_parallel": 2, "n_gpu_layers": 0})
    assert plan.carried_to("vllm") == {"max_model_len": 2048, "max_num_seqs": 2}
    assert plan.carried_to("transformers") == {"max_model_len": 2048}
    assert plan.carried_to("mlx") == {}


def test_without_a_plan_the_change_goes_into_the_saved_choices(fresh_home, hw):
    model_prefs.save("starter", model_prefs.ModelPrefs("llamacpp", {"n_ctx": 300000}))
    s = actions.step(Fix("Use n_ctx = 32768", {"n_ctx": 32768}, ""))
    new = actions.relaunch_plan(s, None, "starter")
    assert new.params["n_ctx"] == 32768 and model_prefs.load("starter").params["n_ctx"] == 32768


def test_relaunch_words_speak_roles():
    s = actions.step(Fix("x", {"max_model_len": 8192}, ""))
    assert actions.describe(s, "transformers") == "with context 8,192 tokens"
    assert actions.describe(actions.step(Fix("x", {"n_parallel": 2, "cache_type_k": "q8_0"}, "")), "llamacpp") == \
        "with 2 parallel slots, cache_type_k q8_0"
    assert actions.describe(actions.step(Fix("x", {}, "", action="use_engine:transformers")), "llamacpp") == \
        "with Transformers"


# -- installing ------------------------------------------------------------------------------------

def test_the_install_command_is_the_engines_interpreters(monkeypatch, tmp_path):
    cmd = install.command_for("pip install 'ember[transformers]'", "transformers")
    assert cmd.argv == (sys.executable, "-m", "pip", "install", "ember[transformers]") and cmd.runnable
    vllm = install.command_for("pip install vllm   (in its own environment; see Settings > Engines)", "vllm")
    assert not vllm.runnable and vllm.display == "pip install vllm" and "own environment" in vllm.why_not
    env_python = tmp_path / "venv" / "bin" / "python"
    monkeypatch.setenv("EMBER_VLLM_PYTHON", str(env_python))
    vllm = install.command_for("pip install vllm   (in its own environment; see Settings > Engines)", "vllm")
    assert vllm.argv == (str(env_python), "-m", "pip", "install", "vllm")
    assert not install.command_for("brew install llama.cpp", "llamacpp").runnable


def test_an_install_runs_with_its_output_and_can_be_cancelled():
    script = "import time\nprint('Collecting xllamacpp', flush=True)\nprint('Successfully installed xllamacpp')"
    lines: list[str] = []
    out = install.run(install.InstallCommand("pip install xllamacpp", (sys.executable, "-c", script)), lines.append)
    assert out.ok and lines == ["Collecting xllamacpp", "Successfully installed xllamacpp"]
    assert out.sentence.startswith("Installed in")
    cancel = threading.Event()
    slow = (sys.executable, "-c", "import time\nprint('Downloading', flush=True)\ntime.sleep(60)")
    out = install.run(install.InstallCommand("x", slow), lambda line: cancel.set(), cancel)
    assert out.cancelled and not out.ok and out.sentence == "The installation was cancelled."
    failed = install.run(install.InstallCommand("x", (sys.executable, "-c", "raise SystemExit(3)")))
    assert failed.code == 3 and failed.sentence == "The installation failed (exit status 3)."


def test_the_dialogs_change_line_speaks_roles_then_the_engines_keys():
    assert actions.change_words({"max_model_len": 1536}, "transformers") == \
        "context 1,536 tokens \u00b7 max_model_len = 1536"
    assert actions.change_words({"context": 4096}, "llamacpp") == "context 4,096 tokens \u00b7 n_ctx = 4096"
    assert actions.change_words({"n_gpu_layers": 14}, "llamacpp") == "14 GPU layers \u00b7 n_gpu_layers = 14"
    assert actions.change_words({"cache_type_k": "q8_0"}, "llamacpp") == "cache_type_k = q8_0"
    assert actions.change_words({"context": 4096}, None) == "context 4,096 tokens"
