"""The chat window: streaming replies rendered as markdown, conversations kept in SQLite.

Nothing here blocks the GUI thread: the reply streams on a :class:`StreamThread`
whose deltas are batched onto the view every ``FLUSH_MS``; engine starts and
relaunches run through :func:`desktop.bridge.run_async` with a busy row and a
Cancel. The user's message is saved before it is sent and the reply while it
streams, so a crash loses at most the last second.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from PySide6.QtCore import QThread, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (QDesktopServices, QGuiApplication, QKeySequence, QPalette, QShortcut, QTextCursor,
                           QTextFormat)
from PySide6.QtWidgets import (QComboBox, QFrame, QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem,
                               QMainWindow, QMessageBox, QPlainTextEdit, QProgressBar, QPushButton, QSplitter,
                               QTextBrowser, QVBoxLayout, QWidget)

from engines.chat import conversations
from engines import paths
from engines import settings
from engines.chat.client import ChatStream, Delta, Finished
from engines.chat.endpoint import Endpoint
from engines.running.manager import EngineManager

from . import icons
from .bridge import ManagerBridge, run_async

log = logging.getLogger(__name__)

FLUSH_MS = 40          # how often streamed text reaches the view
SAVE_EVERY_S = 1.0     # how often a streaming reply is saved


@dataclass
class ChatMessage:
    role: str
    content: str
    id: int | None = None
    model: str | None = None
    streaming: bool = False


class StreamThread(QThread):
    """Iterates one :class:`ChatStream` off the GUI thread; every event becomes a typed signal."""

    delta = Signal(str, bool)      # text, is reasoning
    ended = Signal(object)         # client.Finished
    failed = Signal(object)        # exception (EngineHTTPError, StreamBroken, ...)

    def __init__(self, stream: ChatStream, parent=None):
        super().__init__(parent)
        self.stream = stream

    def run(self) -> None:
        try:
            for item in self.stream:
                if isinstance(item, Delta):
                    self.delta.emit(item.text, item.reasoning)
                elif isinstance(item, Finished):
                    self.ended.emit(item)
        except Exception as exc:  # reaches the window, which diagnoses it
            self.failed.emit(exc)

    def cancel(self) -> None:
        self.stream.cancel()


class ChatInput(QPlainTextEdit):
    """Enter sends, Shift+Enter makes a new line."""

    submitted = Signal()

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt API
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and \
                not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)


class ChatWindow(QMainWindow):
    # what the user asked for that the app handles
    models_requested = Signal()
    settings_requested = Signal()
    logs_requested = Signal()
    about_requested = Signal()
    quit_requested = Signal()
    hidden_to_tray = Signal()
    # progress, for the app and for tests
    reply_finished = Signal(object)    # client.Finished
    reply_failed = Signal(object)      # exception
    failure_shown = Signal(object)     # the dialog or message box shown for a failure
    busy_changed = Signal(bool)

    def __init__(self, manager: EngineManager, bridge: ManagerBridge | None = None,
                 store: conversations.Store | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.manager = manager
        self.bridge = bridge or ManagerBridge(manager, self)
        self.store = store or conversations.Store()
        self.keep_in_tray = False
        self.max_tokens: int | None = 1024
        self.conversation: conversations.Conversation | None = None
        self.history: list[ChatMessage] = []
        self.plans: dict[str, object] = {}       # model name -> last LaunchPlan seen (also failed ones)
        self.failed_plan = None
        self._stream: StreamThread | None = None
        self._stream_endpoint: Endpoint | None = None
        self._pending: list[str] = []
        self._last_save = 0.0
        self._busy_name: str | None = None
        self._busy_cancelled = False
        self._after_busy = None
        self._last_finish_diagnosis = None
        self._last_model_saved = settings.get("last_model")
        self._remote_endpoints: list[Endpoint] = []
        self._remotes_call = None
        self._build()
        self.bridge.changed.connect(self.refresh_models)
        self.bridge.loading.connect(lambda name, plan: self.plans.__setitem__(name, plan))
        self.bridge.ready.connect(self._engine_ready)
        self.refresh_conversations()
        self.refresh_models()
        self.new_chat()
        QTimer.singleShot(300, self._preload)

    # -- layout ---------------------------------------------------------------------
    def _build(self) -> None:
        self.setWindowTitle("Ember")
        self.setWindowIcon(icons.app_icon())
        self.resize(980, 680)
        menu = self.menuBar().addMenu("&Ember")
        menu.addAction("New chat", QKeySequence("Ctrl+N"), self.new_chat)
        menu.addAction("Models…", self.models_requested.emit)
        menu.addAction("Settings…", self.settings_requested.emit)
        menu.addAction("Show logs", self.logs_requested.emit)
        menu.addAction("This model's engine log", self.show_current_log)
        menu.addAction("About Ember", self.about_requested.emit)
        menu.addSeparator()
        menu.addAction("Quit", QKeySequence("Ctrl+Q"), self.quit_requested.emit)

        splitter = QSplitter()
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(6, 6, 0, 6)
        self.new_button = QPushButton("New chat")
        self.new_button.clicked.connect(self.new_chat)
        lv.addWidget(self.new_button)
        self.conv_list = QListWidget()
        self.conv_list.setAccessibleName("Conversations")
        self.conv_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.conv_list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.conv_list.setEditTriggers(QListWidget.EditTrigger.EditKeyPressed | QListWidget.EditTrigger.DoubleClicked)
        self.conv_list.currentItemChanged.connect(self._conversation_selected)
        self.conv_list.itemChanged.connect(self._conversation_edited)
        lv.addWidget(self.conv_list)
        row = QHBoxLayout()
        self.rename_button = QPushButton("Rename")
        self.rename_button.clicked.connect(self._rename_clicked)
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self._delete_clicked)
        row.addWidget(self.rename_button)
        row.addWidget(self.delete_button)
        lv.addLayout(row)
        splitter.addWidget(left)

        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(6, 6, 6, 6)
        top = QHBoxLayout()
        top.addWidget(QLabel("Model:"))
        self.model_combo = QComboBox()
        self.model_combo.setAccessibleName("Model")
        self.model_combo.setMinimumContentsLength(24)
        self.model_combo.setPlaceholderText("No model running")
        top.addWidget(self.model_combo, 1)
        self.system_edit = QLineEdit()
        self.system_edit.setPlaceholderText("System prompt (optional)")
        self.system_edit.setAccessibleName("System prompt")
        self.system_edit.editingFinished.connect(self._system_prompt_edited)
        top.addWidget(self.system_edit, 2)
        rv.addLayout(top)

        # "no model running" offer
        self.offer = QFrame()
        self.offer.setFrameShape(QFrame.Shape.StyledPanel)
        ov = QHBoxLayout(self.offer)
        self.offer_label = QLabel("No model is running.")
        ov.addWidget(self.offer_label, 1)
        self.offer_button = QPushButton("Start the starter model")
        self.offer_button.clicked.connect(lambda: self.launch_model(self.offered_model()))
        ov.addWidget(self.offer_button)
        browse = QPushButton("Models…")
        browse.clicked.connect(self.models_requested.emit)
        ov.addWidget(browse)
        rv.addWidget(self.offer)

        # busy row: engine starting
        self.busy = QFrame()
        bv = QHBoxLayout(self.busy)
        self.busy_label = QLabel()
        bv.addWidget(self.busy_label)
        bar = QProgressBar(minimum=0, maximum=0)
        bar.setMaximumWidth(160)
        bar.setAccessibleName("Loading")
        bv.addWidget(bar)
        self.busy_cancel = QPushButton("Cancel")
        self.busy_cancel.clicked.connect(self.cancel_busy)
        bv.addWidget(self.busy_cancel)
        self.busy.hide()
        rv.addWidget(self.busy)

        # banner: a finished reply that the diagnosis flags (cut short...)
        self.banner = QFrame()
        self.banner.setFrameShape(QFrame.Shape.StyledPanel)
        nv = QHBoxLayout(self.banner)
        self.banner_label = QLabel()
        self.banner_label.setWordWrap(True)
        nv.addWidget(self.banner_label, 1)
        self.banner_button = QPushButton("How to fix…")
        self.banner_button.clicked.connect(self._open_finish_diagnosis)
        nv.addWidget(self.banner_button)
        close = QPushButton("Dismiss")
        close.clicked.connect(self.banner.hide)
        nv.addWidget(close)
        self.banner.hide()
        rv.addWidget(self.banner)

        self.view = QTextBrowser()
        self.view.setOpenExternalLinks(True)
        self.view.setAccessibleName("Conversation")
        rv.addWidget(self.view, 1)

        self.input = ChatInput()
        self.input.setPlaceholderText("Message (Enter sends, Shift+Enter for a new line)")
        self.input.setAccessibleName("Message")
        self.input.setMaximumHeight(110)
        self.input.submitted.connect(self.send)
        rv.addWidget(self.input)

        buttons = QHBoxLayout()
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop generating (Esc)")
        self.stop_button.clicked.connect(self.stop)
        self.regen_button = QPushButton("Regenerate")
        self.regen_button.clicked.connect(self.regenerate)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the last reply")
        self.copy_button.clicked.connect(self.copy_last_reply)
        for b in (self.send_button, self.stop_button, self.regen_button, self.copy_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        rv.addLayout(buttons)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([220, 760])
        self.setCentralWidget(splitter)

        self.status = QLabel("Ready")
        self.statusBar().addWidget(self.status, 1)

        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, activated=self.stop)
        QShortcut(QKeySequence("Ctrl+L"), self, activated=self.input.setFocus)

        self.flush_timer = QTimer(self, interval=FLUSH_MS)
        self.flush_timer.timeout.connect(self._flush)
        self._update_buttons()

    # -- state helpers --------------------------------------------------------------
    @property
    def streaming(self) -> bool:
        return self._stream is not None

    @property
    def loading(self) -> bool:
        return self._busy_name is not None

    def _update_buttons(self) -> None:
        busy = self.streaming or self.loading
        self.send_button.setEnabled(not busy)
        self.stop_button.setEnabled(self.streaming or self.loading)
        has_reply = any(m.role == "assistant" for m in self.history)
        has_user = any(m.role == "user" for m in self.history)
        self.regen_button.setEnabled(not busy and has_user)
        self.copy_button.setEnabled(has_reply)
        self.conv_list.setEnabled(not busy)
        self.new_button.setEnabled(not busy)
        self.rename_button.setEnabled(not busy and self.conversation is not None)
        self.delete_button.setEnabled(not busy and self.conversation is not None)
        no_model = self.model_combo.count() == 0 or self.current_endpoint() is None
        self.offer.setVisible(no_model and not self.loading)

    def offered_model(self) -> str:
        """The model the 'no model' row offers: the last one used, else the starter."""
        return str(settings.get("last_model") or "starter")

    # -- models ---------------------------------------------------------------------
    def local_endpoints(self) -> list[Endpoint]:
        """Running and idle-unloaded local models: read from the manager, no I/O."""
        eps = [r.endpoint for r in self.manager.running()]
        eps += [Endpoint(n, "", None, "unloaded", None, p.engine) for n, p in self.manager.unloaded().items()]
        return eps

    def refresh_remotes(self) -> None:
        """Ask for the full list (remote servers answer over the network) off the GUI thread."""
        if self._remotes_call is not None:
            return

        def got(endpoints):
            self._remotes_call = None
            self._remote_endpoints = [e for e in endpoints if e.kind == "remote"]
            self.refresh_models()

        def failed(exc):
            self._remotes_call = None
            log.info("listing endpoints failed: %s", exc)

        self._remotes_call = run_async(self.manager.endpoints, got, failed, name="list-endpoints")

    def refresh_models(self) -> None:
        current = self.current_model_name()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for ep in self.local_endpoints() + self._remote_endpoints:
            label = ep.name
            if ep.kind == "unloaded":
                label += " (unloaded while idle)"
            elif ep.kind == "remote":
                label += " (remote)"
            self.model_combo.addItem(label, ep)
        if not (current and self.select_model(current)) and self.model_combo.count():
            self.model_combo.setCurrentIndex(0)  # with a placeholder set, Qt selects nothing by itself
        self.model_combo.blockSignals(False)
        name = self.offered_model()
        label = "the starter model" if name == "starter" else name
        self.offer_button.setText(f"Start {label}")
        self.offer_label.setText(f"No model is running. Start {label} in one click, or choose another in Models.")
        self._update_buttons()

    def current_endpoint(self) -> Endpoint | None:
        ep = self.model_combo.currentData()
        return ep if isinstance(ep, Endpoint) else None

    def current_model_name(self) -> str | None:
        ep = self.current_endpoint()
        return ep.name if ep else None

    def select_model(self, name: str) -> bool:
        for i in range(self.model_combo.count()):
            ep = self.model_combo.itemData(i)
            if isinstance(ep, Endpoint) and ep.name == name:
                self.model_combo.setCurrentIndex(i)
                return True
        return False

    def _engine_ready(self, name: str, run) -> None:
        self.plans[name] = run.plan
        self.refresh_models()
        if self.current_endpoint() is None or not self.streaming:
            self.select_model(name)

    def launch_model(self, name: str, then=None) -> None:
        """Start a model by name off the GUI thread (busy row with Cancel); ``then()`` once ready."""
        from engines.running import launch
        from engines.models import lookup  # imported here: keeps the window's import light
        n_ctx = int(settings.get("default_n_ctx") or 4096)

        def work():
            spec = lookup.resolve(name)
            ctx = min(n_ctx, spec.context_length) if spec.context_length else n_ctx
            plan = launch.plan(spec, overrides={"n_ctx": ctx})
            self.plans[spec.name] = plan
            return self.manager.launch(plan)

        self._run_busy(f"Starting {name}…", name, work, then)

    def _run_busy(self, text: str, name: str, work, then=None) -> None:
        self._busy_name = name
        self._busy_cancelled = False
        self.busy_label.setText(text)
        self.busy.show()
        self.status.setText(text)
        self._update_buttons()
        self.busy_changed.emit(True)

        def done(run):
            self._end_busy()
            self.select_model(run.plan.model.name)
            self.status.setText(f"{run.plan.model.name} is ready")
            if then is not None:
                then()

        def failed(exc):
            cancelled = self._busy_cancelled
            self._end_busy()
            if cancelled:
                self.status.setText("Cancelled")
                return
            self.reply_failed.emit(exc)
            self.handle_failure(exc, name)

        run_async(work, done, failed, name=f"launch-{name}")

    def _end_busy(self) -> None:
        self._busy_name = None
        self.busy.hide()
        self._update_buttons()
        self.busy_changed.emit(False)

    def cancel_busy(self) -> None:
        if self._busy_name:
            self._busy_cancelled = True
            self.status.setText(f"Cancelling the start of {self._busy_name}…")
            for name in self.manager.loading():  # the name may be the resolved one
                self.manager.cancel_loading(name)

    # -- conversations --------------------------------------------------------------
    def refresh_conversations(self) -> None:
        self.conv_list.blockSignals(True)
        self.conv_list.clear()
        for conv in self.store.list():
            item = QListWidgetItem(conv.title)
            item.setData(Qt.ItemDataRole.UserRole, conv.id)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
            self.conv_list.addItem(item)
            if self.conversation and conv.id == self.conversation.id:
                self.conv_list.setCurrentItem(item)
        self.conv_list.blockSignals(False)

    def new_chat(self) -> None:
        if self.streaming or self.loading:
            return
        self.conversation = None
        self.history = []
        self.conv_list.blockSignals(True)
        self.conv_list.clearSelection()
        self.conv_list.setCurrentItem(None)
        self.conv_list.blockSignals(False)
        self.banner.hide()
        self.render()
        self.input.setFocus()
        self._update_buttons()

    def open_conversation(self, conversation_id: int) -> None:
        conv = self.store.get(conversation_id)
        if conv is None:
            return
        self.conversation = conv
        self.history = [ChatMessage(m.role, m.content, m.id, m.model) for m in self.store.messages(conv.id)
                        if m.role != "system"]
        self.system_edit.setText(conv.system_prompt)
        if conv.model:
            self.select_model(conv.model)
        self.banner.hide()
        self.render()
        self._update_buttons()

    def _conversation_selected(self, item, _previous=None) -> None:
        if item is not None:
            self.open_conversation(int(item.data(Qt.ItemDataRole.UserRole)))

    def _conversation_edited(self, item) -> None:
        title = item.text().strip()
        cid = int(item.data(Qt.ItemDataRole.UserRole))
        if title:
            self.rename_conversation(cid, title)
        else:
            self.refresh_conversations()

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        self.store.rename(conversation_id, title)
        if self.conversation and self.conversation.id == conversation_id:
            self.conversation = self.store.get(conversation_id)
        self.refresh_conversations()

    def delete_conversation(self, conversation_id: int) -> None:
        self.store.delete(conversation_id)
        if self.conversation and self.conversation.id == conversation_id:
            self.new_chat()
        self.refresh_conversations()

    def _rename_clicked(self) -> None:
        item = self.conv_list.currentItem()
        if item is not None:
            self.conv_list.editItem(item)

    def _delete_clicked(self) -> None:
        if self.conversation is None:
            return
        answer = QMessageBox.question(self, "Delete conversation",
                                      f"Delete “{self.conversation.title}”? This cannot be undone.")
        if answer == QMessageBox.StandardButton.Yes:
            self.delete_conversation(self.conversation.id)

    def _system_prompt_edited(self) -> None:
        if self.conversation is not None:
            self.store.set_system_prompt(self.conversation.id, self.system_edit.text())

    def _ensure_conversation(self, first_text: str) -> conversations.Conversation:
        if self.conversation is None:
            self.conversation = self.store.create(conversations.title_from(first_text), self.current_model_name(),
                                                  self.system_edit.text())
            self.refresh_conversations()
        return self.conversation

    # -- rendering ------------------------------------------------------------------
    def markdown(self) -> str:
        parts = []
        for m in self.history:
            who = "You" if m.role == "user" else (m.model or "Assistant")
            body = m.content + (" ▍" if m.streaming else "")
            if m.role == "assistant" and not m.content and m.streaming:
                body = "_…_"
            parts.append(f"**{who}**\n\n{body}\n")
        return "\n---\n\n".join(parts) if parts else ""

    def render(self) -> None:
        bar = self.view.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        if self.history:
            text = self.markdown()
            self.view.setMarkdown(text)
            if "```" in text or "~~~" in text:
                self._shade_code_blocks()
        else:
            self.view.setHtml("<p style='color: gray'>Start a conversation: type a message below.</p>")
        if at_end:
            bar.setValue(bar.maximum())

    def _shade_code_blocks(self) -> None:
        """Give fenced code blocks a background (Qt's markdown import marks them, but draws them plain)."""
        doc = self.view.document()
        shade = self.palette().color(QPalette.ColorRole.AlternateBase)
        if shade == self.palette().color(QPalette.ColorRole.Base):
            shade = shade.darker(106)
        cursor = QTextCursor(doc)
        block = doc.begin()
        while block.isValid():
            fmt = block.blockFormat()
            if fmt.hasProperty(QTextFormat.Property.BlockCodeFence) or fmt.nonBreakableLines():
                fmt.setBackground(shade)
                cursor.setPosition(block.position())
                cursor.setBlockFormat(fmt)
            block = block.next()

    # -- sending --------------------------------------------------------------------
    def send(self, text: str | None = None) -> bool:
        """Send the input (or ``text``); False if there is nothing to send or a reply is running."""
        text = (text if isinstance(text, str) else self.input.toPlainText()).strip()
        if not text or self.streaming or self.loading:
            return False
        conv = self._ensure_conversation(text)
        mid = self.store.add_message(conv.id, "user", text)  # saved before anything is sent
        self.history.append(ChatMessage("user", text, mid))
        self.input.clear()
        self.render()
        self._generate()
        return True

    def regenerate(self) -> None:
        """Drop the replies after the last user message and ask again."""
        if self.streaming or self.loading:
            return
        while self.history and self.history[-1].role == "assistant":
            m = self.history.pop()
            if m.id is not None:
                self.store.delete_message(m.id)
        if self.history:
            self.render()
            self._generate()

    def resend_last(self) -> None:
        self.regenerate()

    def _generate(self) -> None:
        ep = self.current_endpoint()
        if ep is None:
            self.launch_model(self.offered_model(), then=self._generate)
            return
        if ep.kind == "unloaded" or (ep.kind == "local" and not self._alive(ep.name)):
            name = ep.name
            self._run_busy(f"Starting {name} again…", name, lambda: self.manager.ensure_running(name),
                           then=self._generate)
            return
        self._start_stream(ep)

    def _alive(self, name: str) -> bool:
        run = self.manager.get(name)
        return run is not None and run.proc.running

    def api_messages(self) -> list[dict]:
        msgs = []
        system = self.system_edit.text().strip()
        if system:
            msgs.append({"role": "system", "content": system})
        msgs += [{"role": m.role, "content": m.content} for m in self.history if m.content or m.role == "user"]
        return msgs

    def _start_stream(self, ep: Endpoint) -> None:
        conv = self.conversation
        messages = self.api_messages()
        self.store.set_model(conv.id, ep.name)
        aid = self.store.add_message(conv.id, "assistant", "", complete=False, model=ep.name)
        self.history.append(ChatMessage("assistant", "", aid, ep.name, streaming=True))
        if ep.kind == "local":
            self.manager.touch(ep.name)
        stream = ChatStream(ep.base_url, messages, ep.api_key, ep.model_id, max_tokens=self.max_tokens)
        self._stream = StreamThread(stream, self)
        self._stream_endpoint = ep
        self._stream.delta.connect(self._on_delta)
        self._stream.ended.connect(self._on_finished)
        self._stream.failed.connect(self._on_failed)
        self._pending = []
        self._last_save = time.monotonic()
        self.banner.hide()
        self.status.setText(f"{ep.name} is answering…")
        self._stream.start()
        self.flush_timer.start()
        self.render()
        self._update_buttons()

    def _on_delta(self, text: str, reasoning: bool) -> None:
        if not reasoning:
            self._pending.append(text)

    def _flush(self) -> None:
        if not self._pending or not self.history:
            return
        msg = self.history[-1]
        msg.content += "".join(self._pending)
        self._pending = []
        self.render()
        now = time.monotonic()
        if msg.id is not None and now - self._last_save >= SAVE_EVERY_S:
            self.store.update_message(msg.id, msg.content)
            self._last_save = now

    def _end_stream(self) -> ChatMessage | None:
        self.flush_timer.stop()
        self._flush()
        thread, self._stream = self._stream, None
        if thread is not None:
            thread.wait(5000)
            thread.deleteLater()
        msg = self.history[-1] if self.history and self.history[-1].role == "assistant" else None
        if msg is not None:
            msg.streaming = False
        return msg

    def _on_finished(self, fin: Finished) -> None:
        ep = self._stream_endpoint
        msg = self._end_stream()
        if msg is not None and msg.id is not None:
            self.store.update_message(msg.id, msg.content, complete=not fin.cancelled)
        if ep is not None and ep.kind == "local":
            self.manager.touch(ep.name)
            self._remember_model(ep.name)
        self.render()
        self.status.setText(self.status_text(fin, ep))
        self._update_buttons()
        self._diagnose_finish(fin, ep)
        self.reply_finished.emit(fin)

    def _remember_model(self, name: str) -> None:
        """The 'no model' row offers the last model used; saved off the GUI thread (it fsyncs)."""
        if self._last_model_saved != name:
            self._last_model_saved = name
            run_async(lambda: settings.set("last_model", name), name="save-last-model")

    def _preload(self) -> None:
        """Import the failure modules before they are needed, so a first failure shows at once."""
        for module in ("engines.diagnosis.diagnose", "desktop.diagnosis_dialog"):
            try:
                __import__(module)
            except ImportError:
                pass

    def status_text(self, fin: Finished, ep: Endpoint | None) -> str:
        parts = ["Stopped" if fin.cancelled else "Done"]
        if fin.tokens_per_second:
            parts.append(f"{fin.tokens_per_second:.1f} tokens/s")
        used = (fin.usage.prompt_tokens or 0) + (fin.usage.completion_tokens or 0)
        n_ctx = None
        run = self.manager.get(ep.name) if ep else None
        if run is not None:
            n_ctx = run.plan.params.get("n_ctx")
        if used:
            parts.append(f"context {used:,} of {n_ctx:,} tokens" if n_ctx else f"context {used:,} tokens")
        return " · ".join(parts)

    def _on_failed(self, exc: BaseException) -> None:
        ep = self._stream_endpoint
        msg = self._end_stream()
        if msg is not None and msg.id is not None:
            if msg.content:
                self.store.update_message(msg.id, msg.content, complete=False)
            else:
                self.store.delete_message(msg.id)
                self.history.pop()
        self.render()
        self.status.setText(f"Failed: {getattr(exc, 'message', None) or exc}")
        self._update_buttons()
        self.reply_failed.emit(exc)
        self.handle_failure(exc, ep.name if ep else None)

    def stop(self) -> None:
        """Esc / Stop: cancel the reply (what came so far is kept) or the engine start."""
        if self._stream is not None:
            self._stream.cancel()
            self.status.setText("Stopping…")
        elif self.loading:
            self.cancel_busy()

    def copy_last_reply(self) -> None:
        for m in reversed(self.history):
            if m.role == "assistant":
                QGuiApplication.clipboard().setText(m.content)
                self.status.setText("Reply copied")
                return

    # -- failures and fixes ---------------------------------------------------------
    def handle_failure(self, exc: BaseException, name: str | None = None):
        """Show what went wrong: the guided diagnosis dialog if available, else a message with the log."""
        run = self.manager.get(name) if name else None
        plan = run.plan if run else self.plans.get(name) if name else None
        proc = run.proc if run else None
        self.failed_plan = plan
        diagnosis = None
        try:
            from engines.diagnosis import diagnose as diag_mod
            diagnosis = diag_mod.diagnose_exception(exc, proc=proc, plan=plan)
        except ImportError:
            pass
        except Exception:
            log.exception("diagnosis failed for %r", exc)
        if diagnosis is not None:
            dialog = self._diagnosis_dialog(diagnosis)
            if dialog is not None:
                return dialog
        text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        log_path = getattr(exc, "log_path", None) or (proc.log_path if proc else None)
        box = QMessageBox(QMessageBox.Icon.Warning, "Ember", text, QMessageBox.StandardButton.Close, self)
        box.setInformativeText(f"The engine's log: {log_path or paths.log_dir()}")
        tail = getattr(exc, "log_tail", None)
        if tail:
            box.setDetailedText("\n".join(tail))
        if log_path:
            view = box.addButton("View log", QMessageBox.ButtonRole.ActionRole)
            view.clicked.connect(lambda: self.show_log(log_path))
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        self.failure_shown.emit(box)
        return box

    def _diagnosis_dialog(self, diagnosis):
        try:
            from desktop.diagnosis_dialog import DiagnosisDialog
        except ImportError:
            return None
        dialog = DiagnosisDialog(diagnosis, self)
        dialog.fix_chosen.connect(self.apply_fix)
        if hasattr(dialog, "fix_action"):
            dialog.fix_action.connect(self._fix_action)
        if hasattr(dialog, "show_log_requested"):
            dialog.show_log_requested.connect(self.show_log)
        dialog.open()
        self.failure_shown.emit(dialog)
        return dialog

    def apply_fix(self, changes: dict) -> None:
        """Relaunch the failed (or current) model with changed parameters, then resend the last message."""
        plan = self.failed_plan
        if plan is None:
            run = self.manager.get(self.current_model_name() or "")
            plan = run.plan if run else None
        if plan is None:
            self.status.setText("There is no launch to fix.")
            return
        name = plan.model.name
        changes = dict(changes)

        def work():
            new_plan = plan.with_changes(changes)
            self.plans[name] = new_plan
            return self.manager.launch(new_plan)

        self._run_busy(f"Restarting {name} with {', '.join(f'{k}={v}' for k, v in changes.items())}…",
                       name, work, then=self._resend_after_fix)

    def _fix_action(self, fix) -> None:
        """Fixes that are not a relaunch (a relaunch arrives through apply_fix)."""
        action = getattr(fix, "action", None)
        last_user = next((m.content for m in reversed(self.history) if m.role == "user"), "")
        if action == "new_conversation":
            self.new_chat()
            self.input.setPlainText(last_user)  # nothing the user wrote is lost
        elif action == "edit_message":
            self.input.setPlainText(last_user)
            self.input.setFocus()
        elif action == "choose_model":
            self.models_requested.emit()

    def _resend_after_fix(self) -> None:
        self.failed_plan = None
        if any(m.role == "user" for m in self.history):
            self.resend_last()

    def _diagnose_finish(self, fin: Finished, ep: Endpoint | None) -> None:
        self._last_finish_diagnosis = None
        try:
            from engines.diagnosis import diagnose as diag_mod
        except ImportError:
            return
        run = self.manager.get(ep.name) if ep else None
        try:
            d = diag_mod.diagnose_finish(fin, run.plan if run else None)
        except Exception:
            log.exception("diagnosis of a finished reply failed")
            return
        if d is None:
            return
        self._last_finish_diagnosis = d
        self.failed_plan = run.plan if run else None
        title = getattr(d, "title", None) or getattr(d, "summary", None) or "The reply was cut short."
        self.banner_label.setText(str(title))
        self.banner.show()

    def _open_finish_diagnosis(self) -> None:
        if self._last_finish_diagnosis is not None:
            if self._diagnosis_dialog(self._last_finish_diagnosis) is None:
                QMessageBox.information(self, "Ember", self._last_finish_diagnosis.render_text())

    def show_current_log(self) -> None:
        """The log of the selected model's launch (or the last failed one)."""
        run = self.manager.get(self.current_model_name() or "")
        if run is not None:
            self.show_log(run.proc.log_path)
        else:
            self.logs_requested.emit()

    def show_log(self, path) -> None:
        from .log_viewer import LogViewer
        viewer = LogViewer(path, self)
        viewer.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        viewer.show()

    # -- window ---------------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        self.refresh_remotes()

    def show_and_raise(self) -> None:
        self.show()
        self.setWindowState(self.windowState() & ~Qt.WindowState.WindowMinimized)
        self.raise_()
        self.activateWindow()
        self.input.setFocus()

    def shutdown(self) -> None:
        """Stop a running reply and wait for its thread (app quit)."""
        if self._stream is not None:
            self._stream.cancel()
            self._stream.wait(3000)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        if self.keep_in_tray:
            event.ignore()
            self.hide()
            self.hidden_to_tray.emit()
            return
        self.shutdown()
        super().closeEvent(event)
