"""Imports that warn about their own code, made quietly once, before anything
else of the package: fvcore.nn (which detectron2 imports) and detectron2's
box_regression compile functions with ``torch.jit.script`` at import, and torch
deprecates that call, so every command would start with FutureWarnings about code
that is neither the user's nor ours. Only that warning, only during that import, is
silenced; ``torch.jit.script`` called anywhere else still warns."""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
    )
    import detectron2.modeling.box_regression  # noqa: F401
    import fvcore.nn  # noqa: F401
