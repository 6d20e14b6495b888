"""import classicnets_ext survives a missing or broken _C; ops that need it say why and how to rebuild."""
import subprocess
import sys

# Makes `classicnets_ext._C` fail to import the way a missing build does, before the package is imported.
_BLOCK_C = """
import importlib.abc, sys
class _NoExtension(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "classicnets_ext._C":
            raise ImportError("simulated: classicnets_ext._C was never built")
sys.meta_path.insert(0, _NoExtension())
"""

_CHECK = """
import pytest, torch, torch.nn.functional as F
import classicnets_ext
from classicnets_ext import ops
assert classicnets_ext._extension.LOAD_ERROR is not None
assert "cpu" not in classicnets_ext.available_backends()
assert "reference" in classicnets_ext.available_backends()
x = torch.randn(2, 6, 4, 4)
with pytest.warns(RuntimeWarning, match="'auto' runs lrn on stock PyTorch.*simulated: classicnets_ext._C was never"):
    torch.testing.assert_close(ops.local_response_norm(x, 5), F.local_response_norm(x, 5))  # auto -> reference
import warnings
with warnings.catch_warnings():
    warnings.simplefilter("error")  # once per op and process
    torch.testing.assert_close(classicnets_ext.nn.LocalResponseNorm(3)(x), F.local_response_norm(x, 3))
with pytest.raises(RuntimeError) as err:
    classicnets_ext.set_backend("cpu")
assert "simulated: classicnets_ext._C was never built" in str(err.value)
assert "pip install --no-build-isolation" in str(err.value)
with pytest.raises(RuntimeError, match="simulated: classicnets_ext._C was never built"):
    classicnets_ext._extension.require("local_response_norm")
print("ok")
"""


def test_import_without_extension_keeps_reference_backend():
    out = subprocess.run([sys.executable, "-c", _BLOCK_C + _CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


def test_info_cli_reports_the_load_error():
    code = _BLOCK_C + "import sys; from classicnets_ext.__main__ import main; sys.exit(main(['info']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "_C failed to load" in out.stdout and "simulated" in out.stdout
