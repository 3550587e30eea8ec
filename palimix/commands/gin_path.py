"""`palimix gin-path`: where palimix's gin files are, for t5x's `--gin_search_paths`."""

import os

HELP = "Print the folder of palimix's gin files (pass it to t5x as --gin_search_paths)."


def gin_dir() -> str:
    """The folder that holds `models/`, `sizes/` and `runs/` (package data of palimix)."""
    import palimix

    return os.path.join(os.path.dirname(os.path.abspath(palimix.__file__)), "gin")


def configure(parser):
    parser.add_argument(
        "--list",
        action="store_true",
        help="also list the gin files, as the names to pass to --gin_file",
    )


def run(args) -> int:
    folder = gin_dir()
    print(folder)
    if args.list:
        for root, _, files in sorted(os.walk(folder)):
            for name in sorted(files):
                if name.endswith(".gin"):
                    print(os.path.relpath(os.path.join(root, name), folder))
    return 0
