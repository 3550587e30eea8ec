"""palimix's embedded single-machine runner: `palimix train | eval | infer` without T5X.

Modules, one job each: `train` (the loop), `eval` (seqio.Evaluator, per-language and
macro metrics), `infer` (predictions for images + prompts), `checkpoints` (orbax,
with the input position), `data` (seqio datasets as numpy batches), `schedules`
(learning rates and optimizers), `summaries` (TensorBoard + metrics.jsonl),
`progress` (the progress bar), `model` (the network, loss and sharding), `predict`
(batched decoding), `loading` (a trained run back from its model dir), `config`
(gin, flags, user modules).
"""
