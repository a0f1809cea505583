"""The package layout: configs dumped before the modules moved still load (their
old ``_target_`` paths import, with a FutureWarning, as the very same objects)."""

import glob
import os
import re
import subprocess
import sys
import warnings

import pytest

import deformable_detr
from deformable_detr._moved_modules import MOVED_MODULES
from deformable_detr.config.build import build_model, load_config

DUMPED = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "dumped_configs", "*.yaml")))


@pytest.mark.parametrize("path", DUMPED, ids=os.path.basename)
def test_a_config_dumped_before_the_move_builds_its_model(path):
    model = build_model(load_config(path), weights=None, device="cpu")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert not type(model).__module__.startswith("deformable_detr.") or (
        type(model).__module__.startswith("deformable_detr.modeling.")
    )


def test_every_old_module_path_warns_and_gives_the_new_objects():
    # a fresh process: each old path warns once per process, at its first import
    code = (
        "import warnings, importlib\n"
        "import deformable_detr\n"
        "from deformable_detr._moved_modules import MOVED_MODULES\n"
        "for old_name, new_names in sorted(MOVED_MODULES.items()):\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        old = importlib.import_module('deformable_detr.' + old_name)\n"
        "    moved = [w for w in caught if old_name + ' has moved to' in str(w.message)]\n"
        "    assert moved and moved[0].category is FutureWarning, old_name\n"
        "    for name in new_names:\n"
        "        new = importlib.import_module('deformable_detr.' + name)\n"
        "        for attr in getattr(new, '__all__', ()):\n"
        "            assert getattr(old, attr) is getattr(new, attr), (old_name, attr)\n"
        "print(len(MOVED_MODULES))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout) == len(MOVED_MODULES)


def test_the_new_modules_keep_their_own_spec_after_an_old_import():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import deformable_detr.meta_arch as old  # noqa: F401
    from deformable_detr.modeling.meta_arch import deformable_detr as new

    assert old is new and new.__spec__.name == "deformable_detr.modeling.meta_arch.deformable_detr"
    assert deformable_detr.DeformableDETR is new.DeformableDETR


PACKAGE_DIR = os.path.dirname(deformable_detr.__file__)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(PACKAGE_DIR)))


def _package_modules():
    found = set()
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py") and not name.startswith("_"):
                found.add(os.path.relpath(os.path.join(folder, name), PACKAGE_DIR))
    return found


def test_the_package_readme_table_names_every_module_and_no_other():
    with open(os.path.join(REPO, "projects", "DeformableDETR", "README.md")) as f:
        text = f.read()
    table = text[text.index("| module | what |") :].split("\n\n")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named = {path for row in rows for path in re.findall(r"`([\w/]+\.py)`", row.split("|")[1])}
    assert named == _package_modules()


def test_the_root_readme_layout_names_every_folder_of_the_package():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    folders = {
        name
        for name in os.listdir(PACKAGE_DIR)
        if os.path.isfile(os.path.join(PACKAGE_DIR, name, "__init__.py"))
    }
    layout = text[text.index("projects/DeformableDETR/deformable_detr/ ") :]
    assert folders == set(re.findall(r"^  (\w+)/ ", layout, re.M))


def test_importing_the_package_prints_no_dependency_warnings():
    # fvcore's and detectron2's import-time torch.jit.script calls are silenced, and
    # only during those imports: no filter is left behind for the user's own calls
    code = (
        "import warnings\n"
        "import deformable_detr\n"
        "import detectron2.engine, detectron2.evaluation, detectron2.modeling\n"
        "left = [f for f in warnings.filters if f[1] and 'jit' in f[1].pattern]\n"
        "assert not left, left\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]


TOOLS = sorted(
    os.path.relpath(path, REPO)
    for pattern in ("tools/*.py", "tools/*/*.py", "demo/*.py")
    for path in glob.glob(os.path.join(REPO, pattern))
)


@pytest.mark.slow
@pytest.mark.parametrize("tool", TOOLS)
def test_a_tool_starts_without_warnings(tool):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, tool), "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Warning" not in result.stderr, result.stderr[-2000:]


def test_register_yacs_datasets_still_works_from_its_former_module(monkeypatch):
    from deformable_detr.data import build, coco_json

    calls = []
    monkeypatch.setattr(build, "register_yacs_datasets", calls.append)
    with pytest.warns(FutureWarning, match="deformable_detr.data.build"):
        coco_json.register_yacs_datasets("the config")
    assert calls == ["the config"]


def test_only_build_model_instantiates_a_configs_model():
    """Tools, the demo and the package build a config's model through
    deformable_detr.config.build.build_model, where the class count and loading rules live."""
    builder = os.path.join(PACKAGE_DIR, "config", "build.py")
    sources = TOOLS + [
        os.path.relpath(os.path.join(folder, name), REPO)
        for folder, _, files in os.walk(PACKAGE_DIR)
        for name in files
        if name.endswith(".py") and os.path.join(folder, name) != builder
    ]
    direct = re.compile(r"instantiate\(.*\.model\)")
    found = []
    for path in sources:
        with open(os.path.join(REPO, path)) as f:
            found += [f"{path}:{i}" for i, line in enumerate(f, 1) if direct.search(line)]
    assert not found, found
