"""Failures explained: the Diagnosis and Fix types, classification, computed fixes."""
