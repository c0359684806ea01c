"""Prefect flows: the export pipeline on one screen, its steps in `tasks/`."""
