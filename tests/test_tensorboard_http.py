"""TensorBoard as a user opens it: `tensorboard --logdir outputs` over a real 2-job sweep and its report,
read through the HTTP routes TensorBoard's own pages call, with the request bodies its frontend sends.

HPARAMS: every run once (each job, and the teacher the sweep trained), the swept key (the KD term's
temperature) marked `differs` and listed before the keys every run shares, each job's final metrics
as its record has them. TIME SERIES: the sections the tags make, in TensorBoard's order, learning
curves before the images (kdlab.tensorboard).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kdlab.record import RunRecord

pytestmark = pytest.mark.slow

TINY_TEACHER = 'teacher.overrides=["trainer.max_epochs=1"]'
KD_T = "distill.losses.kd.temperature"
STATUSES = ["STATUS_FAILURE", "STATUS_RUNNING", "STATUS_SUCCESS", "STATUS_UNKNOWN"]  # the HPARAMS page's filter
FINAL = ("test/acc", "val/acc_best", "test/teacher_acc", "test/agreement", "test/kl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def tensorboard(logdir: Path) -> Iterator[str]:
    """`tensorboard --logdir <logdir>` on a free local port; its URL while it runs, stopped afterwards."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", f"--port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def call(url: str, body: dict | None = None):
    """GET (or POST `body` as JSON, as the HPARAMS page does) and the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def hparams_tables(url: str, runs: int, timeout_s: float = 120) -> tuple[dict, dict]:
    """The HPARAMS page's two requests, once TensorBoard has loaded `runs` sessions with their test metrics.

    TensorBoard reads the event files in the background after it starts: until then a request sees
    fewer runs, or runs without their last scalars. The last answers are returned when time runs out.
    """
    deadline, experiment, groups = time.monotonic() + timeout_s, {}, {}
    while time.monotonic() < deadline:
        try:
            experiment = call(f"{url}/data/plugin/hparams/experiment", {"experimentName": "", "hparamsLimit": 1000})
            columns = [{"hparam": h["name"], "includeInResult": True} for h in experiment.get("hparamInfos", [])]
            columns += [{"metric": m["name"], "includeInResult": True} for m in experiment.get("metricInfos", [])]
            groups = call(
                f"{url}/data/plugin/hparams/session_groups",
                {"experimentName": "", "allowedStatuses": STATUSES, "colParams": columns, "startIndex": 0,
                 "sliceSize": 100},
            )  # fmt: skip
        except (urllib.error.URLError, ConnectionError):
            time.sleep(1)  # not listening yet
            continue
        sessions = [s for g in groups.get("sessionGroups", []) for s in g["sessions"]]
        loaded = [s for s in sessions if {"test/acc"} <= {m["name"]["tag"] for m in s.get("metricValues", [])}]
        if len(loaded) >= runs and all(s.get("status") == "STATUS_SUCCESS" for s in sessions):
            break
        time.sleep(1)
    return experiment, groups


def time_series_sections(url: str) -> list[str]:
    """The TIME SERIES tab's sections in TensorBoard's order: each tag's part before its first "/", ordered by
    the tags' natural order, which for these lowercase names is plain string order (kdlab.tensorboard)."""
    tags = call(f"{url}/data/plugin/timeseries/tags")
    names = {tag for run_tags in tags["scalars"]["runTagInfo"].values() for tag in run_tags}
    names |= set(tags["images"]["tagRunSampledInfo"])
    names |= {tag for run_tags in tags["histograms"]["runTagInfo"].values() for tag in run_tags}
    return sorted({name.split("/", 1)[0] for name in names})


def test_tensorboard_lists_each_job_once_with_the_swept_key_first_and_its_final_metrics(
    tmp_path, mnist_dir, tiny_cli, run_script
):
    outputs = tmp_path / "outputs"
    sweep = outputs / "distill_mlp" / "multirun" / "sweep"
    run_script("train.py", "-m", "experiment=distill_mlp", *tiny_cli(tmp_path, mnist_dir), TINY_TEACHER,
               f"hydra.sweep.dir={sweep}", "distill.temperature=2,8")  # fmt: skip
    run_script("scripts/report.py", str(sweep))
    records = {job: RunRecord.read(sweep / job) for job in ("0", "1")}
    teacher = Path(records["0"].teacher.checkpoint).parent

    # the report writes nothing TensorBoard reads as a run: every events file is a job's or the teacher's
    runs = {p.parent.relative_to(outputs).as_posix() for p in outputs.rglob("events.out.tfevents.*")}
    job_runs = {job: (sweep / job / "tensorboard").relative_to(outputs).as_posix() for job in records}
    assert runs == {*job_runs.values(), (teacher / "tensorboard").relative_to(outputs).as_posix()}

    with tensorboard(outputs) as url:
        experiment, groups = hparams_tables(url, runs=len(runs))
        sections = time_series_sections(url)

    # HPARAMS: every run is one session and one row
    sessions = [s["name"] for g in groups["sessionGroups"] for s in g["sessions"]]
    assert sorted(sessions) == sorted(runs) and groups["totalSize"] == len(runs) == 3, sessions
    infos = experiment["hparamInfos"]
    names = [h["name"] for h in infos]
    differs = [h["name"] for h in infos if h.get("differs")]
    assert KD_T in differs and "distill.temperature" not in names  # the T the term trained at, not the global key
    assert names[: len(differs)] == differs  # varied keys first (the page shows the first five)
    assert names.index(KD_T) < min(names.index(h["name"]) for h in infos if not h.get("differs"))
    first_metrics = [m["name"]["tag"] for m in experiment["metricInfos"][:5]]  # the page shows the first five
    assert first_metrics[0] == "test/acc", first_metrics

    by_run = {s["name"]: (g, s) for g in groups["sessionGroups"] for s in g["sessions"]}
    for job, record in records.items():
        group, session = by_run[job_runs[job]]
        assert f"distill.temperature={(2, 8)[int(job)]}" in record.overrides
        assert group["hparams"][KD_T] == (2.0, 8.0)[int(job)]
        assert session["status"] == "STATUS_SUCCESS"
        values = {m["name"]["tag"]: m["value"] for m in session["metricValues"] if not m["name"]["group"]}
        for key in FINAL:
            assert values[key] == pytest.approx(record.metrics[key], rel=1e-6), key

    # TIME SERIES: test results, then the learning curves (epoch and learning rate among them), then images
    assert sections == ["test", "train", "val", "visuals"], sections
