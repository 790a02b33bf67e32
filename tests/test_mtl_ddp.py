"""MultiTaskTrainer under torch.distributed (gloo, 2 CPU processes): per-task gradients are
all-reduced before aggregation, so 2 ranks with half batches take the single-process steps."""
import os

import pytest
import torch
import torch.distributed as dist
from _gloo import run_gloo
from torch import nn

from pyzsl.mtl import MGDA, Equal, GradNorm, HardSharing, MultiTaskTrainer, PCGrad

pytestmark = [pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="torch.distributed with the gloo backend is not available"),
              pytest.mark.usefixtures("one_thread")]

# equal: one weighted backward, per-task gradients on probe steps; the rest: per-task gradients
CONFIGS = [("equal", False), ("pcgrad", False), ("mgda", True), ("gradnorm", False)]
STEPS, BATCH = 4, 32


def _agg(name):
    return {"equal": Equal, "pcgrad": PCGrad, "mgda": MGDA, "gradnorm": lambda: GradNorm(2)}[name]()


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(96, 5, generator=g)
    return X, {"a": (X[:, 0] > 0).long(), "b": (X[:, 1] + X[:, 2] > 0).long()}


def _run(name, ub):
    torch.manual_seed(0)
    model = HardSharing(nn.Sequential(nn.Linear(5, 12), nn.Tanh()), {t: nn.Linear(12, 2) for t in "ab"})
    tr = MultiTaskTrainer(model, _agg(name), torch.optim.Adam(model.parameters(), lr=0.05), mgda_ub=ub,
                          diagnostics_every=2, seed=0)
    tr.fit(_data(), steps=STEPS, batch_size=BATCH, progress=False)
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return params, tr.diagnostics()


def _worker(rank, world, out_dir):
    res = {}
    for name, ub in CONFIGS:
        params, diag = _run(name, ub)
        gathered = [torch.empty_like(params) for _ in range(world)]
        dist.all_gather(gathered, params)
        res[(name, ub)] = (params, diag, all(torch.equal(gathered[0], x) for x in gathered))
    if rank == 0:
        torch.save(res, os.path.join(out_dir, "ddp.pt"))


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    run_gloo(_worker, 2, str(tmp_path))
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)
    for name, ub in CONFIGS:
        params, diag, in_sync = ddp[(name, ub)]
        assert in_sync, f"{name}: ranks diverged"
        ref, ref_diag = _run(name, ub)
        torch.testing.assert_close(params, ref, rtol=1e-4, atol=1e-5, msg=f"{name} (mgda_ub={ub})")
        assert diag["pair_probes"] == ref_diag["pair_probes"]
        torch.testing.assert_close(torch.tensor(diag["pair_mean_cos"]), torch.tensor(ref_diag["pair_mean_cos"]),
                                   rtol=1e-4, atol=1e-5)


def test_ddp_wrapped_model_is_refused():
    m = HardSharing(nn.Linear(2, 2), {"a": nn.Linear(2, 2)})
    fake = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(fake)
    fake.module = m
    with pytest.raises(TypeError, match="bare module"):
        MultiTaskTrainer(fake, Equal(), torch.optim.SGD(m.parameters(), lr=0.1))


def _bn_worker(rank, world, out_dir):
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.Tanh())
    model = HardSharing(trunk, {t: nn.Linear(12, 2) for t in "ab"})
    tr = MultiTaskTrainer(model, Equal(), torch.optim.SGD(model.parameters(), lr=0.05), seed=0)
    tr.fit(_data(), steps=3, batch_size=BATCH, progress=False)
    mean = trunk[1].running_mean.clone()
    gathered = [torch.empty_like(mean) for _ in range(world)]
    dist.all_gather(gathered, mean)
    if rank == 0:
        torch.save([torch.equal(gathered[0], g) for g in gathered], os.path.join(out_dir, "bn.pt"))


def test_ddp_keeps_running_statistics_in_sync(tmp_path):
    # each rank sees its own half batch: BatchNorm's running means would drift apart
    run_gloo(_bn_worker, 2, str(tmp_path))
    assert all(torch.load(tmp_path / "bn.pt"))
