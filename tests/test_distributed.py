"""Data parallel training: two CPU processes with gloo, launched the way torchrun does."""

import json
import subprocess
import sys
import textwrap

import torch
from conftest import ROOT, run_cli
from safetensors.torch import load_file

SCRIPT = textwrap.dedent("""
    import os, sys
    from safetensors.torch import save_file
    from dlcli import train as training
    from dlcli.config import resolve_config
    from dlcli.registry import get_spec

    out = sys.argv[1]
    fit = training.fit

    def fit_and_dump(task, *args, **kwargs):  # record every rank's final weights
        path = fit(task, *args, **kwargs)
        weights = {f"{n}/{k}": v.detach().clone().contiguous()
                   for n, m in task.modules.items() for k, v in m.state_dict().items()}
        save_file(weights, os.path.join(out, f"rank{os.environ['RANK']}.safetensors"))
        return path

    training.fit = fit_and_dump
    config = resolve_config("mlp", None, ["hidden=[32]"], epochs=1, batch_size=64)
    path = training.train(get_spec("mlp"), config, device="cpu")
    if path is not None:
        print(path)
""")


def test_two_processes_stay_in_sync_and_only_rank0_writes(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    env = {"PYTHONPATH": str(ROOT), "DLCLI_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(script), str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for k in rank0:
        assert torch.allclose(rank0[k], rank1[k], atol=1e-6), k
    runs = list((tmp_path / "runs" / "mlp").iterdir())
    assert len(runs) == 1  # rank 1 claimed no folder and wrote nothing
    ckpt = proc.stdout.strip().splitlines()[-1]
    metrics = json.loads(run_cli("evaluate", ckpt, "--json", "--device", "cpu", check=0).stdout)
    assert metrics["accuracy"] > 0.8
