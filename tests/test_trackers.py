"""The `logger` group beyond TensorBoard: composed as a list, refused at the start without its package, and each
tracker (CSV, MLflow against a real local server, W&B offline) holding the researcher's keys, the record's final
metrics and the run's status."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from stand_ins import CrashAtEpoch

import kdlab.run.fit
import kdlab.run.trackers
from kdlab.callbacks import TrackerMirror
from kdlab.config import CONFIG_DIR, ConfigError, compose_config
from kdlab.record import RunRecord
from kdlab.run import train
from kdlab.run.trackers import tracker_run_name

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


# -- composition and refusal ----------------------------------------------------------------------------
@pytest.mark.heavy
@pytest.mark.unit
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_keeps_tensorboard_as_its_only_default_logger(experiment):
    cfg = compose_config([f"experiment={experiment}", "paths.root_dir=/r"])
    assert list(cfg.logger) == ["tensorboard"]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("choice", "keys"),
    [
        ("logger=[tensorboard,csv]", ["tensorboard", "csv"]),
        ("logger=[tensorboard,mlflow]", ["tensorboard", "mlflow"]),
        ("logger=[csv,mlflow,wandb]", ["csv", "mlflow", "wandb"]),
        ("logger=none", []),
    ],
)
@pytest.mark.heavy
def test_loggers_compose_as_a_list_from_the_command_line(choice, keys):
    cfg = compose_config(["experiment=distill_mlp", choice, "paths.root_dir=/r"])
    assert list(cfg.logger or {}) == keys
    # TensorBoard is kdlab's subclass of Lightning's (its tag layout, kdlab.tensorboard); the trackers are Lightning's
    expected = {"tensorboard": "kdlab.tensorboard.TensorBoardLogger"}
    assert all(
        cfg.logger[k]._target_ == expected[k] if k in expected else cfg.logger[k]._target_.startswith("lightning.")
        for k in keys
    )


@pytest.mark.heavy
@pytest.mark.unit
def test_the_mlflow_store_defaults_to_sqlite_under_outputs_or_the_environments_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_config(["experiment=student_scratch_mlp", "logger=mlflow", "paths.root_dir=/r"])
    assert cfg.logger.mlflow.tracking_uri == "sqlite:////r/outputs/mlflow.db"
    assert cfg.logger.mlflow.experiment_name == "student_scratch_mlp"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    cfg = compose_config(["experiment=student_scratch_mlp", "logger=mlflow", "paths.root_dir=/r"])
    assert cfg.logger.mlflow.tracking_uri == "http://tracking.example:5000"


@pytest.mark.heavy
@pytest.mark.unit
def test_a_tracker_run_is_named_after_the_run_folder_under_outputs_name(tmp_path):
    cfg = compose_config(["experiment=student_scratch_mlp", f"paths.root_dir={tmp_path}"])
    base = tmp_path / "outputs" / "student_scratch_mlp"
    assert tracker_run_name(cfg, base / "runs" / "2026-01-31_12-00-00-000000") == "runs/2026-01-31_12-00-00-000000"
    assert tracker_run_name(cfg, base / "multirun" / "2026-01-31_12-00-00-000000" / "3") == (
        "multirun/2026-01-31_12-00-00-000000/3"  # a job's folder alone ("3") repeats in every sweep
    )
    assert tracker_run_name(cfg, tmp_path / "elsewhere" / "staging") == "staging"


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_whose_package_is_missing_is_refused_before_any_work(make_cfg, monkeypatch, tracker):
    """The refusal names the extra to install, and comes before the data is read or a teacher is trained."""
    target = f"lightning.pytorch.loggers.{'MLFlowLogger' if tracker == 'mlflow' else 'WandbLogger'}"
    monkeypatch.setitem(kdlab.run.trackers.EXTRAS, target, ("kdlab_test_no_such_package", tracker))
    cfg = make_cfg("experiment=distill_mlp", f"logger=[tensorboard,{tracker}]")
    with pytest.raises(ConfigError, match=rf"logger\.{tracker} .*pip install 'kdlab\[{tracker}\]'"):
        train(cfg)
    assert not Path(cfg.paths.teacher_dir).exists()
    assert RunRecord.read(Path(cfg.paths.output_dir)).status == "failed"


def test_an_mlflow_server_that_does_not_answer_is_refused_before_any_work(make_cfg):
    pytest.importorskip("mlflow")
    with socket.socket() as probe:  # a port nothing listens on once it is closed again
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    cfg = make_cfg("experiment=distill_mlp", "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}")
    with pytest.raises(ConfigError, match=rf"logger\.mlflow\.tracking_uri={uri} does not answer"):
        train(cfg)
    assert not Path(cfg.paths.teacher_dir).exists()


# -- the mirror: what every tracker but TensorBoard receives --------------------------------------------
class RecordingLogger(Logger):
    """A Lightning logger that keeps what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.hparams, self.metrics, self.statuses = {}, [], []

    name, version = "recording", 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.hparams.update(params)

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((dict(metrics), step))

    def finalize(self, status: str) -> None:
        self.statuses.append(status)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("status", "finalized"),
    [("ok", "success"), ("smoke", "success"), ("failed", "failed"), ("diverged", "failed"), ("interrupted", "KILLED")],
)
def test_the_mirror_gives_each_tracker_the_keys_then_the_records_final_metrics_and_status(tmp_path, status, finalized):
    tracker, tensorboard = RecordingLogger(), TensorBoardLogger(tmp_path)
    mirror = TrackerMirror({"seed": 3, "optimizer.lr": 0.003})
    mirror.on_fit_start(SimpleNamespace(loggers=[tensorboard, tracker]), None)
    mirror.on_test_start(SimpleNamespace(loggers=[tensorboard, tracker]), None)  # once per logger, not twice
    assert tracker.hparams == {"seed": 3, "optimizer.lr": 0.003} and tracker.statuses == []
    record = RunRecord(
        name="x", kind="supervised", status=status, global_step=40, smoke=["debug=fast"] * (status == "smoke")
    )
    record.metrics = {"test/acc": 0.975, "val/acc_best": 0.98, "test/kl": None}
    mirror.end(record)
    assert tracker.metrics == [({"test/acc": 0.975, "val/acc_best": 0.98}, 40)]  # a null metric is not a zero
    assert tracker.hparams["status"] == status and ("smoke" in tracker.hparams) == (status == "smoke")
    assert tracker.statuses == [finalized]
    assert not (Path(tensorboard.log_dir) / "hparams.yaml").exists()  # TensorBoard is TensorBoardSession's


