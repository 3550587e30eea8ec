"""palimix: the PaLI recipe as a multilingual multimodal SeqIO/T5X framework."""

import setuptools

# Runtime dependencies. Every import in palimix/ must be covered here: CI installs
# from this list on a clean machine, nothing is installed by hand.
INSTALL_REQUIRES = [
    # Data pipeline (SeqIO on tf.data).
    "seqio>=0.0.19",
    "tensorflow>=2.16",
    "tensorflow-text>=2.16",
    "sentencepiece>=0.2",
    "gin-config>=0.5",
    "numpy>=1.26",
    "pillow>=10.0",
    # WebDataset shard patterns ("shard-{000000..000099}.tar"), as webdataset itself expands them.
    "braceexpand>=0.1.7",
    # Model and the embedded runner.
    "jax>=0.4.30",
    "flax>=0.8",
    "optax>=0.2",
    "orbax-checkpoint>=0.6",
    # Reading t5x's native checkpoints (TensorStore arrays) in palimix.models.checkpoints.
    "tensorstore>=0.1.60",
    # Reading converted Hugging Face checkpoints (BLIP-2 / mBLIP Q-Former: checkpoints.load_qformer).
    "safetensors>=0.4",
    # Resampling ViT position embeddings when a checkpoint's resolution differs.
    "scipy>=1.10",
    "tensorboard>=2.16",
    "rich>=13",
    # Language data (the languages table is generated from these, and looked up at runtime).
    "langcodes>=3.4",
    "language-data>=1.2",
    "babel>=2.14",
    # Multilingual sample text (UDHR article 1 etc. for ~700 languages): vocabulary and demo text.
    "gflanguages>=0.7",
    # OFL fonts for rendering OCR images in several scripts.
    "fontpkg-noto-sans",
    "fontpkg-noto-sans-arabic",
    "fontpkg-noto-sans-devanagari",
    "fontpkg-noto-sans-thai",
    # Metrics: sacrebleu and word segmenters for unsegmented scripts.
    "sacrebleu>=2.4",
    "jieba>=0.42",
    "pythainlp>=5.0",
    "fugashi>=1.3",
    "unidic-lite>=1.0.8",
    # Metrics: sparse n-gram algebra for vectorized CIDEr/BLEU (palimix.metrics._ngrams).
    "scipy>=1.11",
    # Metrics: Unicode classes and grapheme clusters for the PTB and character tokenizers.
    "regex>=2023.0",
    # Metrics: C edit distance for ANLS.
    "editdistance>=0.6",
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=8",
        "pytest-xdist>=3",
        # Reference implementation that the caption metrics are checked against.
        "pycocoevalcap>=1.2",
        # Reference implementation that detection mAP is checked against (COCOeval).
        "pycocotools>=2.0",
    ],
    # T5X is not on PyPI: install it from its repository. (CI here installs the
    # prebuilt wheels from ../shared/wheels instead, see .ci/run.)
    "t5x": [
        "t5x @ git+https://github.com/google-research/t5x",
        "airio @ git+https://github.com/google/airio",
        "jestimator @ git+https://github.com/google-research/jestimator",
    ],
}

setuptools.setup(
    name="palimix",
    version="0.1.0",
    description="Multilingual multimodal task mixtures (the PaLI recipe) on SeqIO and T5X.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["palimix", "palimix.*"]),
    include_package_data=True,
    package_data={
        "palimix": [
            "data/*",
            "data/**/*",
            "gin/*.gin",
            "gin/**/*.gin",
        ]
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["palimix = palimix.cli:main"]},
)
