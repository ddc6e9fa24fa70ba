"""Glue of the end-to-end recipes under ``pipelines/`` (plain functions the ``medeff`` CLI wraps)."""
