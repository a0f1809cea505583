"""Installs detectron2's pure-Python package into this interpreter's
site-packages, unless a detectron2 is already importable (from source, say).

detectron2 is not on PyPI; `sal-detectron2` re-packages its main branch as a
cp310 wheel. Its pure-Python `detectron2/` runs on newer Pythons (its compiled
_C is optional: COCOEvaluator falls back to pycocotools), so we take the wheel
for 3.10 and copy that package alone, without the wheel's top-level tools/.
"""

import argparse
import importlib.util
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

PACKAGE = "sal-detectron2==0.7.2"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--force", action="store_true", help="install even if detectron2 is importable"
    )
    args = parser.parse_args()
    if importlib.util.find_spec("detectron2") is not None and not args.force:
        print(
            "detectron2 is already installed at "
            f"{importlib.util.find_spec('detectron2').origin}; leaving it"
        )
        return
    site_packages = Path(sysconfig.get_paths()["purelib"])
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.10",
                "--target",
                download,
                "--quiet",
                PACKAGE,
            ],
            check=True,
        )
        source = Path(download) / "detectron2"
        target = site_packages / "detectron2"
        if target.exists():
            shutil.rmtree(target)
        # the cp310 extension cannot load here; without it detectron2 uses its Python paths
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("_C.*.so"))
    print(f"installed detectron2 ({PACKAGE}, pure Python) into {target}")


if __name__ == "__main__":
    main()
