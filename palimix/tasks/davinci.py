"""DaVinci's mixture (Diao et al. 2022, "Write and Paint"): captioning, text_to_image and
prefix_image over one set of captioned images with their VQGAN codes, weighted equally
(DaVinci sums its objectives' losses with equal weights).

    palimix.tasks.davinci.register("davinci", {"train": "train.jsonl", "validation": "val.jsonl"},
                                   image_dir="images", vocabulary=vocab.default_vocabulary(tokensets=("img",)))

The files are JSON Lines with `captions`, `image` and `codes` (what `palimix encode-images`
writes; palimix.sources.JsonLines). Registered: the task groups `<name>_caption`,
`<name>_text_to_image` and `<name>_prefix_image` (each `<group>_<language>` tasks and a
mixture over its languages, palimix.tasks.add_task) and the mixture `<name>` over the three
groups at rate 1 each (text_to_image with `unconditional_share`: condition dropout, which
DaVinci itself does not use, for `palimix infer --guidance_scale`). `runs/davinci.gin` calls
it through gin (`davinci.register`), so `palimix train` and `t5x.train` read the same mixture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from palimix import features
from palimix.errors import UsageError

KINDS = ("caption", "text_to_image", "prefix_image")

# name -> the definition it was registered with (train and eval configs evaluate it twice).
_REGISTERED: dict[str, tuple] = {}


def register(name: str, files: Mapping[str, str], *, image_dir: str = "", languages: Sequence[str] = ("en",),
             image_size: int = features.DEFAULT_IMAGE_SIZE, prompt_style: str = "pali", vocabulary=None,
             unconditional_share: float = 0.0) -> str:
    """Registers the DaVinci mixture `name` (module docstring) and returns its name;
    registering the same definition again is a no-op, a changed one replaces it.
    unconditional_share: text_to_image's share of examples prompted without their
    description (palimix.kinds; condition dropout for classifier-free guidance)."""
    import seqio

    from palimix.mixtures import add_mixture
    from palimix.sources import JsonLines, Splits
    from palimix.tasks.registry import add_task

    if not files:
        raise UsageError("the DaVinci mixture needs its JSON Lines files: {split: path}, e.g. {'train': ...}.")
    languages = [languages] if isinstance(languages, str) else list(languages)
    spec = (tuple(sorted(files.items())), image_dir, tuple(languages), image_size, prompt_style, id(vocabulary),
            unconditional_share)
    if _REGISTERED.get(name) == spec and name in seqio.MixtureRegistry.names():
        return name
    ours = name in _REGISTERED  # (another definition of ours is replaced; anyone else's is an error)
    source = Splits({split: JsonLines(path, image_dir, split=split) for split, path in files.items()})
    groups = [f"{name}_{kind}" for kind in KINDS]
    kind_options = {"text_to_image": {"unconditional_share": unconditional_share}}
    for group, kind in zip(groups, KINDS):
        add_task(group, kind=kind, source=source, languages=languages, image_size=image_size,
                 prompt_style=prompt_style, vocabulary=vocabulary, overwrite=ours, **kind_options.get(kind, {}))
    add_mixture(name, groups, rate=1.0, overwrite=ours)
    _REGISTERED[name] = spec
    return name
