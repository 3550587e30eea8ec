"""seqio-style preprocessors: plain functions of a `tf.data.Dataset`.

Image modules (import the one you need; this package imports nothing heavy):

- `image`: `decode_image(dataset, *, image_size, strict, task_name)`: file bytes ->
  `image` float32 [S, S, 3] in [-1, 1] + `has_image`; bad images dropped and counted.
  `ImageDecoder` is the same in two parts (a batched header check, a per-example
  decode) for a map of one's own: palimix's tasks decode inside
  `prompts.build_example`, one map and one filter per task.
- `image_files`: the Pillow decoder behind it (no TensorFlow), for tools and tests.
"""
