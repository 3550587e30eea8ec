"""palimix's networks in Flax: PaLI (a ViT in front of an mT5-style encoder-decoder),
PaliGemma (a ViT as the fully attended prefix of a Gemma decoder), and the pieces the
other recipes add (Q-Former, LoRA, int8 weights, a VQGAN image tokenizer).

Modules (imported on use, so `import palimix.models` stays cheap):

  configs       named sizes (`tiny` ... `pali_17b`, `tiny_decoder`, `paligemma_3b`), overrides
  networks      config -> network (`build`), inputs, dummy batches, init, `count_params`
  pali          the `Pali` encoder-decoder (t5x-style `encode` / `decode` / `__call__`)
  paligemma     the `PaliGemma` decoder-only network (prefill + KV-cache decode)
  vit, t5, gemma  the towers, with big_vision and t5x parameter names
  qformer       BLIP-2's Q-Former bridge (Hugging Face names)
  lora          LoRA adapters on the language model's projections; merging
  quantize      frozen weights in int8 with per-output-channel scales
  vqgan         the VQGAN image tokenizer (MaskGIT's names) and its training losses
  perceptual    LPIPS on torchvision's VGG16 (the tokenizer's optional perceptual loss)
  discriminator MaskGIT's StyleGAN discriminator and GAN losses (the optional adversarial loss)
  layers        shared building blocks (logical axis names on every parameter), attention
  scan_layout   scanned <-> unscanned parameter layouts
  decoding      greedy, beam search, temperature / top-k sampling with a cache
  checkpoints   public checkpoint layouts (big_vision, t5x, Hugging Face, MaskGIT, torchvision), warm starts
  partitioning  logical axis rules (`DEFAULT_RULES`), meshes, parameter shardings
  trainable     which parameters train (`ParamSelection`)
  losses        the one training loss (of the PaLI networks)
"""
