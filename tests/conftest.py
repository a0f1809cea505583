import os

import torch

# Without a usable GPU, run the Numba CUDA kernels on Numba's simulator. This
# must happen before numba is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
