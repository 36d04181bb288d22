"""Tests of the models package (mirrors ``models/``)."""
