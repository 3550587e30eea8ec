"""The library log lines a palimix command must not show unless asked (--verbose),
written out here independently of palimix.quiet, to check what users really see."""

import re

NOISE = tuple(re.compile(p) for p in (
    r"oneDNN custom operations are on",
    r"All log messages before absl::InitializeLog\(\) is called",
    r"This TensorFlow binary is optimized",
    r"Could not find cuda drivers",
    r"failed call to cuInit",
    r"normalizer\.cc\(\d+\) LOG\(INFO\) precompiled_charsmap is empty",
    r"Given directory is read only",
    r"CheckpointManagerOptions\.read_only=True",
    r"Given sequence lengths are longer than necessary",
    r"Path not found: ",  # gin's search-path misses (the file is found on the next path)
))


def noise_lines(stderr: str) -> list[str]:
    """The lines of `stderr` that are library noise."""
    return [line for line in stderr.splitlines() if any(p.search(line) for p in NOISE)]
