"""Fixtures for tests that drive `palimix train` on the runner fixture tasks: import them
into a test module (`from tests.runner_env import runner_environment, clean_gin`)."""

import os

import gin
import pytest


@pytest.fixture(scope="module", autouse=True)
def runner_environment(tmp_path_factory):
    # Once per process: the fixture module writes its images on first import, there.
    os.environ.setdefault("PALIMIX_RUNNER_FIXTURE_DIR", str(tmp_path_factory.mktemp("fixture_images")))
    os.environ["PALIMIX_COMPILATION_CACHE"] = str(tmp_path_factory.mktemp("jax_cache"))
    import tests.runner_fixture_tasks  # noqa: F401  (registers runner_fixture_colors)


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()
