"""seqio-style preprocessors: plain functions of a `tf.data.Dataset`.

Image modules (import the one you need; this package imports nothing heavy):

- `image`: `decode_image(dataset, *, image_size, strict, task_name)`: file bytes ->
  `image` float32 [S, S, 3] in [-1, 1] + `has_image`; bad images dropped and counted.
  `ImageDecoder` is the same without the final filter, for a map of one's own before
  it: palimix's tasks decode right before `prompts.build_example`'s map and filter
  once after it.
- `prompts`: `build_example`, which carries out a kind's entry in `palimix.kinds`.
- `image_files`: the Pillow decoder behind it (no TensorFlow), for tools and tests.
"""
