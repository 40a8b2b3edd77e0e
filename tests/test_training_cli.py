"""`dhumandiff train` then `dhumandiff eval` from the CLI, and the same script under `accelerate launch`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training_fixtures import random_tiny, small_world

REPO = Path(__file__).resolve().parents[1]


def _run(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=REPO, **kw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    world = small_world(tmp, count=20)
    model = random_tiny()
    init = model.save_pretrained(tmp / "init")
    enc = tmp / "evaluator"
    model.identity_encoder.save_pretrained(enc)
    return tmp, world, init, enc


def test_train_then_eval_from_the_cli(prepared):
    tmp, world, init, enc = prepared
    out = tmp / "run"
    res = _run([sys.executable, "-m", "dhumandiff.cli.main", "train", "--data", str(world), "--out", str(out),
                "--init", str(init), "--steps", "3", "--batch-size", "2", "--checkpoint-every", "2"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "model" / "dhumandiff.json").is_file()
    assert json.loads((out / "train_report.json").read_text())["steps"] == 3
    ev = tmp / "eval"
    res = _run([sys.executable, "-m", "dhumandiff.cli.main", "eval", "--data", str(world), "--out", str(ev),
                "--model", str(out / "model"), "--steps", "2", "--modes", "single", "--limit", "2",
                "--evaluator-path", str(enc)])
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((ev / "report.json").read_text())
    row = report["rows"][0]
    for key in ("identity_similarity", "swap_rate", "attribute_accuracy", "setting_accuracy", "fid_style",
                "unet_passes", "seconds_per_image"):
        assert key in row
    assert -1.0 <= row["identity_similarity"] <= 1.0 and row["unet_passes"] == 4
    assert (ev / "sheet_model-single-2.png").is_file()


def test_same_script_under_accelerate_launch_with_two_processes(prepared):
    tmp, world, init, _ = prepared
    out = tmp / "ddp"
    res = _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "-m", "dhumandiff.cli.main", "train", "--data", str(world), "--out", str(out), "--init", str(init),
                "--steps", "2", "--batch-size", "2", "--checkpoint-every", "2"])
    assert res.returncode == 0, (res.stdout[-1500:], res.stderr[-3000:])
    report = json.loads((out / "train_report.json").read_text())
    assert report["processes"] == 2 and report["steps"] == 2
    assert (out / "checkpoints" / "checkpoint-2" / "model.safetensors").is_file()
