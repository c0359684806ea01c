"""`--engine auto`, the default: the flow where a Prefect API is configured, the local engine
otherwise, said on the first line; configuration errors before Prefect is imported."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import tree
from test_cli import api_servers_of, assert_clean

from rbexport.app.engine_choice import choose_engine

LOCAL_LINE = "rbexport: local engine (no Prefect API configured; --engine prefect to use an ephemeral one)"

# (files in the working directory or PREFECT_HOME, environment): what decides Prefect's API URL.
PROFILES = """
active = "{active}"
[profiles.ephemeral]
PREFECT_SERVER_EPHEMERAL_ENABLED = "true"
[profiles.served]
PREFECT_API_URL = "http://127.0.0.1:4300/api"
"""
CASES = {
    "nothing": ({}, {}),
    "environment": ({}, {"PREFECT_API_URL": "http://127.0.0.1:4201/api"}),
    "empty in the environment, over a profile": (
        {"home/profiles.toml": PROFILES.format(active="served")},
        {"PREFECT_API_URL": ""},
    ),
    "active profile": ({"home/profiles.toml": PROFILES.format(active="served")}, {}),
    "active profile without one": ({"home/profiles.toml": PROFILES.format(active="ephemeral")}, {}),
    "PREFECT_PROFILE": ({"home/profiles.toml": PROFILES.format(active="ephemeral")}, {"PREFECT_PROFILE": "served"}),
    "PREFECT_PROFILE naming no profile": (
        {"home/profiles.toml": PROFILES.format(active="served")},
        {"PREFECT_PROFILE": "gone"},
    ),
    "PREFECT_PROFILES_PATH": (
        {"elsewhere/p.toml": PROFILES.format(active="served")},
        {"PREFECT_PROFILES_PATH": "{cwd}/elsewhere/p.toml"},
    ),
    "prefect.toml": ({"prefect.toml": '[api]\nurl = "http://127.0.0.1:4202/api"\n'}, {}),
    "prefect.toml without one": ({"prefect.toml": "[server]\nanalytics_enabled = false\n"}, {}),
    "pyproject.toml": ({"pyproject.toml": '[tool.prefect.api]\nurl = "http://127.0.0.1:4203/api"\n'}, {}),
    ".env": ({".env": "PREFECT_API_URL='http://127.0.0.1:4204/api'\n"}, {}),
    "environment over prefect.toml": (
        {"prefect.toml": '[api]\nurl = "http://127.0.0.1:4202/api"\n'},
        {"PREFECT_API_URL": "http://127.0.0.1:4205/api"},
    ),
    "invalid profiles file": ({"home/profiles.toml": "active = [\n"}, {}),
}

# Every case in one fresh interpreter (Prefect imported once): for each, its working directory
# and environment, then Prefect's answer (its settings, built anew from them) beside ours.
COMPARE = textwrap.dedent(
    """
    import json, os, sys, warnings
    warnings.simplefilter("ignore")
    from prefect.settings import Settings
    from rbexport.app.engine_choice import configured_api
    base = dict(os.environ)
    answers = {}
    for case, cwd, environment in json.loads(sys.stdin.read()):
        os.environ.clear()
        os.environ.update(base)
        os.environ.update(environment)
        os.chdir(cwd)
        ours = configured_api()
        answers[case] = {"ours": ours.url if ours else None, "prefect": Settings().api.url or None}
    print(json.dumps(answers))
    """
)


def test_auto_finds_the_api_prefect_would_use(tmp_path):
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PREFECT_") or name == "PREFECT_SERVER_ANALYTICS_ENABLED"
    }
    cases = []
    for case, (files, environment) in CASES.items():
        cwd = tmp_path / case.replace(" ", "-").replace(".", "")
        for name, content in files.items():
            (cwd / name).parent.mkdir(parents=True, exist_ok=True)
            (cwd / name).write_text(content)
        cwd.mkdir(exist_ok=True)
        env = {"PREFECT_HOME": str(cwd / "home")}
        env.update({name: value.format(cwd=cwd) for name, value in environment.items()})
        cases.append((case, str(cwd), env))
    result = subprocess.run(
        [sys.executable, "-c", COMPARE],
        input=json.dumps(cases),
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(Path(__file__).parents[1])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(answers) == list(CASES), answers
    for case, answer in answers.items():
        assert answer["ours"] == answer["prefect"], (case, answer)
    found = {case: answer["ours"] for case, answer in answers.items()}
    assert found["active profile"] == "http://127.0.0.1:4300/api" and found["nothing"] is None, found
    assert found["environment over prefect.toml"] == "http://127.0.0.1:4205/api", found


def test_the_choice_and_its_reason():
    api = {"PREFECT_API_URL": "http://user:secret@127.0.0.1:4200/api"}
    saved = {name: os.environ.get(name) for name in ("PREFECT_API_URL",)}
    try:
        os.environ.update(api)
        assert choose_engine("auto").line() == (
            "Prefect flow on the Prefect API at http://127.0.0.1:4200/api "
            "(PREFECT_API_URL; --engine local to run without it)"
        )
        assert choose_engine("local").line() == "local engine (--engine local)"
        assert choose_engine("prefect").engine == "prefect"
        os.environ["PREFECT_API_URL"] = ""
        assert "rbexport: " + choose_engine("auto").line() == LOCAL_LINE
        assert choose_engine("auto", "--credentials-block").line() == (
            "Prefect flow on an ephemeral Prefect API (--credentials-block needs Prefect; no Prefect API configured)"
        )
        assert choose_engine("prefect").line() == (
            "Prefect flow on an ephemeral Prefect API (--engine prefect; no Prefect API configured)"
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_the_default_runs_locally_without_an_api(run_cli, sample_source, tmp_path):
    destination = tmp_path / "export"
    result = run_cli("run", "--source", str(sample_source), "--dest", str(destination), ephemeral=True)
    assert result.returncode == 0, result.stderr
    assert_clean(result.stderr)
    assert result.stderr.splitlines()[0] == LOCAL_LINE
    assert "6 tasks exported, 0 failed" in result.stdout
    assert json.loads((destination / "tasks.json").read_text())[0]["taskId"] == "task-001"
    assert not api_servers_of(tmp_path / "prefect-home")
    assert not (tmp_path / "prefect-home" / "rbexport-api.log").exists()  # no ephemeral API was started


def without_prefect(arguments: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess:
    """`rbexport` through rbexport.app.cli.main in a fresh interpreter that reports whether it imported Prefect."""
    code = (
        "import sys; from rbexport.app.cli import main; "
        f"code = main({arguments!r}); "
        "loaded = sorted({name.split('.')[0] for name in sys.modules} & {'prefect', 'flows'}); "
        "print('loaded:', loaded); sys.exit(code)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **environment}
    )


def test_auto_without_an_api_never_imports_prefect(sample_source, tmp_path):
    environment = {"PREFECT_HOME": str(tmp_path / "home"), "PREFECT_API_URL": ""}
    result = without_prefect(["run", "--source", str(sample_source), "--dest", str(tmp_path / "x")], environment)
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout and "6 tasks exported" in result.stdout
    assert result.stderr.splitlines()[0] == LOCAL_LINE


def test_the_default_runs_the_flow_on_the_api_a_profile_names(prefect_api, run_cli, sample_source, tmp_path):
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text(f'active = "team"\n[profiles.team]\nPREFECT_API_URL = "{prefect_api}"\n')
    destination = tmp_path / "export"
    environment = {**os.environ, "PREFECT_HOME": str(home)}
    environment.pop("PREFECT_API_URL", None)
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("rbexport")),
            "run",
            "--source",
            str(sample_source),
            "--dest",
            str(destination),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == (
        f"rbexport: Prefect flow on the Prefect API at {prefect_api} "
        f"(profile 'team' in {home / 'profiles.toml'}; --engine local to run without it)"
    )
    assert "6 tasks exported" in result.stdout
    assert not api_servers_of(home)

    async def runs_for_destination() -> list[str]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName

        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["export-project"])))
            return [run.state_name for run in runs if run.parameters.get("destination") == str(destination)]

    assert asyncio.run(runs_for_destination()) == ["Completed"]  # recorded on the profile's server


def test_configuration_errors_come_before_prefect(prefect_api, seaweed, sample_source, tmp_path):
    """With a server configured (so the flow would run), what is wrong is said without importing Prefect."""
    environment = {"PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "home")}
    destination = str(tmp_path / "export")
    (tmp_path / "empty").mkdir()
    cases = {
        ("--source", str(tmp_path / "nothere")): f"the source folder {tmp_path / 'nothere'} does not exist",
        ("--source", str(tmp_path / "empty")): f"no tasks.json or tasks/*.json in {tmp_path / 'empty'}",
        (
            "--source",
            "s3://no-such-bucket-here/p",
            "--endpoint-url",
            seaweed.endpoint_url,
        ): "bucket 'no-such-bucket-here' does not exist",
        (
            "--source",
            "s3://xyz/p",
            "--endpoint-url",
            "http://127.0.0.1:9",
        ): "cannot reach s3://xyz at http://127.0.0.1:9",
        (
            "--source",
            str(sample_source),
            "--credentials-block",
            "s3-bucket/keys",
        ): "credentials block 's3-bucket/keys': name a block as secret/NAME",
    }
    for arguments, message in cases.items():
        result = without_prefect(["run", "--dest", destination, *arguments], environment)
        assert result.returncode == 2, (arguments, result.stderr)
        assert result.stderr.startswith(f"rbexport: error: {message}"), (arguments, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr  # one line, and no engine line: nothing ran
        assert "loaded: []" in result.stdout, (arguments, result.stdout)
    assert not Path(destination).exists()


def test_engine_local_still_refuses_dask(run_cli, sample_source, tmp_path):
    result = run_cli(
        "run",
        "--engine",
        "local",
        "--task-runner",
        "dask",
        "--source",
        str(sample_source),
        "--dest",
        str(tmp_path / "x"),
    )
    assert result.returncode == 2
    assert "--task-runner dask runs on prefect-dask: it needs --engine prefect or auto" in result.stderr
    assert not tree(tmp_path).get("x/tasks.json")
