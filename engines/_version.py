"""Fallback version for frozen builds without package metadata (stamped by the build)."""
VERSION = "0.1.0"
