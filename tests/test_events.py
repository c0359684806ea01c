"""Runs on new uploads: S3 notifications through the receiver, and the watcher, end to end.

A real Prefect API (the session's harness), the export-on-upload deployment served from
prefect.yaml, the receiver as its own process, objects uploaded to a real SeaweedFS.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import copy_tree
from prefect_helpers import PROJECT, flow_runs_of, log_messages_of, served, wait_for

from rbexport.app.sample import box, nifti_bytes
from rbexport.notifications import NotificationError, Watermark, created_objects, objects_since
from rbexport.storage import LocalStorage

SECRET = "receiver-secret-8c1f"
ON_UPLOAD = "export-project/export-on-upload"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def notification(bucket: str, *keys: str, event: str = "ObjectCreated:Put") -> bytes:
    return json.dumps(
        {
            "Records": [
                {"eventName": event, "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1, "eTag": "x"}}}
                for key in keys
            ]
        }
    ).encode()


# When the receiver last emitted events: the trigger counts events in 10 s windows, so one
# test's uploads must come after the window an earlier test's opened, or they join it.
LAST_POSTED = [float("-inf")]
TRIGGER_WINDOW_SECONDS = 10


def past_the_last_trigger_window() -> None:
    """Wait until the trigger's window opened by the last notification has closed."""
    time.sleep(max(0.0, LAST_POSTED[0] + TRIGGER_WINDOW_SECONDS + 2 - time.monotonic()))


