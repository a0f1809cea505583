"""tools/plot_metrics.py, tools/analyze_model.py, the FLOP handles of
deformable_detr.export.flops, and
demo/demo.py on a randomly initialized synthetic-config checkpoint (yacs path in
process, LazyConfig path in a subprocess with its own dataset root)."""

import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import d2ext
from deformable_detr.export.flops import MSDA_OP, flop_count_handles, msda_flops

from ..scripts import ROOT, load_script
from .coco_folder import write_coco_folder

plot_metrics = load_script("tools/plot_metrics.py")
analyze_model = load_script("tools/analyze_model.py")
demo = load_script("demo/demo.py")


# ----------------------------------------------------------------------------- plot_metrics
def test_plot_metrics_writes_png(tmp_path):
    lines = [
        json.dumps(
            {
                "iteration": i,
                "total_loss": 10.0 / (i + 1),
                "loss_ce": 1.0 / (i + 1),
                "loss_bbox": 0.5,
                "loss_giou": 0.7,
                "lr": 1e-4 if i < 15 else 1e-5,
            }
        )
        for i in range(0, 20, 2)
    ]
    lines.append(
        json.dumps({"iteration": 20, "bbox/AP": 12.5, "bbox/AP50": 30.0, "bbox/AP75": float("nan")})
    )
    lines.append('{"iteration": 21, "total_lo')  # cut by an interrupted run
    metrics = tmp_path / "metrics.json"
    metrics.write_text("\n".join(lines) + "\n")
    output = tmp_path / "plots" / "curves.png"
    plot_metrics.main(["--metrics", str(metrics), "--output", str(output), "--smooth", "3"])
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(output))
    assert image.shape[1] > 3 * image.shape[0]  # four panels side by side


def test_plot_metrics_helpers(tmp_path):
    assert plot_metrics.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    records = [{"iteration": 2, "x": 1.0}, {"iteration": 1, "x": float("nan")}, {"iteration": 3}]
    assert plot_metrics.series(sorted(records, key=lambda r: r["iteration"]), "x") == ([2], [1.0])
    empty = tmp_path / "metrics.json"
    empty.write_text("")
    with pytest.raises(SystemExit, match="no metrics"):
        plot_metrics.main(["--metrics", str(empty), "--output", str(tmp_path / "x.png")])


# ----------------------------------------------------------------------------- FLOPs
class _MSDA(torch.nn.Module):
    def forward(self, value, spatial_shapes, level_start_index, locations, weights):
        return d2ext.ms_deform_attn(
            value, spatial_shapes, level_start_index, locations, weights, backend="cpp"
        )


# ----------------------------------------------------------------------------- analyze_model
def test_analyze_model_takes_the_class_count_from_custom_data(tmp_path, capsys):
    """A custom-data config leaves model.num_classes to the data: analyze_model builds
    the model with the annotation file's categories, or says what is missing."""
    train_json, train_images = write_coco_folder(tmp_path, "train", 2, seed=0)
    config = str(ROOT / "configs" / "custom" / "deformable_detr_tiny_custom.py")
    data = [
        f"dataloader.train.dataset.json_file={train_json}",
        f"dataloader.train.dataset.image_root={train_images}",
        f"dataloader.test.dataset.json_file={train_json}",
        f"dataloader.test.dataset.image_root={train_images}",
    ]
    analyze_model.main(["--config-file", config, "--height", "96", "--width", "96", *data])
    out = capsys.readouterr().out
    assert "FLOPs:" in out and "of which MSDA" in out
    total = int(out.split("parameters: ")[1].split(" trainable")[0].replace(",", ""))
    model = analyze_model.build_model(analyze_model.load_config(config, data), weights=None)
    assert sum(p.numel() for p in model.parameters()) == total
    classes = json.loads(train_json.read_text())["categories"]
    assert model.class_embed[0].out_features == len(classes)
    with pytest.raises(SystemExit, match="model.num_classes is not set"):
        analyze_model.main(["--config-file", config, "--height", "96", "--width", "96"])