def test_a_tracker_that_fails_at_the_end_costs_only_its_copy(caplog):
    class Down(RecordingLogger):
        def log_metrics(self, metrics, step=None) -> None:
            raise ConnectionError("tracking server unreachable")

    down, up = Down(), RecordingLogger()
    mirror = TrackerMirror({"seed": 0})
    mirror.on_fit_start(SimpleNamespace(loggers=[down, up]), None)
    mirror.end(RunRecord(name="x", kind="supervised", status="ok", metrics={"test/acc": 0.9}, output_dir="/run"))
    assert up.statuses == ["success"] and up.metrics == [({"test/acc": 0.9}, 0)]
    assert "Down did not receive this run's final metrics" in caplog.text and "metrics.json in /run" in caplog.text


# -- each tracker after a real run ------------------------------------------------------------------------
def test_csv_holds_the_keys_the_final_metrics_and_the_status(make_cfg):
    cfg = make_cfg("experiment=student_scratch_mlp", "logger=[tensorboard,csv]", "seed=3")
    record, _ = train(cfg)
    out = Path(cfg.paths.output_dir) / "csv"
    hparams = yaml.safe_load((out / "hparams.yaml").read_text())
    assert hparams["seed"] == 3 and hparams["model"] == "MLP" and hparams["status"] == "ok"
    assert hparams["optimizer.lr"] == cfg.optimizer.lr
    last = (out / "metrics.csv").read_text().splitlines()
    final = dict(zip(last[0].split(","), last[-1].split(","), strict=True))
    assert float(final["test/acc"]) == record.metrics["test/acc"]
    assert float(final["val/acc_best"]) == record.metrics["val/acc_best"]


