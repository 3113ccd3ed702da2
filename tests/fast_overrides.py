"""Overrides that shrink a run to a few seconds; every in-process test run shares their warm start."""
FAST = [
    "trainer.max_steps=2", "trainer.eval_every=1", "trainer.progress_bar=false", "trainer.num_samples_logged=4",
    "model.warmstart.max_steps=60", "model.warmstart.eval_every=60", "task.num_eval=32",
    "algorithm.prompts_per_step=8", "algorithm.minibatch_size=4",
]
