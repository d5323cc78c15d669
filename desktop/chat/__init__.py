"""The chat window's parts, each with its own widgets and a small public API.

:mod:`.transcript` shows the conversation (following a streaming reply unless the reader
scrolled up), :mod:`.welcome` is the card a first chat opens on while no chat model is
here, :mod:`.composer` is where the user writes, :mod:`.conversation_list` lists the saved
conversations, :mod:`.engine_control` picks and starts the model (its rows in :mod:`.rows`),
:mod:`.reply` streams one answer through the reply watch and :mod:`.troubleshoot` explains
failures (:mod:`.notice` is the framed row several of them show).
:class:`desktop.chat_window.ChatWindow` lays them out and connects them.
"""
