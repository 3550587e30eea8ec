"""The PaLI model in Flax: a ViT in front of an mT5-style encoder-decoder.

Modules (imported on use, so `import palimix.models` stays cheap):

  configs       named sizes (`tiny` ... `pali_17b`), overrides, `count_params`
  pali          the `Pali` module (t5x-style `encode` / `decode` / `__call__`), loss helpers
  vit, t5       the two towers, with big_vision and t5x parameter names
  layers        shared building blocks (logical axis names on every parameter)
  decoding      greedy, beam search, temperature / top-k sampling with a cache
  checkpoints   `load_vit` (big_vision .npz) and `load_mt5` (t5x / orbax checkpoints)
  partitioning  logical axis rules (`DEFAULT_RULES`), meshes, parameter shardings
"""
