"""The modules' former paths, still importable (with a FutureWarning), so that a
config dumped before the package took its present layout (``_target_:
deformable_detr.meta_arch.DeformableDETR``) and code importing the old paths keep
working. Each old module is the new one, not a copy: classes stay identical."""

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# former module (under deformable_detr.) -> present module(s); an old module whose
# names now live in several modules is a read-only view of all of them
MOVED_MODULES = {
    "backbones": ("modeling.backbones", "solver.param_groups"),
    "backbones.optim": ("solver.param_groups",),
    "backbones.resnet": ("modeling.backbones.resnet",),
    "box_fusion": ("modeling.box_fusion",),
    "build": ("config.build", "data.build"),
    "criterion": ("modeling.criterion",),
    "detector": ("modeling.meta_arch.set_prediction",),
    "detr": ("modeling.meta_arch.detr",),
    "detr_transformer": ("modeling.detr_transformer",),
    "flops": ("export.flops",),
    "hooks": ("engine.hooks",),
    "interop": ("checkpoint",),
    "interop.backbone_weights": ("checkpoint.backbone_weights",),
    "interop.converter": ("checkpoint.converter",),
    "interop.hf_peer": ("checkpoint.hf_peer",),
    "interop.state_dicts": ("checkpoint.state_dicts",),
    "matcher": ("modeling.matcher",),
    "meta_arch": ("modeling.meta_arch.deformable_detr",),
    "optim": ("solver.lr_factors",),
    "output": ("engine.output",),
    "overrides": ("config.overrides",),
    "position_encoding": ("modeling.position_encoding",),
    "precision": ("export.precision",),
    "quantization": ("export.quantization",),
    "rng": ("engine.rng",),
    "schedule": ("solver.schedule",),
    "study.backbone_pretraining": ("engine.backbone_pretraining",),
    "transformer": ("modeling.deformable_transformer",),
    "tta": ("modeling.test_time_augmentation",),
    "weights": ("checkpoint.loading_rule",),
}
_PACKAGE = __name__.rpartition(".")[0]


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        prefix = _PACKAGE + "."
        if fullname.startswith(prefix) and fullname[len(prefix) :] in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        old = spec.name[len(_PACKAGE) + 1 :]
        new = [f"{_PACKAGE}.{name}" for name in MOVED_MODULES[old]]
        warnings.warn(
            f"{spec.name} has moved to {' and '.join(new)}; import it from there "
            "(the old path will be removed in a future version)",
            FutureWarning,
            stacklevel=2,
        )
        modules = [importlib.import_module(name) for name in new]
        if len(modules) == 1:
            spec.loader_state = modules[0].__spec__
            return modules[0]
        view = types.ModuleType(spec.name, f"Former module; see {', '.join(new)}.")
        view.__path__ = []  # a package: its former submodules import through this finder
        for module in modules:
            view.__dict__.update({k: getattr(module, k) for k in getattr(module, "__all__", ())})
        return view

    def exec_module(self, module):
        # the import machinery set the present module's __spec__ to the old name's
        if module.__spec__.loader_state is not None:
            module.__spec__ = module.__spec__.loader_state


def install() -> None:
    """Lets the former module paths import; idempotent."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
