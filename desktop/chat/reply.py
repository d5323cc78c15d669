"""One reply streaming into the transcript, off the GUI thread.

The stream is read on a :class:`StreamThread`, through a
:class:`~engines.chat.guard.ReplyWatch`: template tokens never reach the
transcript (nor the saved conversation), and a reply that loops is stopped there
and then. Its deltas are batched onto the transcript every ``FLUSH_MS`` (only the
streaming message is rendered again) and saved every ``SAVE_EVERY_S``, so a crash
loses at most the last second. A model without a chat template gets the
conversation as one text to continue (completion mode).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Callable

from PySide6.QtCore import QObject, QThread, QTimer, Signal

from engines.chat import conversations
from engines.chat.client import ChatStream, Delta, Finished
from engines.chat.completion_mode import completion_request
from engines.chat.endpoint import Endpoint
from engines.chat.guard import Repetition, ReplyWatch
from engines.chat.stop_reason import StopReason
from engines.running.stall import StallWatch

from .transcript import ChatMessage, Transcript

log = logging.getLogger(__name__)

FLUSH_MS = 40          # how often streamed text reaches the view
SAVE_EVERY_S = 1.0     # how often a streaming reply is saved


@dataclass(frozen=True)
class ReplyEnd:
    """How a reply ended: the stream's own ending, the reason people read, what looped (if it did)."""

    finished: Finished
    reason: StopReason
    repetition: Repetition | None = None

    def sentence(self) -> str:
        return self.reason.sentence(self.finished.max_tokens)


class StreamThread(QThread):
    """Iterates one :class:`ChatStream` off the GUI thread through a :class:`ReplyWatch`.

    Only the text people may see is emitted; when the watch notices a loop the
    stream is cancelled here, so the loop ends within one chunk.
    """

    delta = Signal(str, bool)      # text, is reasoning
    ended = Signal(object)         # ReplyEnd
    failed = Signal(object)        # exception (EngineHTTPError, StreamBroken, ...)

    def __init__(self, stream: ChatStream, parent: QObject | None = None,
                 stall: Callable[[ChatStream], StallWatch] | None = None):
        super().__init__(parent)
        self.stream = stream
        self.watch = ReplyWatch()
        self.stall = stall  # makes the watchdog for a local engine (None: a remote server)

    def run(self) -> None:
        with self.stall(self.stream) if self.stall is not None else contextlib.nullcontext():
            self._run()

    def _run(self) -> None:
        try:
            for item in self.stream:
                if isinstance(item, Delta):
                    self._show(self.watch.feed(item))
                    if self.watch.repeating and not self.stream.cancelled:
                        self.stream.cancel()
                elif isinstance(item, Finished):
                    for shown in self.watch.flush():
                        self._show(shown)
                    self.ended.emit(ReplyEnd(item, self.watch.reason(item), self.watch.repeating))
        except Exception as exc:  # reaches the window, which diagnoses it
            for shown in self.watch.flush():
                self._show(shown)
            self.failed.emit(exc)

    def _show(self, shown: Delta | None) -> None:
        if shown is not None:
            self.delta.emit(shown.text, shown.reasoning)

    def cancel(self) -> None:
        self.stream.cancel()


class ReplyStream(QObject):
    """Streams answers into the transcript's last message, one at a time.

    The window adds the (empty, streaming) reply to the transcript, calls :meth:`start`,
    and on :attr:`ended` or :attr:`failed` calls :meth:`end` before it saves the outcome.
    """

    ended = Signal(object)     # ReplyEnd
    failed = Signal(object)    # exception

    def __init__(self, transcript: Transcript, store: conversations.Store, parent: QObject | None = None):
        super().__init__(parent)
        self.transcript = transcript
        self.store = store
        self.endpoint: Endpoint | None = None   # the last reply's (kept after it ends)
        self.completion = False                 # whether the last reply continued text (no chat template)
        self.raw_text = ""                      # the last reply as the engine wrote it (logs, tests)
        self._thread: StreamThread | None = None
        self._pending: list[str] = []
        self._last_save = 0.0
        self._timer = QTimer(self, interval=FLUSH_MS)
        self._timer.timeout.connect(self.flush)

    @property
    def active(self) -> bool:
        return self._thread is not None

    def start(self, ep: Endpoint, messages: list[dict], max_tokens: int | None, completion: bool = False,
              stall: Callable[[ChatStream], StallWatch] | None = None, context: int | None = None) -> None:
        """Ask ``ep`` to answer ``messages``; the text goes to the transcript's last message.

        ``completion``: the model has no chat template; it continues the conversation as one text.
        ``stall``: the watchdog for a local engine's silence (see :mod:`engines.running.stall`).
        ``context``: the tokens one request may use (the reply limit is clamped to it), when known.
        """
        request = completion_request(messages) if completion else None
        stream = ChatStream(ep.base_url, messages, ep.api_key, ep.model_id, max_tokens=max_tokens,
                            completion=request, context=context)
        self._thread = StreamThread(stream, self, stall)
        self.endpoint, self.completion = ep, completion
        self._thread.delta.connect(self._on_delta)
        self._thread.ended.connect(self.ended)
        self._thread.failed.connect(self.failed)
        self._pending = []
        self._last_save = time.monotonic()
        self._thread.start()
        self._timer.start()

    def flush(self) -> None:
        """Show the text that arrived since the last flush; save it if a second has passed."""
        if not self._pending or not self.transcript.messages:
            return
        msg = self.transcript.messages[-1]
        msg.content += "".join(self._pending)
        self._pending = []
        self.transcript.refresh_last()
        now = time.monotonic()
        if msg.id is not None and now - self._last_save >= SAVE_EVERY_S:
            self.store.update_message(msg.id, msg.content)
            self._last_save = now

    def end(self) -> ChatMessage | None:
        """After ``ended`` or ``failed``: the last text shown, the thread gone; the reply, if any."""
        self._timer.stop()
        self.flush()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.wait(5000)
            self.raw_text = thread.stream.text
            thread.deleteLater()
        messages = self.transcript.messages
        msg = messages[-1] if messages and messages[-1].role == "assistant" else None
        if msg is not None:
            msg.streaming = False
        return msg

    def cancel(self) -> None:
        """Stop the reply; what came so far is kept (``ended`` follows, cancelled)."""
        if self._thread is not None:
            self._thread.cancel()

    def shutdown(self) -> None:
        """Cancel and wait for the thread (the app quits)."""
        if self._thread is not None:
            self._thread.cancel()
            self._thread.wait(3000)

    def _on_delta(self, text: str, reasoning: bool) -> None:
        if not reasoning:
            self._pending.append(text)
