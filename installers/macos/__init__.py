"""macOS packaging helpers (the Info.plist generator runs anywhere; the rest needs a Mac)."""
