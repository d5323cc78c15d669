"""Talking to a running model: the streaming client, conversation history, remote endpoints."""