def test_msda_flop_handle_counts_traced_op():
    from fvcore.nn import FlopCountAnalysis

    N, Lq, M, D, P = 2, 5, 3, 4, 2
    shapes = [(6, 5), (3, 3)]
    spatial_shapes = torch.tensor(shapes)
    level_start_index = torch.tensor([0, 30])
    inputs = (
        torch.rand(N, 39, M, D),
        spatial_shapes,
        level_start_index,
        torch.rand(N, Lq, M, len(shapes), P, 2),
        torch.rand(N, Lq, M, len(shapes), P).softmax(-1),
    )
    analysis = FlopCountAnalysis(_MSDA(), inputs).set_op_handle(**flop_count_handles())
    expected = N * Lq * M * len(shapes) * P * D * 5
    assert msda_flops((N, 39, M, D), (N, Lq, M, len(shapes), P)) == expected == 2400
    assert analysis.by_operator() == {"ms_deform_attn": expected}
    assert MSDA_OP not in analysis.unsupported_ops()


def test_sdpa_flop_handle():
    from fvcore.nn import FlopCountAnalysis

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.rand(2, 4, 7, 8), torch.rand(2, 4, 9, 8), torch.rand(2, 4, 9, 6)
    analysis = FlopCountAnalysis(Attention(), (q, k, v)).set_op_handle(**flop_count_handles())
    assert analysis.total() == 2 * 4 * 7 * 9 * (8 + 6)


