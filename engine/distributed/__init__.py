"""Multi-GPU and multi-node runs: a preset's `distributed` section becomes an `accelerate launch`.

tunebench writes no distributed trainer of its own. For a preset whose strategy is not `single`,
the job body calls `launcher.launch(preset, run_dir, sink, resume_from=…)` where it would call
`engine.train.train` with the same arguments. The modules, by job:

- `world`    — the preset's world (size, precision, memory shards) and whether this machine and a
               checkpoint fit it; arithmetic and checks, no process started.
- `configs`  — the accelerate / DeepSpeed / FSDP configuration written for a run.
- `launcher` — the supervisor: writes the run's launch files, starts `accelerate launch … -m
               engine.dist_entry`, replays rank 0's records into the job's sink, passes stop
               requests down and reads the result back.
- `messages` — the files through which the supervisor and the ranks talk: a stop request down,
               the job's result up.
- `rank`     — what runs inside each rank: whether the model is loaded sharded, and the per-step
               agreement on one stop decision.

The GPUs themselves (which are visible, bf16, memory) are engine.hardware's. Nothing heavy at
import time anywhere in this package (no torch, transformers or accelerate): the jobs layer imports
it inside job bodies.
"""
