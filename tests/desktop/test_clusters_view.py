"""Issue 16 in the desktop: a cluster is another place to run in the models window, and Settings adds one.

The panel's facts come from a FAKE overview (what ``ops.overview`` gives, built here) or
the core's real answers for an address nothing listens on; the real cluster's paths are
tested in tests/integration/test_cluster.py."""
from __future__ import annotations

from PySide6.QtWidgets import QLabel, QPushButton

from engines.cluster import launching, ops, store
from engines.cluster.store import Cluster, Secret
from engines.cluster.xinference import ClusterError, ClusterInfo, Failure, RunningModel, Worker


def cluster(name="lab", admin=True) -> Cluster:
    return Cluster(name, "http://127.0.0.1:9", "admin" if admin else None,
                   Secret("env", "LAB_PW") if admin else Secret(), Secret() if admin else Secret("env", "LAB_KEY"))


def fake_overview(admin=True) -> ops.Overview:
    info = ClusterInfo("http://127.0.0.1:9", True, "4.1.0" if admin else None,
                       [Worker("127.0.0.1:30001", 2, 24 * 2**30, 20 * 2**30)] if admin else None)
    return ops.Overview(cluster(admin=admin), info,
                        [RunningModel("starter", "ember-starter", "llama.cpp", 2048)],
                        [ops.Launchable("starter", "ember", "cpu", "runs on the worker's CPU only (context 4,096)")],
                        ["gemma-3-it", "qwen2.5-instruct"], files_reachable=True)


def texts(widget) -> str:
    return "\n".join(l.text() for l in widget.findChildren(QLabel))


def button(widget, accessible: str) -> QPushButton:
    return next(b for b in widget.findChildren(QPushButton) if b.accessibleName() == accessible)


def test_a_cluster_shows_what_runs_there_and_what_it_can_launch(qtbot, screenshot):
    from desktop.clusters_view import ClusterPanel
    panel = ClusterPanel("lab", overview=fake_overview())
    qtbot.addWidget(panel)
    panel.resize(760, 260)
    panel.show()
    shown = texts(panel)
    assert "Xinference 4.1.0 \u00b7 http://127.0.0.1:9 \u00b7 admin admin" in shown
    assert "127.0.0.1:30001: no GPU, 2 CPU cores, 24 GiB RAM" in shown
    assert "Running there" in shown and "llama.cpp \u00b7 context 2,048" in shown
    assert "Runs on the CPU only, slower" in shown  # the fit badge, judged on the worker
    assert button(panel, "Stop starter on lab").isEnabled()
    assert button(panel, "Launch starter on lab").isEnabled()
    screenshot(panel, "cluster-panel")


def test_an_api_key_cluster_cannot_launch_or_stop_and_says_why(qtbot):
    from desktop.clusters_view import ClusterPanel
    panel = ClusterPanel("lab", overview=fake_overview(admin=False))
    qtbot.addWidget(panel)
    assert "API key: list and chat only" in texts(panel) and "devices not told to an API key" in texts(panel)
    assert not button(panel, "Stop starter on lab").isEnabled()
    launch = button(panel, "Launch starter on lab")
    assert not launch.isEnabled() and "needs an admin login" in launch.toolTip()


def test_a_refused_launch_opens_the_diagnosis_and_its_fix_relaunches_there(qtbot, monkeypatch, starter_spec):
    from desktop.clusters_view import ClusterPanel
    plan = launching.ClusterPlan("lab", "starter", "ember-starter", "llamacpp", {"n_ctx": 32768, "n_parallel": 1},
                                 {"n_ctx": 32768, "n_parallel": 1}, starter_spec)
    launched = []

    def fake_launch(p, on_progress=None, cancel=None, timeout=600.0, replace=False):
        launched.append(p)
        if len(launched) == 1:
            raise ClusterError(Failure.LAUNCH_FAILED, "the cluster could not load starter",
                               detail="ggml_aligned_malloc: insufficient memory (attempted to allocate 29297.25 MB)",
                               uid="starter")
        return RunningModel("starter", "ember-starter", "llama.cpp", 2048)

    monkeypatch.setattr(ops, "plan", lambda name, model, **options: plan)
    monkeypatch.setattr(ops, "launch", fake_launch)
    monkeypatch.setattr(ops, "overview", lambda name, with_builtin=True: fake_overview())
    panel = ClusterPanel("lab", overview=fake_overview())
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.diagnosis_shown, timeout=10_000) as shown:
        button(panel, "Launch starter on lab").click()
    d = shown.args[0]
    assert d.kind == "oom_load" and d.title.startswith("Not enough memory")
    fix = d.fixes[0]
    assert fix.changes.get("n_ctx", 32768) < 32768 or fix.changes.get("cache_type_k")
    with qtbot.waitSignal(panel.changed, timeout=10_000):
        panel.dialog.choose(fix)
    qtbot.waitUntil(lambda: len(launched) == 2, timeout=10_000)
    assert launched[1].params == {"n_ctx": 32768, "n_parallel": 1, **fix.changes}  # the fix's change, on the cluster
    assert launched[1].uid == "starter" and launched[1].cluster == "lab"


