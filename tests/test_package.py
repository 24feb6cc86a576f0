"""The package imports fast and exposes its API lazily; the CLI prints one-line errors."""

import subprocess
import sys

import pytest

import subcell_scale
from subcell_scale import errors


def test_import_does_not_load_torch_or_dask():
    code = "import sys, subcell_scale; print('torch' in sys.modules, 'dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        subcell_scale.nope  # noqa: B018


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.PlateNotFoundError, FileNotFoundError),
        (errors.PlateFormatError, ValueError),
        (errors.PlatemapError, ValueError),
        (errors.ChannelMismatchError, ValueError),
        (errors.CheckpointError, ValueError),
        (errors.DownloadError, OSError),
        (errors.RunDirectoryError, OSError),
    ],
)
def test_errors_share_one_base_and_keep_the_builtin(cls, builtin):
    assert issubclass(cls, errors.SubcellScaleError)
    assert issubclass(cls, builtin)


def test_cli_version_and_help():
    out = subprocess.run(["subcell-scale", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"subcell-scale {subcell_scale.__version__}"
    out = subprocess.run(["subcell-scale", "--help"], capture_output=True, text=True, check=True)
    assert "usage: subcell-scale" in out.stdout
