"""rbexport: RedBrick-format exports of medical-image annotation, as plain Python.

The version is kept here only; pyproject.toml reads it (`rbexport --version` prints it,
DICOM objects record it as their software version, CHANGELOG.md says what each one changed).
"""

__version__ = "0.2.0"
