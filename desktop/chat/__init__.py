"""The chat window's parts, each with its own widgets and a small public API.

:mod:`.transcript` shows the conversation, :mod:`.composer` is where the user writes,
:mod:`.conversation_list` lists the saved conversations, :mod:`.engine_control` picks and
starts the model, :mod:`.reply` streams one answer and :mod:`.troubleshoot` explains
failures (:mod:`.notice` is the framed row two of them show). :class:`desktop.chat_window.ChatWindow`
lays them out and connects them.
"""
