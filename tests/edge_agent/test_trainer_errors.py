"""Bad artifacts, bad inputs, a broken runtime: each gets a message that says what to do."""
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from core.manifest import ArtifactError, load_manifest
from edge_agent.trainer import load_trainer
from tests.conftest import REPO_ROOT


@pytest.fixture
def copy_of(artifacts, tmp_path):
    target = tmp_path / "art"
    shutil.copytree(artifacts, target)
    return target


def test_missing_directory(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist.*jitnet export"):
        load_trainer(tmp_path / "nope")


def test_missing_manifest(copy_of):
    (copy_of / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json is missing.*jitnet export"):
        load_trainer(copy_of)


def test_corrupt_manifest(copy_of):
    (copy_of / "manifest.json").write_text('{"class_names": ["backgr')
    with pytest.raises(ArtifactError, match="corrupt.*jitnet export"):
        load_manifest(copy_of)


def test_manifest_version_mismatch(copy_of):
    raw = json.loads((copy_of / "manifest.json").read_text())
    raw["format_version"] = 99
    (copy_of / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="format_version 99.*reads version 1"):
        load_trainer(copy_of)


def test_missing_model_file(copy_of):
    (copy_of / "optimizer_model.onnx").unlink()
    with pytest.raises(ArtifactError, match="lacks.*optimizer_model.onnx"):
        load_trainer(copy_of)


def test_corrupt_model_file(copy_of):
    (copy_of / "training_model.onnx").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ArtifactError, match="(?s)could not load.*jitnet export"):
        load_trainer(copy_of)


@pytest.fixture(scope="module")
def trainer(artifacts):
    return load_trainer(artifacts, backend="ort")


@pytest.mark.parametrize(
    "shape, dtype, message",
    [
        ((64, 64, 4), np.uint8, r"shape \(H, W, 3\)"),
        ((64, 64), np.uint8, r"shape \(H, W, 3\)"),
        ((64, 64, 1), np.uint8, r"shape \(H, W, 3\)"),
        ((60, 64, 3), np.uint8, "multiples of 32.*pad or crop"),
        ((64, 100, 3), np.uint8, "multiples of 32.*pad or crop"),
        ((64, 64, 3), np.float32, "uint8"),
    ],
)
def test_bad_images_are_refused_with_a_hint(trainer, shape, dtype, message):
    image = np.zeros(shape, dtype)
    with pytest.raises(ValueError, match=message):
        trainer.predict(image)
    if len(shape) == 3 and shape[2] == 3:
        with pytest.raises(ValueError, match=message):
            trainer.train_step(image, np.zeros(shape[:2], np.int64), np.ones(shape[:2], np.float32))


def test_bad_targets_are_refused_and_the_state_is_untouched(trainer):
    image = np.zeros((64, 64, 3), np.uint8)
    before = trainer.predict_logits(image)
    steps = trainer.steps
    with pytest.raises(ValueError, match="labels must be in"):
        trainer.train_step(image, np.full((64, 64), 7), np.ones((64, 64), np.float32))
    with pytest.raises(ValueError, match="labels have shape"):
        trainer.train_step(image, np.zeros((32, 64), np.int64), np.ones((64, 64), np.float32))
    with pytest.raises(ValueError, match="finite and >= 0"):
        trainer.train_step(image, np.zeros((64, 64), np.int64), np.full((64, 64), np.nan, np.float32))
    assert trainer.steps == steps
    assert np.array_equal(trainer.predict_logits(image), before)


def _run_isolated(tmp_path, setup: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        sys.path.insert(1, {str(REPO_ROOT)!r})
        {setup}
        from edge_agent.runtime import training_api
        training_api()
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_two_onnxruntime_packages_in_one_environment_are_detected(tmp_path):
    dist = tmp_path / "onnxruntime_gpu-1.20.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.20.0\n")
    proc = _run_isolated(tmp_path, "")
    assert proc.returncode != 0
    assert "several onnxruntime packages are installed" in proc.stderr
    assert "pip uninstall" in proc.stderr


def test_clobbered_onnxruntime_folder_is_detected(tmp_path):
    """What `pip install onnxruntime` over the training build leaves: no training API."""
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "__init__.py").write_text("")
    proc = _run_isolated(tmp_path, "")
    assert proc.returncode != 0
    assert "has no training API" in proc.stderr and "pip uninstall" in proc.stderr


def test_importing_the_edge_agent_and_training_never_imports_torch(artifacts):
    code = textwrap.dedent(
        f"""
        import sys, numpy as np
        sys.path.insert(0, {str(REPO_ROOT)!r})
        import edge_agent
        from edge_agent.trainer import load_trainer
        t = load_trainer({str(artifacts)!r})
        img = np.zeros((64, 64, 3), np.uint8)
        t.train_step(img, np.zeros((64, 64), np.int64), np.ones((64, 64), np.float32))
        t.predict(img)
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
