"""deformable_detr.export.artefacts and tools/deploy/export_model.py: every format, every
variant, parity with the eager model at image sizes other than the export size
(each format exported in a fresh process), and the tool's errors."""

import json
import logging
import sys

import cv2
import numpy as np
import pytest
import torch

from deformable_detr.config.build import build_model as build_configured_model
from deformable_detr.config.build import input_format, load_config
from deformable_detr.export import weight_packing
from deformable_detr.export.artefacts import ImageToDetections, export, load_artefact

from ..scripts import ROOT, load_script, run_command
from .export_parity import EXPORT_SIZE
from .tiny_model import VARIANTS, build_model

SYNTHETIC = ROOT / "configs" / "synthetic" / "deformable_detr_tiny"
ALL_VARIANTS = list(VARIANTS)
# (format, variants, options) exported in one fresh process each; an AOTInductor
# compile takes 1 to 1.5 minutes on 2 cores, so each variant gets its own process,
# compile_inference ("compile", the deployment benchmark's torch.compile path) runs
# on the variant with the most modules; the two_stage package and a torchscript and
# an ONNX model run their encoder FFN in row blocks (a free token count in each)
ROW_BLOCKS = ["--encoder-ffn-row-blocks=3"]
FORMAT_RUNS = (
    [(fmt, ALL_VARIANTS, []) for fmt in ("torchscript", "onnx", "exported-program")]
    + [(fmt, ["multi_scale"], ROW_BLOCKS) for fmt in ("torchscript", "onnx")]
    + [("aoti", [variant], []) for variant in ALL_VARIANTS if variant != "two_stage"]
    + [("aoti", ["two_stage"], ROW_BLOCKS)]
    + [("compile", ["two_stage"], [])]
)
TOLERANCE = 1e-4  # float32, boxes in pixels and scores


export_model = load_script("tools/deploy/export_model.py")


# ---------------------------------------------------------------- parity, fresh process per format
@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt, variants, options",
    FORMAT_RUNS,
    ids=[
        f"{fmt}-{'-'.join(v + [o.strip('-') for o in options])}" for fmt, v, options in FORMAT_RUNS
    ],
)
def test_artefacts_match_eager_at_other_sizes(fmt, variants, options):
    stdout = run_command(
        [sys.executable, "-m", "tests.deformable_detr.export_parity", fmt, *variants, *options]
    )
    results = json.loads(stdout.strip().splitlines()[-1])
    assert sorted(results) == sorted(variants)
    for variant, runs in results.items():
        for run in runs:
            where = f"{fmt} {variant} at {run['size']}"
            assert run["count"] == run["eager_count"] > 0, where
            assert run["classes_equal"], where
            assert run["boxes"] <= TOLERANCE and run["scores"] <= TOLERANCE, f"{where}: {run}"


@pytest.mark.slow
def test_fixed_size_package_matches_eager_and_refuses_other_sizes():
    stdout = run_command(
        [
            sys.executable,
            "-m",
            "tests.deformable_detr.export_parity",
            "aoti",
            "multi_scale",
            "--fixed-size",
        ]
    )
    matched, other = json.loads(stdout.strip().splitlines()[-1])["multi_scale"]
    assert matched["size"] == list(EXPORT_SIZE)
    assert matched["count"] == matched["eager_count"] > 0 and matched["classes_equal"]
    assert matched["boxes"] <= TOLERANCE and matched["scores"] <= TOLERANCE, matched
    height, width = EXPORT_SIZE
    assert other["refused"] is not None, "a fixed-size package ran an image of another size"
    got = (3, *other["size"])
    expected = f"was exported for images of {height}x{width} (3, H, W) only, got {got}"
    assert expected in other["refused"], other["refused"]


@pytest.mark.slow
def test_free_size_package_indexes_without_the_token_count():
    """In a bfloat16 package exported with a free image size, no kernel takes an index
    modulo the token count (an expression of the image's height and width) and none
    computes the softmax's exponentials in scalar code: MSDeformAttn's softmax on a
    2-D view did the first (the package 1.13x slower at 800x1333), on a 4-D view the
    second (docs/benchmarks.md)."""
    stdout = run_command([sys.executable, "-m", "tests.deformable_detr.free_size_kernels"])
    kernels = json.loads(stdout.strip().splitlines()[-1])
    assert kernels["kernels"] > 10, kernels
    assert kernels["token_count_modulo"] == [], kernels
    assert kernels["scalar_exp"] == [], kernels


