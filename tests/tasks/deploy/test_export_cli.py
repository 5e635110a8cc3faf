"""`python -m tasks.<task> export` end to end, `validate --onnx` against the checkpoint, and the bad inputs.

Each task: a one-step `fit` on the synthetic default makes a checkpoint; `export` writes fp32 and int8
files; `validate --onnx` on the fp32 file gives the checkpoint's metrics (onnxruntime vs PyTorch, through the
task's own metric code), the int8 file validates, `predict --onnx` writes the task's files.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tasks.common.deploy.onnx_export import export_module
from tasks.common.deploy.runtime import OnnxModel, load_onnx_module
from tasks.detection.cli import main as detection_main
from tasks.segmentation.cli import main as segmentation_main
from tests.tasks.deploy._cli_tasks import COMMON, TASKS, cli_args, metrics


@pytest.mark.parametrize("name", sorted(TASKS))
def test_export_validate_predict(name, checkpoints, tmp_path, monkeypatch, capsys):
    main, _, metric, _ = TASKS[name]
    monkeypatch.chdir(tmp_path)
    args = cli_args(name)
    ckpt = str(checkpoints[name])
    main(["export", *args, "--ckpt_path", ckpt, "--output", "out/model.onnx"])
    printed = capsys.readouterr().out
    assert "wrote out/model.onnx" in printed and "preprocessing: uint8 RGB" in printed
    main(["export", *args, "--ckpt_path", ckpt, "--output", "out/model_int8.onnx", "--int8", "--calibration_batches=1"])
    assert "calibrated (minmax) on 1 training batches" in capsys.readouterr().out
    # percentile calibration runs on the network part (detection's NMS part breaks onnxruntime's own)
    main(["export", *args, "--ckpt_path", ckpt, "--output", "out/model_pct.onnx", "--int8", "--calibration_batches=1",
          "--calibration_method", "percentile"])  # fmt: skip
    assert "calibrated (percentile 99.999) on 1 training batches" in capsys.readouterr().out
    assert OnnxModel(tmp_path / "out/model_pct.onnx").metadata["calibration"] == "percentile 99.999"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "model_int8.onnx", "model_pct.onnx"]
    int8 = OnnxModel(tmp_path / "out/model_int8.onnx")
    assert int8.precision == "int8" and int8.task == name and int8.metadata["calibration"] == "minmax"
    assert int8.input_type == "tensor(uint8)" and int8.input_shape[0] == "batch"

    reference = metrics(main(["validate", *args, "--ckpt_path", ckpt]))
    exported = metrics(main(["validate", *args, "--onnx", "out/model.onnx"]))
    assert metric in reference
    for key, value in reference.items():
        if key.endswith("/loss") and key not in exported:  # a graph with NMS has no loss to report
            continue
        assert exported[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    quantized = metrics(main(["validate", *args, "--onnx", "out/model_int8.onnx"]))
    assert metric in quantized

    pred_args = [*args, "--data.predict_output_dir"]
    main(["predict", *pred_args, str(tmp_path / "p_ckpt"), "--ckpt_path", ckpt])
    main(["predict", *pred_args, str(tmp_path / "p_onnx"), "--onnx", "out/model.onnx"])
    files = sorted(p.name for p in (tmp_path / "p_ckpt").iterdir())
    assert files and files == sorted(p.name for p in (tmp_path / "p_onnx").iterdir())


def test_raw_detection_export_validates_like_the_checkpoint(checkpoints, tmp_path, monkeypatch):
    main = TASKS["detection"][0]
    monkeypatch.chdir(tmp_path)
    args = cli_args("detection")
    main(["export", *args, "--ckpt_path", str(checkpoints["detection"]), "--output", "raw.onnx", "--raw"])
    model = OnnxModel("raw.onnx")
    assert model.raw and model.output_names == ["box_regression", "cls_logits", "default_boxes"]
    reference = metrics(main(["validate", *args, "--ckpt_path", str(checkpoints["detection"])]))
    exported = metrics(main(["validate", *args, "--onnx", "raw.onnx"]))
    for key, value in reference.items():
        assert exported[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_checkpoint_of_another_task_is_refused(checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="checkpoint of task 'detection', not 'segmentation'"):
        segmentation_main(["export", *COMMON, "--ckpt_path", str(checkpoints["detection"]), "--output", "m.onnx"])
    assert not list(tmp_path.iterdir())


def test_checkpoint_of_another_architecture_is_refused(checkpoints, tmp_path, monkeypatch):
    main = TASKS["depth"][0]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="do not fit the depth model built for it .*backbone=shufflenet_v2"):
        main(["export", *cli_args("depth"), "--ckpt_path", str(checkpoints["depth"]), "--backbone=shufflenet_v2",
              "--output", "m.onnx"])  # fmt: skip
    assert not (tmp_path / "m.onnx").exists()


def test_bad_calibration_options_from_the_command_line_are_refused_and_nothing_written(
    checkpoints, tmp_path, monkeypatch
):
    main, args = TASKS["depth"][0], [*cli_args("depth"), "--ckpt_path", str(checkpoints["depth"]), "--int8"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="--calibration_method must be one of .*got 'max'"):
        main(["export", *args, "--output", "m.onnx", "--calibration_method", "max"])
    with pytest.raises(ValueError, match=r"--calibration_percentile must be in \(50, 100\], got 101.0"):
        main(["export", *args, "--output", "m.onnx", "--calibration_percentile", "101"])
    with pytest.raises(ValueError, match="--calibration_method percentile is for post-training quantization"):
        main(["export", *args, "--output", "m.onnx", "--qat_steps", "2", "--calibration_method", "percentile"])
    with pytest.raises(ValueError, match="--calibration_method percentile is for --format onnx"):
        main(["export", *args, "--output", "m.tflite", "--format", "tflite", "--calibration_method", "percentile"])
    assert not list(tmp_path.iterdir())


def test_unwritable_output_is_refused_and_nothing_written(checkpoints, tmp_path, monkeypatch):
    main, args = TASKS["depth"][0], [*cli_args("depth"), "--ckpt_path", str(checkpoints["depth"])]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError, match="a_file is a file, not a folder"):
        main(["export", *args, "--output", "a_file/m.onnx"])
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="not writable"):
            main(["export", *args, "--output", str(locked / "m.onnx")])


def _detection(checkpoints):
    from tasks.detection.datamodule import DetectionDataModule
    from tasks.detection.module import DetectionModule

    module = DetectionModule.load_from_checkpoint(checkpoints["detection"], map_location="cpu")
    data = DetectionDataModule(image_size=64, synthetic_train_size=2, synthetic_val_size=2, batch_size=2)
    return module, data


def test_empty_or_mis_sized_calibration_is_refused_and_an_older_file_survives(checkpoints, tmp_path):
    module, data = _detection(checkpoints)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"older model")
    with pytest.raises(ValueError, match="calibration set .* is empty"):
        export_module(module, data, out, int8=True, calibration=[])
    wrong = [np.zeros((2, 3, 32, 32), np.uint8)]
    with pytest.raises(ValueError, match=r"shape \[2, 3, 32, 32\], the model expects \['batch', 3, 64, 64\]"):
        export_module(module, data, out, int8=True, calibration=wrong)
    with pytest.raises(ValueError, match="dtype float32, the model expects uint8"):
        export_module(module, data, out, int8=True, calibration=[np.zeros((2, 3, 64, 64), np.float32)])
    with pytest.raises(ValueError, match=r"--calibration_method must be one of \['minmax', 'percentile'\]"):
        export_module(module, data, out, int8=True, calibration_method="kl")
    assert out.read_bytes() == b"older model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_exported_model_refuses_inputs_of_another_size_or_dtype(checkpoints, tmp_path, monkeypatch):
    module, data = _detection(checkpoints)
    export_module(module, data, tmp_path / "m.onnx")
    model = OnnxModel(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"expects 'image' uint8 \['batch', 3, 64, 64\].*got dtype float32"):
        model(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match=r"got shape \[1, 3, 96, 96\].*fixed at export"):
        model(np.zeros((1, 3, 96, 96), np.uint8))
    assert model(np.zeros((2, 3, 64, 64), np.uint8))["boxes"].shape == (2, 100, 4)
    # validate on data of another image size: the same error, before any metric is computed
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="got shape .*96, 96"):
        detection_main(["validate", *COMMON, "--data.image_size=96", "--onnx", "m.onnx", "--trainer.logger=false"])
    with pytest.raises(ValueError, match="is a detection model, not a depth one"):
        load_onnx_module(tmp_path / "m.onnx", "depth")
