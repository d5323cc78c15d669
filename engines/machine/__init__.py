"""This computer: hardware detection, GGUF headers, and how much of a model fits (auto-NGL)."""
