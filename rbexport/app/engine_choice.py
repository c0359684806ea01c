"""Which engine `rbexport run` uses, and why, decided before Prefect is imported.

`--engine auto` (the default) runs the Prefect flow where a Prefect API is configured and
the local engine otherwise. Whether one is configured is read here the way Prefect's
settings read it, without importing Prefect (1-2 s): PREFECT_API_URL in the environment,
else in `./.env`, `./prefect.toml` (`[api] url`) or `./pyproject.toml`
(`[tool.prefect.api] url`), else in the active profile of the profiles file
(PREFECT_PROFILES_PATH, else $PREFECT_HOME/profiles.toml, else ~/.prefect/profiles.toml;
the profile named by PREFECT_PROFILE, else the file's `active`). tests/test_engine_choice.py
checks these answers against Prefect's own settings.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

LOCAL, PREFECT = "local", "prefect"


@dataclass(frozen=True)
class ConfiguredAPI:
    url: str
    origin: str  # where it was found, as a person would say it: "PREFECT_API_URL", "profile 'local' in ..."


@dataclass(frozen=True)
class EngineChoice:
    engine: str  # LOCAL or PREFECT
    api: ConfiguredAPI | None  # the server the flow runs on; None: an ephemeral API (or the local engine)
    reason: str

    def line(self) -> str:
        """What the CLI prints first: which engine runs, and why."""
        if self.engine == LOCAL:
            return f"local engine ({self.reason})"
        where = f"the Prefect API at {_without_userinfo(self.api.url)}" if self.api else "an ephemeral Prefect API"
        return f"Prefect flow on {where} ({self.reason})"


def choose_engine(requested: str, needs_prefect: str | None = None) -> EngineChoice:
    """`requested`: auto, local or prefect. `needs_prefect`: the flag that only the flow
    supports (--credentials-block, --task-runner dask), which makes auto pick the flow."""
    api = configured_api()
    found = f"the API from {api.origin}" if api else "no Prefect API configured"
    if requested == LOCAL:
        return EngineChoice(LOCAL, None, "--engine local")
    if requested == PREFECT:
        return EngineChoice(PREFECT, api, f"--engine prefect; {found}")
    if api:
        return EngineChoice(PREFECT, api, f"{api.origin}; --engine local to run without it")
    if needs_prefect:
        return EngineChoice(PREFECT, None, f"{needs_prefect} needs Prefect; no Prefect API configured")
    return EngineChoice(LOCAL, None, "no Prefect API configured; --engine prefect to use an ephemeral one")


def configured_api() -> ConfiguredAPI | None:
    """The Prefect API URL Prefect's settings would use, or None (Prefect would then start an
    ephemeral API). Sources in Prefect's order; the first that sets it wins, even to empty."""
    for origin, value in _api_url_sources():
        if value is not None:
            return ConfiguredAPI(value, origin) if value.strip() else None
    return None


def _api_url_sources():
    yield "PREFECT_API_URL", os.environ.get("PREFECT_API_URL")
    yield "PREFECT_API_URL in ./.env", _dotenv_value(Path(".env"), "PREFECT_API_URL")
    yield "[api] url in ./prefect.toml", _toml_value(Path("prefect.toml"), ("api", "url"))
    yield (
        "[tool.prefect.api] url in ./pyproject.toml",
        _toml_value(Path("pyproject.toml"), ("tool", "prefect", "api", "url")),
    )
    if not _test_mode():
        yield from _profile_source()


def _profile_source():
    path = _profiles_path()
    if path is None:
        return
    profiles = _read_toml(path)
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    profile = profiles.get("profiles", {}).get(active) if isinstance(active, str) else None
    if isinstance(profile, dict):
        value = profile.get("PREFECT_API_URL")
        yield f"profile {active!r} in {path}", value if isinstance(value, str) else None


def _profiles_path() -> Path | None:
    """The profiles file Prefect reads (None: Prefect's built-in profiles, none naming an API)."""
    explicit = (
        os.environ.get("PREFECT_PROFILES_PATH")
        or _dotenv_value(Path(".env"), "PREFECT_PROFILES_PATH")
        or _toml_value(Path("prefect.toml"), ("profiles_path",))
        or _toml_value(Path("pyproject.toml"), ("tool", "prefect", "profiles_path"))
    )
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("PREFECT_HOME")
    path = (Path(home).expanduser() if home else Path.home() / ".prefect") / "profiles.toml"
    return path if path.is_file() else None


def _test_mode() -> bool:
    """Prefect's test mode ignores profiles."""
    names = (
        "PREFECT_TEST_MODE",
        "PREFECT_UNIT_TEST_MODE",
        "PREFECT_TESTING_UNIT_TEST_MODE",
        "PREFECT_TESTING_TEST_MODE",
    )
    return any(os.environ.get(name) for name in names)


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}  # Prefect warns and ignores a file it cannot read: so does this


def _toml_value(path: Path, keys: tuple[str, ...]) -> str | None:
    if not path.is_file():
        return None
    value: object = _read_toml(path)
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


def _dotenv_value(path: Path, name: str) -> str | None:
    """`NAME=value` in a .env file (with optional `export `, quotes and comments)."""
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    found = None
    for line in lines:
        key, equals, value = line.strip().removeprefix("export ").partition("=")
        if equals and key.strip() == name:
            value = value.strip()
            if value[:1] in {'"', "'"} and value[-1:] == value[:1] and len(value) > 1:
                value = value[1:-1]
            else:
                value = value.split(" #", 1)[0].strip()
            found = value
    return found


def _without_userinfo(url: str) -> str:
    """A URL fit to print: `user:password@` left out."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