# ----------------------------------------------------------------------------- demo
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialized model of configs/synthetic/deformable_detr_tiny.yaml
    (the same model as the .py config), saved as a checkpoint."""
    from detectron2.modeling import build_model

    from deformable_detr import load_yacs_config

    cfg = load_yacs_config(
        str(ROOT / "configs" / "synthetic" / "deformable_detr_tiny.yaml"), ["MODEL.DEVICE", "cpu"]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("checkpoint") / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.jpg": (96, 128), "b.png": (120, 80)}.items():
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_demo_yaml(tiny_checkpoint, images, tmp_path):
    output = tmp_path / "out"
    demo.main(
        [
            "--config-file",
            str(ROOT / "configs" / "synthetic" / "deformable_detr_tiny.yaml"),
            "--input",
            str(images),
            "--output",
            str(output),
            "--device",
            "cpu",
            # the allocator setting is process-wide: not in the test process
            "--no-reuse-freed-memory",
            "--confidence-threshold",
            "0",
            "--opts",
            "MODEL.WEIGHTS",
            str(tiny_checkpoint),
        ]
    )
    assert sorted(os.listdir(output)) == ["a.jpg", "b.png"]
    assert cv2.imread(str(output / "a.jpg")).shape == (96, 128, 3)
    original = cv2.imread(str(images / "b.png"))
    drawn = cv2.imread(str(output / "b.png"))
    assert drawn.shape == original.shape and not np.array_equal(drawn, original)  # boxes drawn


@pytest.mark.slow
def test_demo_lazyconfig(tiny_checkpoint, images, tmp_path):
    output = tmp_path / "out"
    env = dict(os.environ, D2EXT_DATASETS=str(tmp_path / "datasets"))
    command = [
        sys.executable,
        str(ROOT / "demo" / "demo.py"),
        "--config-file",
        str(ROOT / "configs" / "synthetic" / "deformable_detr_tiny.py"),
        "--input",
        str(images / "*.jpg"),
        "--output",
        str(output),
        "--device",
        "cpu",
        "--scale",
        "2",
        "--opts",
        f"train.init_checkpoint={tiny_checkpoint}",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert os.listdir(output) == ["a.jpg"]
    assert cv2.imread(str(output / "a.jpg")).shape == (192, 256, 3)


def test_demo_runs_an_exported_artefact_as_the_model(tiny_checkpoint, images, tmp_path):
    from deformable_detr.config.build import build_model, load_config
    from deformable_detr.export.artefacts import export

    config = str(ROOT / "configs" / "synthetic" / "deformable_detr_tiny.yaml")
    model = build_model(load_config(config, [f"MODEL.WEIGHTS={tiny_checkpoint}"]), device="cpu")
    path, _ = export(model, torch.rand(3, 96, 128) * 255, "torchscript", str(tmp_path))
    arguments = ["--config-file", config, "--input", str(images), "--output", str(tmp_path)]
    arguments += ["--device", "cpu", "--opts", "MODEL.WEIGHTS", str(tiny_checkpoint)]
    eager, _ = demo.setup(demo.parse_args(arguments))
    exported, metadata = demo.setup(demo.parse_args(["--artefact", path, *arguments]))
    assert metadata.thing_classes == ["circle", "square", "triangle"]
    image = cv2.imread(str(images / "b.png"))  # 120x80: resized as the config says
    expected, got = eager(image)["instances"], exported(image)["instances"]
    assert got.image_size == expected.image_size == (120, 80)
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-3, rtol=0)
    torch.testing.assert_close(got.scores, expected.scores, atol=1e-4, rtol=0)
    with pytest.raises(SystemExit, match="cannot tell the format of artefact"):
        demo.setup(demo.parse_args(["--artefact", str(tiny_checkpoint), *arguments]))


def test_demo_stops_at_an_image_a_fixed_size_package_refuses(
    tiny_checkpoint, images, tmp_path, monkeypatch
):
    from deformable_detr.export.artefacts import FixedSizePackage

    package = tmp_path / "model_aoti.pt2"
    package.write_bytes(b"")
    calls = []
    monkeypatch.setattr(
        demo, "load_artefact", lambda path, fmt: FixedSizePackage(calls.append, (50, 50), path)
    )
    config = str(ROOT / "configs" / "synthetic" / "deformable_detr_tiny.yaml")
    with pytest.raises(SystemExit) as stop:
        demo.main(
            ["--config-file", config, "--input", str(images), "--output", str(tmp_path / "out")]
            + ["--artefact", str(package), "--device", "cpu", "--no-reuse-freed-memory"]
            + ["--opts", "MODEL.WEIGHTS", str(tiny_checkpoint)]
        )
    message = str(stop.value.code)
    assert message.startswith("error: ") and ", as the config resizes it: " in message
    assert f"{package} was exported for images of 50x50 (3, H, W) only, got (3, " in message
    assert calls == []


def test_demo_no_input(tmp_path):
    with pytest.raises(SystemExit, match="no image matches"):
        demo.main(
            [
                "--config-file",
                "unused.yaml",
                "--input",
                str(tmp_path / "*.jpg"),
                "--output",
                str(tmp_path),
            ]
        )


# ----------------------------------------------------------------------------- profile_inference
profile_inference = load_script("tools/profile_inference.py")


def test_profile_inference_groups_events_by_kind_of_work():
    """The names the profiler gives our compiled inference's work, frozen or not, in
    bfloat16 and int8 (oneDNN's quantized kernels), compiled or in an aoti package."""
    expected = {
        "d2ext_C::ms_deform_attn_forward": "MSDA op",
        "d2ext::ms_deform_attn": "MSDA op",
        "mkldnn::_linear_pointwise": "matrix products",
        "mkl::_mkl_linear": "matrix products",
        "aten::addmm": "matrix products",
        "aten::bmm": "matrix products",
        "onednn::qlinear_pointwise": "matrix products",
        "aoti_torch_cpu__qlinear_pointwise_binary_tensor": "matrix products",
        "mkldnn::_convolution_pointwise_": "convolutions",
        "aten::mkldnn_convolution": "convolutions",
        "onednn::qconv_pointwise": "convolutions",
        "onednn::qconv2d_pointwise": "convolutions",
        "aten::_scaled_dot_product_flash_attention_for_cpu": "attention (SDPA)",
        "aten::copy_": "copies",
        "aten::_to_copy": "copies",
        "graph_0_cpp_fused__to_copy_add_mul_0": "Inductor-generated code",
        "cpp_fused_native_layer_norm_3": "Inductor-generated code",
        "## Call CompiledFxGraph fab12 ##": "Inductor-generated code",
        "aten::topk": "other",
        "aten::empty": "other",
    }
    assert {name: profile_inference.kind_of(name) for name in expected} == expected


class _ProfilerEvent:
    def __init__(self, key, self_us, count):
        self.key, self.self_cpu_time_total, self.count = key, self_us, count


def test_profile_inference_totals_are_per_call():
    events = [
        _ProfilerEvent("aten::addmm", 6000.0, 4),
        _ProfilerEvent("mkldnn::_linear_pointwise", 2000.0, 2),
        _ProfilerEvent("cpp_fused_add_0", 1000.0, 2),
    ]
    totals = profile_inference.by_kind(events, calls=2)
    assert totals == {"matrix products": [4.0, 3], "Inductor-generated code": [0.5, 1]}


def test_profile_inference_lists_kernels_and_operators_apart(capsys):
    events = [
        _ProfilerEvent("graph_0_cpp_fused_add_0", 1000.0, 2),
        _ProfilerEvent("mkldnn::_linear_pointwise", 9000.0, 4),
        _ProfilerEvent("graph_0_cpp_fused_softmax_1", 3000.0, 2),
        _ProfilerEvent("aten::topk", 500.0, 2),
    ]
    profile_inference.print_slowest(events, calls=2, top=1, generated=True)
    profile_inference.print_slowest(events, calls=2, top=5, generated=False)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert rows == [
        "| `graph_0_cpp_fused_softmax_1` | 1.5 | 1 |",
        "| `mkldnn::_linear_pointwise` | 4.5 | 2 |",
        "| `aten::topk` | 0.2 | 1 |",
    ]


def test_profile_inference_reads_the_reorders_onednn_runs(capsys):
    """oneDNN's verbose output of one call, read from the file descriptor it prints
    to: an eager float convolution on contiguous (not blocked) tensors reorders its
    weight into oneDNN's layout (at this size ATen hands the convolution to oneDNN)."""
    image = torch.rand(1, 64, 64, 64)
    weight = torch.rand(64, 64, 3, 3)
    reorders = profile_inference.onednn_reorders(lambda: torch.nn.functional.conv2d(image, weight))
    assert reorders, "no reorder read"
    assert any(dims == "64x64x3x3" for _, dims in reorders), reorders
    for (layouts, _), (count, ms) in reorders.items():
        assert " -> " in layouts and count >= 1 and ms >= 0, reorders
    print("after")  # stdout is Python's own again
    profile_inference.print_reorders(reorders)
    out = capsys.readouterr().out
    assert out.startswith("after\n| oneDNN reorder in one call |"), out
    assert "onednn_verbose" not in out


@pytest.mark.slow
def test_profile_inference_profiles_the_int8_graph():
    """--precision int8 profiles the PT2E graph compiled to oneDNN's int8 kernels (in a
    fresh process): its quantized convolutions and linear layers count as convolutions
    and matrix products, not as "other"; the header counts the page faults, here with
    malloc keeping freed memory. One encoder and one decoder layer (--opts) halve the
    compile; the backbone stays R-50."""
    one_layer_each = [
        "model.transformer.num_encoder_layers=1",
        "model.transformer.num_decoder_layers=1",
    ]
    result = subprocess.run(
        [sys.executable, "tools/profile_inference.py", "--precision", "int8", "--height", "96"]
        + ["--width", "128", "--calls", "1", "--warmup", "0", "--calibration-images", "1"]
        + ["--reuse-freed-memory", "--onednn-reorders", "--opts", *one_layer_each],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    kinds = {
        cells[1].strip(): cells[2:]
        for cells in (line.split("|") for line in result.stdout.splitlines())
        if len(cells) == 6 and not cells[1].startswith(("-", " kind"))
    }
    header = result.stdout.splitlines()[0]
    variant = f"multi_scale {' '.join(one_layer_each)}"
    assert header.startswith(f"{variant}, int8, 96x128, freezing on, freed memory reused"), header
    assert re.search(r"per call \d+ page faults, \d+ ms of system CPU time", header), header
    for kind in ("convolutions", "matrix products", "MSDA op"):
        assert float(kinds[kind][0]) > 0, kinds
    assert int(kinds["convolutions"][2]) >= 50, kinds  # the backbone's and the projections'
    assert "| oneDNN reorder in one call | dims | count | ms |" in result.stdout
    assert "onednn_verbose" not in result.stdout  # read, not passed through