@pytest.mark.slow
def test_free_size_int8_package_packs_each_weight_for_the_traced_size():
    """With a free image size, torchao's passes pack int8 weights for no input shape;
    deformable_detr.export.weight_packing gives each the traced input's. Fails when an
    upgrade of torch or torchao renames the ops or the freezing step it hooks into
    (nothing is packed for a shape then)."""
    from .weight_packing_check import EXAMPLE_SIZE

    stdout = run_command([sys.executable, "-m", "tests.deformable_detr.weight_packing_check"])
    results = json.loads(stdout.strip().splitlines()[-1])
    height, width = EXAMPLE_SIZE
    stem, down = [1, 3, height, width], [1, 16, height - 2, width - 2]
    tokens = ((height - 2 - 3) // 2 + 1) * ((width - 2 - 3) // 2 + 1)
    convolutions = [shape for kind, shape in results["packed"] if kind == "convolution"]
    (linear,) = [shape for kind, shape in results["packed"] if kind == "linear"]
    assert convolutions == [stem, down], results
    assert linear is not None and np.prod(linear) == tokens * 32, results
    # a layout only: at another size the package computes what the int8 graph does
    assert results["difference"] <= 1e-3 * results["scale"], results


@pytest.mark.slow
def test_compiled_float_linear_layers_run_on_onednn():
    """Inductor packs a fixed-size graph's float32 linear weights for MKL's product,
    far slower than oneDNN's on AMD CPUs (docs/benchmarks.md); linear_layers_on_onednn
    gives them to oneDNN, as packages have them, with the same results."""
    stdout = run_command([sys.executable, "-m", "tests.deformable_detr.linear_packing_check"])
    results = json.loads(stdout.strip().splitlines()[-1])
    assert results["ops"], results
    assert not any(op.startswith("mkl.") for op in results["ops"]), results
    assert "mkldnn._linear_pointwise.default" in results["ops"], results
    if torch._C.has_mkl:
        assert results["replaced"] == 2, results  # both layers were MKL's
    assert results["difference"] <= 1e-5 * results["scale"], results


def test_unpadded_packing_shape_keeps_the_traced_shape_unless_its_layout_is_padded():
    traced = [1, 512, 25, 42]
    larger = [[1, 512, 50, 84], [1, 512, 100, 168]]

    def sizes(*nbytes):
        return dict(zip(map(tuple, [traced] + larger), nbytes)).__getitem__

    def choose(*nbytes):
        return weight_packing.unpadded_packing_shape(traced, lambda s: sizes(*nbytes)(tuple(s)))

    assert choose(100, 100, 100) == traced
    assert choose(104, 100, 100) == larger[0]
    assert choose(104, 104, 100) == larger[1]
    assert choose(100, 96, 100) == larger[0]  # the fewest bytes, whichever shape


def test_int8_convolution_weight_is_not_reordered_at_each_call_from_a_padded_layout():
    """oneDNN packs an int8 convolution weight for a float32 output; the fused
    convolution writes uint8. For R50's last 512 -> 2048 convolution at 800x1333 on
    AVX-512 VNNI CPUs the packing holds padding (48 output channels a block) and the
    convolution reorders the weight at every call (30 ms, 3 calls per image);
    unpadded_packing_shape picks a packing it reads as it is. Elsewhere both packings
    may already agree; a padded source must never be reordered either way."""
    from .conv_weight_reorders import reorders_per_packing

    results = reorders_per_packing()
    assert set(results) == {"traced", "chosen"}, results
    chosen, traced = results["chosen"], results["traced"]
    assert not chosen["padded"] or traced["padded"], results
    assert not any(":p:" in reorder.split(" -> ")[0] for reorder in chosen["reorders"]), results
    if any(":p:" in reorder.split(" -> ")[0] for reorder in traced["reorders"]):
        assert chosen["reorders"] == [], results


def test_weight_packing_gives_inductor_back_and_warns_without_its_freezing_step(
    monkeypatch, caplog
):
    from torch._inductor import freezing

    original = freezing.freezing_passes
    with pytest.raises(RuntimeError, match="inside"):
        with weight_packing.packed_for_example_size():
            assert freezing.freezing_passes is not original
            raise RuntimeError("inside")
    assert freezing.freezing_passes is original

    # a torch whose Inductor moved the step: export still works, and says what it lacks
    monkeypatch.delattr(freezing, "freezing_passes")
    weight_packing._warn_without_freezing_passes.cache_clear()
    logging.getLogger(weight_packing.__name__).addHandler(caplog.handler)
    try:
        with weight_packing.packed_for_example_size():
            pass
    finally:
        logging.getLogger(weight_packing.__name__).removeHandler(caplog.handler)
        weight_packing._warn_without_freezing_passes.cache_clear()
    assert "no freezing.freezing_passes" in caplog.text


def test_fixed_size_is_refused_outside_aoti(tmp_path):
    model = build_model("multi_scale").eval()
    with pytest.raises(
        ValueError,
        match="a fixed image size is for aoti packages.*onnx artefacts take any image size",
    ):
        export(model, torch.rand(3, 96, 128) * 255, "onnx", str(tmp_path), fixed_size=True)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- the wrapper
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_image_to_detections_is_the_eager_inference(variant):
    torch.manual_seed(0)
    model = build_model(variant).eval()
    image = torch.rand(3, 90, 120) * 255
    with torch.no_grad():
        eager = model([{"image": image}])[0]["instances"]
        boxes, scores, classes = ImageToDetections(model)(image)
    assert boxes.shape == (model.test_topk, 4) and scores.shape == classes.shape == (
        model.test_topk,
    )
    kept = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    torch.testing.assert_close(boxes[kept], eager.pred_boxes.tensor, rtol=0, atol=0)
    torch.testing.assert_close(scores[kept], eager.scores, rtol=0, atol=0)
    torch.testing.assert_close(classes[kept], eager.pred_classes, rtol=0, atol=0)
    assert ((boxes >= 0) & (boxes <= torch.tensor([120, 90, 120, 90]))).all()


# ----------------------------------------------------------------------------- the tool
@pytest.fixture(scope="module")
def synthetic_checkpoint(tmp_path_factory):
    """A randomly initialized model of the synthetic config, saved as a checkpoint."""
    torch.manual_seed(0)
    cfg = load_config(str(SYNTHETIC.with_suffix(".yaml")))
    model = build_configured_model(cfg, weights=None, device="cpu")
    path = tmp_path_factory.mktemp("checkpoint") / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


def _load_model(config_file, opts):
    """The configured model with its weights, as export_model builds it, and its input format."""
    cfg = load_config(config_file, opts)
    return build_configured_model(cfg, device="cpu"), input_format(cfg)


def test_build_model_takes_the_checkpoint_from_either_config(synthetic_checkpoint):
    expected = torch.load(synthetic_checkpoint)["model"]
    lazy, lazy_format = _load_model(
        str(SYNTHETIC.with_suffix(".py")), [f"train.init_checkpoint={synthetic_checkpoint}"]
    )
    yacs, yacs_format = _load_model(
        str(SYNTHETIC.with_suffix(".yaml")), [f"MODEL.WEIGHTS={synthetic_checkpoint}"]
    )
    assert lazy_format == yacs_format == "RGB"
    for model in (lazy, yacs):
        assert not model.training
        state = model.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_tool_exports_and_prints_how_to_load(synthetic_checkpoint, tmp_path):
    stdout = run_command(
        [
            sys.executable,
            "tools/deploy/export_model.py",
            "--config-file",
            str(SYNTHETIC.with_suffix(".py")),
            "--format",
            "torchscript",
            "--output",
            str(tmp_path / "out"),
            f"train.init_checkpoint={synthetic_checkpoint}",
        ]
    )
    artefact = tmp_path / "out" / "model.ts"
    assert f"wrote {artefact}" in stdout and f"torch.jit.load('{artefact}')" in stdout
    model, _ = _load_model(
        str(SYNTHETIC.with_suffix(".yaml")), [f"MODEL.WEIGHTS={synthetic_checkpoint}"]
    )
    exported = load_artefact(str(artefact), "torchscript")
    for size in [(200, 150), (333, 260)]:  # the generated sample image is 480x640
        image = torch.rand(3, *size) * 255
        with torch.no_grad():
            for got, expected in zip(exported(image), ImageToDetections(model)(image)):
                torch.testing.assert_close(got, expected, rtol=0, atol=TOLERANCE)


def _tool_error(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        export_model.main(["--config-file", str(SYNTHETIC.with_suffix(".py")), *args])
    message = (
        str(exit_info.value.code)
        if exit_info.value.code not in (None, 2)
        else capsys.readouterr().err
    )
    lines = message.strip().splitlines()
    return lines[-1]


def test_tool_errors_name_the_problem(capsys, tmp_path, synthetic_checkpoint):
    out = ["--output", str(tmp_path / "out")]
    assert "invalid choice: 'tensorrt'" in _tool_error(capsys, "--format", "tensorrt", *out)

    blocked = tmp_path / "file"
    blocked.write_text("")
    error = _tool_error(capsys, "--format", "onnx", "--output", str(blocked / "out"))
    assert error.startswith(f"export_model: output directory '{blocked / 'out'}' cannot be created")

    error = _tool_error(
        capsys, "--format", "onnx", *out, f"train.init_checkpoint={tmp_path / 'missing.pth'}"
    )
    assert (
        error == f"export_model: {tmp_path / 'missing.pth'}: no such weights file; check the path"
    )

    single_scale = tmp_path / "single_scale.pth"
    torch.save({"model": build_model("single_scale").state_dict()}, single_scale)
    error = _tool_error(capsys, "--format", "onnx", *out, f"train.init_checkpoint={single_scale}")
    assert error.startswith(f"export_model: {single_scale}: the weights do not fit the model")
    assert not (tmp_path / "out" / "model.onnx").exists()

    sample = tmp_path / "sample.png"
    cv2.imwrite(str(sample), np.zeros((96, 128, 3), np.uint8))
    error = _tool_error(
        capsys,
        "--format",
        "onnx",
        "--fixed-size",
        "--sample-image",
        str(sample),
        *out,
        f"train.init_checkpoint={synthetic_checkpoint}",
    )
    assert error.startswith("export_model: a fixed image size is for aoti packages")
    assert not (tmp_path / "out" / "model.onnx").exists()

    error = _tool_error(capsys, "--format", "aoti", "--fixed-size", *out)
    assert error.startswith("export_model: --fixed-size compiles the package for the size of")
    assert not (tmp_path / "out" / "model_aoti.pt2").exists()
