"""``rlexp train`` as a plain script: what Lightning's DDP launcher re-runs for each extra worker.

Lightning starts workers 1..N-1 with ``python <sys.argv[0]> <sys.argv[1:]>`` plus Hydra overrides
(run dir, job name). ``rlexp train`` points ``sys.argv[0]`` here, so each worker re-enters the same
Hydra app with the same overrides. Not meant to be run by hand (use ``rlexp train``).
"""
from rlexp.train import hydra_main

if __name__ == "__main__":
    hydra_main()