def test_a_run_without_any_logger_trains_and_records(make_cfg):
    """logger=none keeps the learning-rate monitor of callbacks=default out: Lightning's stops a run without a
    logger at its first step ("Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger")."""
    cfg = make_cfg("experiment=student_scratch_mlp", "logger=none")
    record, _ = train(cfg)
    assert record.status == "ok" and 0.0 <= record.metrics["test/acc"] <= 1.0
    assert not (Path(cfg.paths.output_dir) / "tensorboard").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on a SQLite store in tmp_path; its URI once it answers."""
    pytest.importorskip("mlflow")
    port = _free_port()
    store = tmp_path / "mlflow"
    store.mkdir()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
           "--default-artifact-root", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]  # fmt: skip
    log = (store / "server.log").open("w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, f"mlflow server exited: {(store / 'server.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mlflow server never answered: {(store / 'server.log').read_text()}"
            time.sleep(1)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
        server.wait(timeout=60)
        log.close()


@pytest.mark.slow
def test_mlflow_run_read_back_from_a_real_tracking_server(tmp_path, mnist_dir, tiny_cli, run_script, mlflow_server):
    from mlflow.tracking import MlflowClient

    run_script("train.py", *tiny_cli(tmp_path, mnist_dir), "experiment=student_scratch_mlp", "seed=3",
               "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={mlflow_server}")  # fmt: skip
    (folder,) = (tmp_path / "outputs" / "student_scratch_mlp" / "runs").iterdir()
    record = RunRecord.read(folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("student_scratch_mlp")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == f"runs/{folder.name}"
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["seed"] == "3" and params["model"] == "MLP" and params["optimizer"] == "AdamW"
    assert params["optimizer.lr"] == str(config["optimizer"]["lr"])
    assert params["data.batch_size"] == str(config["data"]["batch_size"])
    assert params["params.student"] == str(record.params["student"]) and params["status"] == "ok"
    for key in ("test/acc", "test/loss", "val/acc_best"):
        assert run.data.metrics[key] == record.metrics[key], key
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val/acc")]  # the curve, not only the end
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # the server's store, not the default one


@pytest.mark.slow
def test_a_crashed_run_reads_failed_in_the_default_mlflow_store(make_cfg, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg("experiment=student_scratch_mlp", "logger=mlflow", "trainer.max_epochs=2")
    build = kdlab.run.fit.build_callbacks
    monkeypatch.setattr(kdlab.run.fit, "build_callbacks", lambda c: [*build(c), CrashAtEpoch(1)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{cfg.paths.log_dir}/mlflow.db")  # the default: under outputs/
    (run,) = client.search_runs([client.get_experiment_by_name("student_scratch_mlp").experiment_id])
    assert run.info.status == "FAILED" and run.data.params["status"] == "failed"
    assert run.data.metrics["val/acc_best"] == RunRecord.read(Path(cfg.paths.output_dir)).metrics["val/acc_best"]


@pytest.mark.slow
def test_wandb_offline_runs_of_a_sweep_are_written_each_into_its_job_folder(tmp_path, mnist_dir, tiny_cli, run_script):
    """Two jobs in one process: the second gets a W&B run of its own, not the first one's still open."""
    pytest.importorskip("wandb")
    args = ["-m", *tiny_cli(tmp_path, mnist_dir), "experiment=student_scratch_mlp", "seed=1,2", "logger=wandb"]
    run_script("train.py", *args)
    (sweep,) = (tmp_path / "outputs" / "student_scratch_mlp" / "multirun").iterdir()
    for job in ("0", "1"):
        record = json.loads((sweep / job / "metrics.json").read_text())
        (written,) = (sweep / job / "wandb").glob("offline-run-*/run-*.wandb")  # offline: nothing left the machine
        # W&B's own record format has no public reader offline; its strings are stored as they are.
        data = written.read_bytes()
        for text in ("optimizer.lr", "data.batch_size", "params.student", str(record["params"]["student"]),
                     f"multirun/{sweep.name}/{job}", "student_scratch_mlp", "test/acc", "val/acc_best"):  # fmt: skip
            assert text.encode() in data, (job, text)
        assert f"multirun/{sweep.name}/{1 - int(job)}".encode() not in data, job
