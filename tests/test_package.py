"""The built wheel, installed outside the repo, runs: configs ship as package data, `kdlab-train` works."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from kdlab.record import RunRecord

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_the_wheel_runs_kdlab_train_from_an_empty_folder(tmp_path, mnist_dir):
    # Built from a copy of the tracked tree: setuptools leaves build/ beside the sources, and a stale
    # build/lib would ship files the sources no longer have.
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    source = tmp_path / "source"
    for name in filter(None, files.decode().split("\0")):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_symlink():
            (source / name).symlink_to(os.readlink(REPO / name))
        elif (REPO / name).is_file():
            shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run([*build, str(source)], check=True, capture_output=True)
    (wheel,) = wheels.glob("kdlab-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # The dependencies come from this environment (CI installs them from the registries once); its
    # editable kdlab does not, since a path listed in a .pth file is added without its own .pth files.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)]
    subprocess.run(pip, check=True, capture_output=True)

    empty = tmp_path / "somewhere_else"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KDLAB_ROOT")}
    done = subprocess.run(
        [
            str(venv / "bin" / "kdlab-train"),
            "experiment=distill_mlp",
            "debug=fast",
            f"data.data_dir={mnist_dir}",
            "data.verify=false",
            "data.pypi_package=null",
            "data.mirrors=[]",
            "data.val_size=200",
        ],
        cwd=empty,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (folder,) = (empty / "outputs" / "distill_mlp" / "runs").iterdir()
    record = RunRecord.read(folder)
    assert record.status == "smoke" and record.is_distillation
    imported = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import kdlab; print(kdlab.__file__)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(site) in imported.stdout  # the wheel's kdlab ran, not the repo's