def test_the_launch_options_reach_the_clusters_plan(qtbot, monkeypatch, starter_spec):
    """Context, replicas, GPUs and engine options on the panel are what the plan is asked for; the
    context lands in the chosen engine's own key (llama.cpp's n_ctx for the starter)."""
    from desktop.clusters_view import ClusterPanel
    asked = {}

    def fake_plan(name, model, **options):
        asked.update(options)
        return launching.plan(name, model, None, None, overrides=options["overrides"], replicas=options["replicas"],
                              n_gpu=options["n_gpu"], context=options["context"])

    monkeypatch.setattr(ops, "plan", fake_plan)
    monkeypatch.setattr(ops, "launch", lambda p, *a, **k: asked.setdefault("plan", p))
    monkeypatch.setattr(ops, "overview", lambda name, with_builtin=True: fake_overview())
    panel = ClusterPanel("lab", overview=fake_overview())
    qtbot.addWidget(panel)
    panel.context.setValue(1536)
    panel.replicas.setValue(2)
    panel.gpus.setCurrentText("GPUs: none")
    panel.engine_options.setText("n_parallel=2, sampling.top_k=20")
    button(panel, "Launch starter on lab").click()
    qtbot.waitUntil(lambda: "plan" in asked, timeout=10_000)
    assert asked["context"] == 1536 and asked["replicas"] == 2 and asked["n_gpu"] == 0
    p = asked["plan"]
    assert p.params["n_ctx"] == 1536 and p.params["n_parallel"] == 2 and p.params["sampling.top_k"] == 20
    assert p.replicas == 2 and p.n_gpu == 0


def test_a_cluster_that_does_not_answer_says_so(qtbot, fresh_home, monkeypatch):
    from desktop.clusters_view import ClustersView
    monkeypatch.setenv("LAB_PW", "a-password")
    store.save(cluster())
    view = ClustersView()
    qtbot.addWidget(view)
    panel = view.panels["lab"]
    qtbot.waitUntil(lambda: "Not answering" in panel.error.text(), timeout=15_000)
    assert "cannot reach the cluster at http://127.0.0.1:9" in panel.error.text()


def test_settings_add_a_cluster_only_once_it_answered(qtbot, fresh_home):
    from desktop.settings_dialog import SettingsDialog
    from desktop.widgets import apply_style
    dialog = SettingsDialog()
    qtbot.addWidget(dialog)
    apply_style(dialog)
    add = dialog.add_cluster()
    add.name.setText("lab")
    add.url.setText("http://127.0.0.1:9")
    add.submit()
    qtbot.waitUntil(lambda: add.error.isVisible() and bool(add.error.text()), timeout=15_000)
    assert add.error.text().startswith("Cannot reach the cluster lab.")
    assert store.list_clusters() == []  # nothing kept for a cluster that did not answer
    add.reject()
    assert "No cluster" not in texts(dialog)


def test_the_models_window_has_clusters_as_another_place_to_run(qtbot, fresh_home):
    from desktop.clusters_view import ClustersView
    view = ClustersView()
    qtbot.addWidget(view)
    assert view.empty.isVisible() or not view.isVisible()
    assert "add their Xinference supervisor in Settings \u2192 Clusters" in view.empty.text()