def post(url: str, body: bytes, secret: str | None = SECRET, headers: dict | None = None) -> tuple[int, dict]:
    LAST_POSTED[0] = time.monotonic()
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    if secret is not None:
        request.add_header("Authorization", f"Bearer {secret}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def live(prefect_api, seaweed, tmp_path_factory):
    """A source with the sample project, the served upload deployment and a receiver."""
    from rbexport.storage import S3Storage

    source = S3Storage(f"src-{os.getpid()}", "studies/brain", seaweed.endpoint_url)
    destination = S3Storage(f"dst-{os.getpid()}", "live", seaweed.endpoint_url)
    for storage in (source, destination):
        S3Storage(storage.bucket, "", seaweed.endpoint_url).create_bucket()
    sample = tmp_path_factory.mktemp("sample")
    from rbexport.app.sample import write_sample_project

    write_sample_project(LocalStorage(sample))
    copy_tree(sample, source)
    settings = {
        "RBEXPORT_SOURCE": source.url,
        "RBEXPORT_DESTINATION": destination.url,
        "RBEXPORT_ENDPOINT_URL": seaweed.endpoint_url,
    }
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "rbexport.deployments.receiver"],
        cwd=PROJECT,
        env={
            **os.environ,
            "PREFECT_API_URL": prefect_api,
            "RBEXPORT_WEBHOOK_SECRET": SECRET,
            "RBEXPORT_RECEIVER_PORT": str(port),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    wait_for(lambda: urllib.request.urlopen(url, timeout=2).status == 200, 60, "the receiver")
    try:
        # The runner asks for new runs every 2 s instead of 10 (PREFECT_RUNNER_POLL_FREQUENCY).
        with served(prefect_api, "export-on-upload", env={**settings, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}):
            yield {"source": source, "destination": destination, "receiver": url, "settings": settings}
    finally:
        receiver.terminate()
        receiver.wait(timeout=30)


def upload_task(source, task_id: str) -> list[str]:
    """A new task as one tasks/<id>.json and its mask; returns the keys, mask first."""
    mask_key, task_key = f"masks/{task_id}.nii.gz", f"tasks/{task_id}.json"
    source.write(mask_key, nifti_bytes(box((16, 16, 4), 1, (2, 2, 1), (5, 5, 2))))
    task = {
        "taskId": task_id,
        "name": task_id,
        "series": [{"name": "T1", "segmentations": mask_key, "segmentMap": {"1": {"category": "Glioma"}}}],
    }
    source.write(task_key, json.dumps(task).encode())
    return [f"{source.prefix}/{mask_key}", f"{source.prefix}/{task_key}"]


def exported_ids(destination) -> set[str]:
    """The tasks in the upload deployment's export: it writes the nightly's variants, standard among them."""
    return {task["taskId"] for task in json.loads(destination.read("standard/tasks.json"))}


def completed_runs() -> list:
    return [run for run in flow_runs_of(ON_UPLOAD) if run.state and run.state.is_completed()]


def test_an_upload_and_its_notification_lead_to_an_export_with_the_new_task(live):
    source, destination = live["source"], live["destination"]
    keys = upload_task(source, "upload-a")
    posted = time.monotonic()
    status, body = post(live["receiver"], notification(source.bucket, *keys))
    assert (status, body) == (202, {"emitted": 2})
    wait_for(lambda: "upload-a" in exported_ids(destination), 180, "the export to contain upload-a")
    delay = time.monotonic() - posted
    print(f"\nnotification to export: {delay:.1f} s")
    assert exported_ids(destination) >= {"task-001", "task-006", "upload-a"}
    run = wait_for(completed_runs, 60, "a completed run")[0]
    assert run.parameters["quiet_seconds"] == 10


def test_two_uploads_in_quick_succession_export_both_without_racing(live):
    source, destination = live["source"], live["destination"]
    before = {run.id for run in flow_runs_of(ON_UPLOAD)}
    past_the_last_trigger_window()  # an earlier test's upload would otherwise absorb this one
    first = upload_task(source, "burst-b")
    assert post(live["receiver"], notification(source.bucket, *first))[0] == 202
    past_the_last_trigger_window()  # this one starts a second run
    second = upload_task(source, "burst-c")
    assert post(live["receiver"], notification(source.bucket, *second))[0] == 202
    wait_for(lambda: {"burst-b", "burst-c"} <= exported_ids(destination), 240, "both tasks exported")

    def runs_done():
        runs = [run for run in flow_runs_of(ON_UPLOAD) if run.id not in before]
        return runs if len(runs) >= 2 and all(run.state.is_final() for run in runs) else None

    runs = sorted(wait_for(runs_done, 240, "both runs to finish"), key=lambda run: run.start_time)
    assert all(run.state.is_completed() for run in runs)
    for earlier, later in zip(runs, runs[1:], strict=False):  # one at a time: the second waited for the first
        assert later.start_time >= earlier.end_time


def test_the_watcher_finds_uploads_without_any_notification(live, prefect_api):
    from rbexport.flows.watch import watch_source

    source, destination = live["source"], live["destination"]
    before = {run.id for run in flow_runs_of(ON_UPLOAD)}
    state = watch_source(source.url, live["settings"]["RBEXPORT_ENDPOINT_URL"], return_state=True)
    assert state.result() == 0  # the first watch: what is there is the baseline, no flood of events
    flow_run_id = state.state_details.flow_run_id
    wait_for(lambda: "recorded as the baseline, no events for them" in log_messages_of(flow_run_id), 60, "its log")
    time.sleep(12)  # past the trigger's window: an event emitted now would have started a run
    assert {run.id for run in flow_runs_of(ON_UPLOAD)} == before
    upload_task(source, "watched-d")
    emitted = watch_source(source.url, live["settings"]["RBEXPORT_ENDPOINT_URL"])
    assert emitted == 2  # the task JSON and its mask
    wait_for(lambda: "watched-d" in exported_ids(destination), 180, "the export to contain watched-d")
    upload_task(source, "watched-e")
    assert watch_source(source.url, live["settings"]["RBEXPORT_ENDPOINT_URL"]) == 2  # only what is new
    assert watch_source(source.url, live["settings"]["RBEXPORT_ENDPOINT_URL"]) == 0


def test_the_receiver_refuses_what_is_not_an_authenticated_notification(live):
    url = live["receiver"]
    assert post(url, notification("b", "k"), secret=None)[0] == 401
    assert post(url, notification("b", "k"), secret="wrong")[0] == 401
    assert post(url, b"{not json")[:1] == (400,)
    assert post(url, b'{"Records": [{"eventName": "ObjectCreated:Put"}]}')[0] == 400
    assert post(url, b"x" * (1024 * 1024 + 1))[0] == 413
    assert post(url, notification("b", "k", event="ObjectRemoved:Delete")) == (202, {"emitted": 0})
    assert post(url, b'{"Service": "Amazon S3", "Event": "s3:TestEvent"}') == (202, {"emitted": 0})
    basic = "Basic " + base64.b64encode(f"rbexport:{SECRET}".encode()).decode()  # SNS: user:secret@host
    assert post(
        url, notification("b", "k", event="ObjectRemoved:Delete"), secret=None, headers={"Authorization": basic}
    ) == (202, {"emitted": 0})
    assert post(url, notification("b", "k"), secret=None, headers={"Authorization": SECRET})[0] == 202  # MinIO


def test_a_refused_body_still_gets_its_answer_not_a_broken_pipe(live):
    """The receiver reads a refused body before closing; closing on unread bytes reset
    the connection and the client saw `Broken pipe` about a third of the time."""
    url = live["receiver"]
    for _ in range(30):
        assert post(url, b"x" * (5 * 1024 * 1024))[0] == 413
        assert post(url, b"x" * 300_000, secret="wrong")[0] == 401


def test_notifications_are_parsed_as_s3_sends_them():
    body = notification("scans", "study+1/mask%C3%A9.nii.gz", event="s3:ObjectCreated:CompleteMultipartUpload")
    [created] = created_objects(body)
    assert created.url == "s3://scans/study 1/maské.nii.gz"
    assert created.how == "s3:ObjectCreated:CompleteMultipartUpload"


def test_notifications_delivered_through_sns_are_unwrapped():
    envelope = {"Type": "Notification", "Message": notification("scans", "a.nii.gz").decode()}
    assert [item.url for item in created_objects(json.dumps(envelope).encode())] == ["s3://scans/a.nii.gz"]
    confirmation = {"Type": "SubscriptionConfirmation", "SubscribeURL": "https://sns.example/confirm?x"}
    with pytest.raises(NotificationError, match="open https://sns.example/confirm"):
        created_objects(json.dumps(confirmation).encode())


def test_the_first_watch_counts_everything_there_as_seen(tmp_path):
    from rbexport.notifications import baseline
    from rbexport.storage import ObjectInfo

    storage = LocalStorage(tmp_path)
    listing = [ObjectInfo("a", 1, "e", 100.0), ObjectInfo("b", 1, "e", 100.0), ObjectInfo("c", 1, "e", 90.0)]
    assert objects_since(storage, listing, baseline(listing))[0] == []
    created, _ = objects_since(storage, listing + [ObjectInfo("d", 1, "e", 100.0)], baseline(listing))
    assert [item.url.rsplit("/", 1)[-1] for item in created] == ["d"]
    assert baseline([]) == Watermark()


def test_the_watermark_remembers_objects_seen_at_the_same_instant(tmp_path):
    from rbexport.storage import ObjectInfo

    storage = LocalStorage(tmp_path)
    listing = [ObjectInfo("a", 1, "e", 100.0), ObjectInfo("b", 1, "e", 100.0), ObjectInfo("c", 1, "e", 90.0)]
    created, mark = objects_since(storage, listing, Watermark())
    assert [item.url.rsplit("/", 1)[-1] for item in created] == ["c", "a", "b"]
    assert mark == Watermark(100.0, ["a", "b"])
    later = listing + [ObjectInfo("d", 1, "e", 100.0)]  # same second as the mark, new key
    created, mark = objects_since(storage, later, mark)
    assert [item.url.rsplit("/", 1)[-1] for item in created] == ["d"]
    assert mark == Watermark(100.0, ["a", "b", "d"])
    assert objects_since(storage, later, mark)[0] == []


def test_the_quiet_period_ends_as_soon_as_every_task_has_its_masks(sample_source):
    """A run triggered by an upload waits only while a task's JSON names a mask not there yet."""
    import threading

    from rbexport.source import tasks_complete, wait_until_quiet

    storage = LocalStorage(sample_source)
    assert wait_until_quiet(storage, 3600) < 3600  # complete: at once, not an hour
    task = {"taskId": "late", "series": [{"segmentations": "masks/late.nii.gz", "segmentMap": {}}]}
    storage.write("tasks/late.json", json.dumps(task).encode())
    assert not tasks_complete(storage, {info.key for info in storage.list()})
    waiting = threading.Thread(target=wait_until_quiet, args=(storage, 3600), daemon=True)
    waiting.start()
    storage.write("masks/late.nii.gz", nifti_bytes(box((16, 16, 4), 1, (2, 2, 1), (5, 5, 2))))
    waiting.join(timeout=120)
    assert not waiting.is_alive(), "still waiting after the task's mask arrived"
