import contextlib
import os

import pytest
import torch

# Without a usable GPU, run the Numba CUDA kernels on Numba's simulator. This
# must happen before numba is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# Under pytest-xdist (`make test` runs the suite in one worker per core), each worker
# and the processes its tests start get their share of the cores: the workers'
# thread pools would otherwise contend for every core at once.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    _threads = max(1, len(os.sched_getaffinity(0)) // WORKERS)  # the cores `nproc` counts
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

if torch.cuda.is_available():
    # (bytes, how many): one large block for the caching allocator's large pool,
    # then sizes of 1 MiB and under for its small pool (2 MiB segments), which
    # the tests' small tensors come from.
    _POISON_BLOCKS = ((2**28, 1), (2**20, 16), (2**16, 32), (2**12, 64), (2**9, 128))

    @pytest.fixture(autouse=True)
    def _poison_cuda_cache():
        """Fills free memory of the CUDA caching allocator with all-ones bytes,
        NaN in every float dtype (float64/32/16, bfloat16), before each test, so
        that an output element a kernel fails to write reads as NaN and fails
        the parity checks instead of passing as a stale or zero value. The
        blocks go back to the cache (no empty_cache), where the test's own
        allocations take them."""
        blocks = [
            torch.empty(size, dtype=torch.uint8, device="cuda")
            for size, count in _POISON_BLOCKS
            for _ in range(count)
        ]
        for block in blocks:
            block.fill_(255)
        del blocks
        yield


@pytest.fixture(scope="session")
def synthetic_datasets(tmp_path_factory):
    """The D2EXT_DATASETS directory of the tests that run the synthetic config in
    a subprocess: the first one generates the dataset, the others reuse it."""
    return tmp_path_factory.mktemp("datasets")


def _train_multiscale_model(datasets, output_dir):
    from .train_net_runs import MULTISCALE_CONFIG, last_ap, train_net

    log = train_net(
        datasets,
        "--config-file",
        str(MULTISCALE_CONFIG),
        "dataloader.test.num_workers=0",
        f"train.output_dir={output_dir}",
        "train.max_iter=300",
        "train.seed=0",
        timeout=1800,  # on one thread (a test worker's share of 2 cores) it can pass 10 minutes
    )
    return last_ap(log)


@pytest.fixture(scope="session")
def multiscale_model(synthetic_datasets, tmp_path_factory):
    """(model_final.pth, AP on the synthetic validation set) of
    configs/synthetic/deformable_detr_tiny_multiscale.py trained for 300
    iterations with seed 0 (AP about 11: a weak but trained model).

    Under pytest-xdist the model is trained once per run, not once per worker:
    the first worker to need it trains it in the run's shared temporary folder,
    holding a file lock that the others wait on, and writes its AP beside it."""
    if WORKERS > 1:
        from filelock import FileLock

        # the workers' base temporary folders are siblings in the run's own folder
        shared = tmp_path_factory.getbasetemp().parent / "multiscale"
        shared.mkdir(exist_ok=True)
        lock = FileLock(str(shared / "training.lock"))
    else:
        shared, lock = tmp_path_factory.mktemp("multiscale"), contextlib.nullcontext()
    output_dir, ap_file = shared / "output", shared / "ap.txt"
    with lock:
        if not ap_file.exists():
            ap_file.write_text(str(_train_multiscale_model(synthetic_datasets, output_dir)))
    return output_dir / "model_final.pth", float(ap_file.read_text())


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Seeds torch, numpy and random from the test's id, so that a test sees the
    same random inputs in every run and a failure reproduces."""
    import random
    import zlib

    import numpy as np

    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    yield
