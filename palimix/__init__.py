"""palimix: the PaLI recipe as a framework of multilingual multimodal SeqIO tasks.

Importing `palimix` stays cheap (no TensorFlow, no JAX): the heavy modules are
imported where they are used, so `palimix --help` and `palimix languages` are fast.
Import `palimix.tasks` to register the bundled tasks and mixtures (seqio style).
"""

__version__ = "0.1.0"
