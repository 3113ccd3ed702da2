"""One worker of the data-parallel equivalence test (tests/test_distributed.py), run as a real process.

    python tests/ddp_worker.py CASES.json BATCHES_DIR OUT_DIR     (env: LOCAL_RANK, WORLD_SIZE, MASTER_*)

For each case: builds the run's module exactly as `rlexp train` does (same seed, same weights), feeds it
this worker's contiguous share of the case's fixed rollout batch, runs one iteration under Lightning's
DDP strategy over gloo, and saves the parameters and logged metrics (rank 0) and each worker's removed prompts
(no-positive-resampling) for the test to compare.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from one_iteration import one_iteration  # noqa: E402


def main() -> None:
    cases, batches, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]), Path(sys.argv[3])
    rank, world = int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    for name, overrides in cases.items():
        batch = torch.load(batches / f"{name}.pt", weights_only=False)
        n = batch.size // world
        share = batch.select(list(range(rank * n, (rank + 1) * n)))
        module = one_iteration(overrides + ["hardware=ddp_cpu", f"hardware.devices={world}"], share)
        (out / f"{name}.removed{rank}.json").write_text(json.dumps(sorted(module.pool.removed)))
        if rank == 0:
            torch.save({"params": {k: v.detach().clone() for k, v in module.named_parameters()}, "grads": module.grads,
                        "metrics": next(h for h in module.history if "train/policy_loss" in h)},
                       out / f"{name}.pt")


if __name__ == "__main__":
    main()
