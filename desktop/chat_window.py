"""The chat window: streaming replies rendered as markdown, conversations kept in SQLite.

The window lays out its parts (:mod:`desktop.chat`) and connects them: the
conversation list, the transcript (or, while no chat model is on this computer, the
welcome card), the composer, the engine control (model picker, offer, note and busy
rows) and the troubleshooter. Nothing here blocks the GUI thread: a reply streams on
a thread (:mod:`desktop.chat.reply`), engine starts run through
:func:`desktop.bridge.run_async` with a busy row and a Cancel. The user's message is
saved before it is sent and the reply while it streams, so a crash loses at most
the last second.

Every reply ends: it is limited to the ``reply_limit`` setting (or
:attr:`ChatWindow.max_tokens`), stopped when it loops, and the status line says in
one sentence why it ended, or what failed (never the engine's raw text).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QMainWindow, QSplitter, QVBoxLayout, QWidget

from engines import settings
from engines.chat import conversations, reply_limit, special_tokens
from engines.chat.first_run import FirstRun
from engines.chat.completion_mode import Mode
from engines.chat.stop_reason import StopReason
from engines.diagnosis.types import Fix
from engines.models import store as model_store
from engines.running import backends
from engines.running.launch import LaunchPlan
from engines.chat.endpoint import Endpoint
from engines.running.stall import StallWatch
from engines.running.manager import EngineManager

from . import icons
from .bridge import ManagerBridge, run_async
from .folder import open_folder
from .chat.composer import Composer
from .chat.conversation_list import ConversationList
from .chat.engine_control import EngineControl
from .chat.fixes import FixActions
from .chat.notice import HistoryBanner
from .chat.reply import ReplyEnd, ReplyStream
from .chat.transcript import ChatMessage, Transcript
from .chat.troubleshoot import Troubleshooter, failure_sentence
from .chat.welcome import Welcome

log = logging.getLogger(__name__)


class ChatWindow(QMainWindow):
    # what the user asked for that the app handles
    models_requested = Signal()
    settings_requested = Signal()
    logs_requested = Signal()
    about_requested = Signal()
    quit_requested = Signal()
    hidden_to_tray = Signal()
    download_requested = Signal(str)   # a fix: download this model (the app's downloads panel)
    setting_requested = Signal(str, object)  # a fix: Settings at this key, this value offered
    cluster_launch_requested = Signal(str, str)  # a fix: launch this model (2nd) on this cluster (1st)
    # progress, for the app and for tests
    reply_finished = Signal(object)    # client.Finished
    reply_ended = Signal(object)       # chat.reply.ReplyEnd: the same ending with its stop reason
    reply_failed = Signal(object)      # exception
    failure_shown = Signal(object)     # the dialog or message box shown for a failure
    busy_changed = Signal(bool)
    first_run_checked = Signal(object)  # engines.chat.first_run.FirstRun

    def __init__(self, manager: EngineManager, bridge: ManagerBridge | None = None,
                 store: conversations.Store | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.manager = manager
        self.bridge = bridge or ManagerBridge(manager, self)
        self.store = store or conversations.Store()
        self.keep_in_tray = False
        self.max_tokens: int | None = None  # the reply limit; None: the reply_limit setting
        self.conversation: conversations.Conversation | None = None
        self._last_model_saved = settings.get("last_model")
        self.conversations = ConversationList(self.store)
        self.transcript = Transcript()
        self.composer = Composer()
        self.engine = EngineControl(manager, self.bridge, self)
        self.troubleshooter = Troubleshooter(manager, self.engine.plans, self)
        self.fixes = FixActions(self)
        self.reply = ReplyStream(self.transcript, self.store, self)
        self.welcome = Welcome(self.transcript, self)
        self.history_banner = HistoryBanner()  # a damaged history moved aside, or chats not saved
        self._build()
        self._connect()
        self.refresh_conversations()
        self.engine.refresh()
        self.new_chat()
        self.welcome.check()

    # -- layout ---------------------------------------------------------------------
    def _build(self) -> None:
        self.setWindowTitle("Ember")
        self.setWindowIcon(icons.app_icon())
        self.resize(980, 680)
        self._build_menu()
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(6, 6, 6, 6)
        top = QHBoxLayout()
        top.addWidget(QLabel("Model:"))
        top.addWidget(self.engine.combo)
        self.system_edit = QLineEdit()
        self.system_edit.setPlaceholderText("System prompt (optional)")
        self.system_edit.setAccessibleName("System prompt")
        top.addWidget(self.system_edit, 2)
        rv.addLayout(top)
        for part in (self.history_banner, self.engine.note, self.engine.offer, self.engine.busy,
                     self.troubleshooter.banner):
            rv.addWidget(part)
        rv.addWidget(self.welcome.stack, 1)  # the transcript, or the welcome card in its place
        rv.addWidget(self.composer)
        splitter = QSplitter()
        splitter.addWidget(self.conversations)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([220, 760])
        self.setCentralWidget(splitter)
        self.status = QLabel("Ready")
        self.statusBar().addWidget(self.status, 1)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, activated=self.stop)
        QShortcut(QKeySequence("Ctrl+L"), self, activated=self.composer.focus)

    def _build_menu(self) -> None:
        menu = self.menuBar().addMenu("&Ember")
        menu.addAction("New chat", QKeySequence("Ctrl+N"), self.new_chat)
        menu.addAction("Models…", self.models_requested.emit)
        menu.addAction("Settings…", self.settings_requested.emit)
        menu.addAction("Show logs", self.logs_requested.emit)
        menu.addAction("This model's engine log", self.show_current_log)
        menu.addAction("About Ember", self.about_requested.emit)
        menu.addSeparator()
        menu.addAction("Quit", QKeySequence("Ctrl+Q"), self.quit_requested.emit)

    def _connect(self) -> None:
        self.conversations.new_requested.connect(self.new_chat)
        self.conversations.opened.connect(self.open_conversation)
        self.conversations.renamed.connect(self._conversation_renamed)
        self.conversations.deleted.connect(self._conversation_deleted)
        self.system_edit.editingFinished.connect(self._system_prompt_edited)
        self.composer.send_requested.connect(self.send)
        self.composer.stop_requested.connect(self.stop)
        self.composer.regenerate_requested.connect(self.regenerate)
        self.composer.copy_requested.connect(self.copy_last_reply)
        self.engine.changed.connect(self._update_buttons)
        self.engine.busy_changed.connect(self.busy_changed)
        self.engine.status.connect(self.status.setText)
        self.engine.launch_failed.connect(self._launch_failed)
        self.engine.model_ready.connect(self._model_ready)
        self.engine.models_requested.connect(self.models_requested)
        self.troubleshooter.shown.connect(self.failure_shown)
        self.troubleshooter.fix_action.connect(self.fixes.run)
        self.reply.ended.connect(self._on_finished)
        self.reply.failed.connect(self._on_failed)
        self.welcome.card.choose_clicked.connect(self.models_requested)
        self.welcome.card.starter_clicked.connect(self.try_starter)
        self.welcome.switched.connect(self._update_buttons)
        self.welcome.checked.connect(self.first_run_checked)
        self.bridge.ready.connect(lambda *_: self.welcome.recheck())  # a downloaded chat model may be running
        self.history_banner.folder_requested.connect(lambda folder: open_folder(folder, "Chat history", self))
        self.history_banner.show_notice(self.store.notice)

    # -- state ----------------------------------------------------------------------
    @property
    def streaming(self) -> bool:
        return self.reply.active

    @property
    def loading(self) -> bool:
        return self.engine.loading

    @property
    def history(self) -> list[ChatMessage]:
        """The messages of the open conversation, as shown."""
        return self.transcript.messages

    def _update_buttons(self) -> None:
        busy = self.streaming or self.loading
        self.composer.set_state(busy=busy, has_user_message=any(m.role == "user" for m in self.history),
                                has_reply=any(m.role == "assistant" for m in self.history))
        self.conversations.set_busy(busy)
        self.engine.update_offer()
        if self.welcome.shown:  # the card says it all, and offers the starter itself
            self.engine.offer.hide()
            self.engine.note.hide()
        self.composer.set_completion(self._completion_chosen())

    def _completion_chosen(self) -> bool:
        """Whether the chosen model is known to only continue text (its mode is read off the GUI thread)."""
        ep = self.current_endpoint()
        mode = self.engine.modes.get(ep.name) if ep is not None else None
        return mode is not None and mode.mode is Mode.COMPLETION

    # -- models (the public face of the engine control) -----------------------------
    def current_endpoint(self) -> Endpoint | None:
        return self.engine.current_endpoint()

    def current_model_name(self) -> str | None:
        return self.engine.current_model_name()

    def select_model(self, name: str) -> bool:
        return self.engine.select_model(name)

    def start_launch(self, plan: LaunchPlan, then: Callable[[], None] | None = None) -> None:
        """Start this plan off the GUI thread with the busy row (and its Cancel); ``then()`` once ready.

        The user chose this model (Download and chat, Launch… in Models): the chat is theirs, no welcome card."""
        self.welcome.dismiss()
        self.engine.start_launch(plan, then)

    def _model_ready(self, name: str) -> None:
        if self.current_endpoint() is None or not self.streaming:
            self.select_model(name)

    def _launch_failed(self, exc: BaseException, name: str) -> None:
        self.reply_failed.emit(exc)
        self.handle_failure(exc, name, starting=True)

    # -- conversations --------------------------------------------------------------
    def refresh_conversations(self) -> None:
        self.conversations.refresh(self.conversation.id if self.conversation else None)

    def new_chat(self) -> None:
        if self.streaming or self.loading:
            return
        self.conversation = None
        self.conversations.clear_selection()
        self.troubleshooter.banner.hide()
        self.transcript.show_messages([])
        self.welcome.show_if_needed()
        self.composer.focus()

    def open_conversation(self, conversation_id: int) -> None:
        conv = self.store.get(conversation_id)
        if conv is None:
            return
        self.conversation = conv
        self.conversations.set_current(conv.id)
        self.system_edit.setText(conv.system_prompt)
        if conv.model:
            self.select_model(conv.model)
        self.troubleshooter.banner.hide()
        self.welcome.dismiss()
        self.transcript.show_messages([_shown(m) for m in self.store.messages(conv.id) if m.role != "system"])
        self._update_buttons()

    def _conversation_renamed(self, conversation_id: int) -> None:
        if self.conversation and self.conversation.id == conversation_id:
            self.conversation = self.store.get(conversation_id)

    def _conversation_deleted(self, conversation_id: int) -> None:
        if self.conversation and self.conversation.id == conversation_id:
            self.new_chat()

    def _system_prompt_edited(self) -> None:
        if self.conversation is not None:
            self.store.set_system_prompt(self.conversation.id, self.system_edit.text())

    def _ensure_conversation(self, first_text: str) -> conversations.Conversation:
        if self.conversation is None:
            self.conversation = self.store.create(conversations.title_from(first_text), self.current_model_name(),
                                                  self.system_edit.text())
            self.refresh_conversations()
        return self.conversation

    # -- sending --------------------------------------------------------------------
    def send(self, text: str | None = None) -> bool:
        """Send the input (or ``text``); False if there is nothing to send or a reply is running."""
        text = (text if isinstance(text, str) else self.composer.text()).strip()
        if not text or self.streaming or self.loading:
            return False
        self.welcome.dismiss()
        conv = self._ensure_conversation(text)
        mid = self.store.add_message(conv.id, "user", text)  # saved before anything is sent
        self.transcript.append(ChatMessage("user", text, mid))
        self.composer.clear()
        self._generate()
        return True

    def regenerate(self) -> None:
        """Drop the replies after the last user message and ask again."""
        if self.streaming or self.loading:
            return
        while self.history and self.history[-1].role == "assistant":
            m = self.transcript.drop_last()
            if m.id is not None:
                self.store.delete_message(m.id)
        if self.history:
            self._generate()

    def resend_last(self) -> None:
        self.regenerate()

    def _generate(self) -> None:
        ep = self.current_endpoint()
        if ep is None:
            self.engine.launch_model(self.engine.offered_model(), then=self._generate)
        elif ep.kind == "unloaded" or (ep.kind == "local" and not self.engine.alive(ep.name)):
            self.engine.wake(ep.name, then=self._generate)
        else:
            self._start_stream(ep)

    def api_messages(self) -> list[dict]:
        msgs = []
        system = self.system_edit.text().strip()
        if system:
            msgs.append({"role": "system", "content": system})
        msgs += [{"role": m.role, "content": m.content} for m in self.history if m.content or m.role == "user"]
        return msgs

    def reply_limit(self) -> int:
        """The most tokens one reply may have: :attr:`max_tokens`, else the ``reply_limit`` setting; a value
        below 1 (a reply without end) is never sent: the setting's, else the default, is used instead."""
        for value in (self.max_tokens, settings.get("reply_limit")):
            if value is not None:
                try:
                    return reply_limit.clamp(value)
                except reply_limit.ReplyLimitError as exc:
                    log.warning("reply limit: %s; using the next one", exc.message)
        return int(settings.DEFAULTS["reply_limit"])

    def request_context(self, ep: Endpoint) -> int | None:
        """The tokens one request to ``ep`` may use (a local engine's context per slot), when known."""
        run = self.manager.get(ep.name) if ep.kind == "local" else None
        if run is None:
            return None
        shape = backends.get(run.plan.engine).context(run.plan)
        return shape.per_slot or shape.total

    def _start_stream(self, ep: Endpoint) -> None:
        conv = self.conversation
        messages = self.api_messages()
        completion = self.engine.mode(ep).mode is Mode.COMPLETION
        context = self.request_context(ep)
        limit = reply_limit.clamp(self.reply_limit(), context)  # no reply is longer than the context
        self.store.set_model(conv.id, ep.name)
        aid = self.store.add_message(conv.id, "assistant", "", complete=False, model=ep.name)
        self.transcript.append(ChatMessage("assistant", "", aid, ep.name, streaming=True))
        self.transcript.follow()  # the user asked: show the reply as it comes (also after a fix's restart)
        if ep.kind == "local":
            self.manager.touch(ep.name)
        self.troubleshooter.banner.hide()
        doing = "continuing your text" if completion else "answering"
        self.status.setText(f"{ep.name} is {doing}… (reply limit {limit:,} tokens)")
        self.reply.start(ep, messages, limit, completion=completion, stall=self._stall_watch(ep), context=context)
        self._update_buttons()

    def _stall_watch(self, ep: Endpoint):
        """For a local engine: the watchdog that stops it when it goes silent mid-reply (through the
        manager, so every window hears that it stopped)."""
        run = self.manager.get(ep.name) if ep.kind == "local" else None
        if run is None or not run.proc.running:
            return None
        return lambda stream: StallWatch(stream, run.proc, on_stall=lambda: self.manager.stop(ep.name, "stalled"))

    def _on_finished(self, end: ReplyEnd) -> None:
        fin = end.finished
        ep = self.reply.endpoint
        msg = self.reply.end()
        if msg is not None and msg.id is not None:
            self.store.update_message(msg.id, msg.content, complete=end.reason is not StopReason.STOPPED_BY_YOU)
        if ep is not None and ep.kind == "local":
            self.manager.touch(ep.name)
            self._remember_model(ep.name)
        self.transcript.refresh_last()
        self.status.setText(self.status_text(end, ep))
        self.status.setToolTip(end.repetition.describe() if end.repetition else "")
        self._update_buttons()
        run = self.manager.get(ep.name) if ep else None
        if end.reason is not StopReason.REPEATING:  # cancelled by Ember: nothing to diagnose
            self.troubleshooter.check_finish(fin, run.plan if run else None)
        self.reply_ended.emit(end)
        self.reply_finished.emit(fin)

    def _on_failed(self, exc: BaseException) -> None:
        ep = self.reply.endpoint
        msg = self.reply.end()
        if msg is not None and msg.id is not None:
            if msg.content:
                self.store.update_message(msg.id, msg.content, complete=False)
                self.transcript.refresh_last()
            else:
                self.store.delete_message(msg.id)
                self.transcript.drop_last()
        self._update_buttons()
        self.reply_failed.emit(exc)
        self.handle_failure(exc, ep.name if ep else None, kept=bool(msg is not None and msg.content), endpoint=ep)

    def _remember_model(self, name: str) -> None:
        """The 'no model' row offers the last model used; saved off the GUI thread (it fsyncs)."""
        if self._last_model_saved != name:
            self._last_model_saved = name
            run_async(lambda: settings.set("last_model", name), name="save-last-model")

    def status_text(self, end: ReplyEnd, ep: Endpoint | None) -> str:
        """Why the reply ended, in a sentence, then its numbers: speed, length of the limit, context."""
        fin = end.finished
        parts = [end.sentence()]
        if fin.tokens_per_second:
            parts.append(f"{fin.tokens_per_second:.1f} tokens/s")
        if fin.usage.completion_tokens is not None and fin.max_tokens and end.reason is not StopReason.REPLY_LIMIT:
            parts.append(f"reply {fin.usage.completion_tokens:,} of {fin.max_tokens:,} tokens")
        used = (fin.usage.prompt_tokens or 0) + (fin.usage.completion_tokens or 0)
        n_ctx = None
        run = self.manager.get(ep.name) if ep else None
        if run is not None:  # the engine's own context key, whichever engine it is
            n_ctx = backends.get(run.plan.engine).context(run.plan).total
        if used:
            parts.append(f"context {used:,} of {n_ctx:,} tokens" if n_ctx else f"context {used:,} tokens")
        return " · ".join(parts)

    def stop(self) -> None:
        """Esc / Stop: cancel the reply (what came so far is kept) or the engine start."""
        if self.streaming:
            self.reply.cancel()
            self.status.setText("Stopping…")
        elif self.loading:
            self.engine.cancel()

    def copy_last_reply(self) -> None:
        for m in reversed(self.history):
            if m.role == "assistant":
                QGuiApplication.clipboard().setText(m.content)
                self.status.setText("Reply copied")
                return

    # -- failures and fixes ---------------------------------------------------------
    def handle_failure(self, exc: BaseException, name: str | None = None, starting: bool = False,
                       kept: bool = False, endpoint: Endpoint | None = None) -> None:
        """Show what went wrong: one sentence in the status line (the diagnosis title; the raw text is
        under Details), and the guided diagnosis dialog, else a message with the log (:attr:`failure_shown`).
        The diagnosis runs off the GUI thread (it reads the log, may wait for the engine to exit).

        ``starting``: ``name``'s start failed; ``kept``: the reply had text, which is kept."""
        self.status.setText("Something went wrong; finding out why…")

        def diagnosed(diagnosis) -> None:
            sentence = failure_sentence(exc, diagnosis, name if starting else None)
            self.status.setText(sentence + (". The reply so far is kept." if kept else "."))
            self.status.setToolTip("")
            self.troubleshooter.show_failure(exc, name, diagnosis)

        self.troubleshooter.diagnose_async(exc, name, endpoint, diagnosed)

    def apply_fix(self, changes: dict) -> None:
        """Relaunch the failed (or current) model with changed parameters (in its engine's keys, or by role:
        ``{"context": 8192}``), then resend the last message; the change is kept as the model's choice."""
        self.fixes.run(Fix("Apply the fix", dict(changes), "", action=None if changes else "relaunch"))

    def resend_after_fix(self) -> None:
        """After a fix's relaunch: send the last message again (if there is one)."""
        self.troubleshooter.failed_plan = None
        if any(m.role == "user" for m in self.history):
            self.resend_last()

    def show_current_log(self) -> None:
        """The log of the selected model's launch (or the last failed one)."""
        run = self.manager.get(self.current_model_name() or "")
        if run is not None:
            self.show_log(run.proc.log_path)
        else:
            self.logs_requested.emit()

    def show_log(self, path: Path | str) -> None:
        self.troubleshooter.show_log(path)

    # -- the first run -------------------------------------------------------------
    @property
    def first_run(self) -> FirstRun | None:
        """Whether a chat model is here and the Hub answers; None until checked."""
        return self.welcome.facts

    @property
    def welcome_shown(self) -> bool:
        return self.welcome.shown

    def dismiss_welcome(self) -> None:
        self.welcome.dismiss()

    def try_starter(self) -> None:
        """The welcome card's second button: chat with the starter, started now if it is not running."""
        self.welcome.dismiss()
        if not self.select_model(model_store.STARTER) and not self.loading:
            self.engine.launch_model(model_store.STARTER)
        self.composer.focus()

    # -- window ---------------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        self.engine.refresh_remotes()
        self.welcome.recheck()  # a chat model may have been downloaded since

    def show_and_raise(self) -> None:
        self.show()
        self.setWindowState(self.windowState() & ~Qt.WindowState.WindowMinimized)
        self.raise_()
        self.activateWindow()
        self.composer.focus()

    def shutdown(self) -> None:
        """Stop a running reply and wait for its thread (app quit)."""
        self.reply.shutdown()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        if self.keep_in_tray:
            event.ignore()
            self.hide()
            self.hidden_to_tray.emit()
            return
        self.shutdown()
        super().closeEvent(event)


def _shown(m: conversations.Message) -> ChatMessage:
    """A saved message as shown: a reply saved before template tokens were filtered is shown without them."""
    content = special_tokens.strip(m.content) if m.role == "assistant" else m.content
    return ChatMessage(m.role, content, m.id, m.model)
