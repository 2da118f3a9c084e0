"""Shared pytest fixtures: the real MNIST copy, and Colored-MNIST built from it once."""

import os

import pytest

import data_loader

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_COLOR_VAR = 0.020


@pytest.fixture(scope="session")
def mnist_dir():
    folder = os.environ.get("LNTL_MNIST_DIR") or os.path.join(REPO_ROOT, "..", "shared",
                                                              "data", "mnist")
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        pytest.fail(f"the tests need real MNIST in {folder}; put the four IDX files there "
                    f"or set LNTL_MNIST_DIR to a folder that has them")
    return folder


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    return data_loader.load_mnist(mnist_dir)


@pytest.fixture(scope="session")
def colored_data_dir(tmp_path_factory, mnist):
    """A --data_dir holding the Colored-MNIST file of variance 0.020, built once."""
    folder = tmp_path_factory.mktemp("colored")
    data = data_loader.build_colored_mnist(mnist, TEST_COLOR_VAR, seed=0)
    data_loader.save_colored_mnist(data_loader.colored_mnist_path(folder, TEST_COLOR_VAR), data)
    return str(folder)
