"""Prefect tasks: thin, retryable wrappers around the Prefect-free steps in `rbexport`."""
