"""The layering of DESIGN.md: using a trained model never loads the training loop; leaves stay leaves."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in sys.modules if m.startswith('unetkit')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("statement", ["import unetkit.predict", "import unetkit.export", "import unetkit.serve"])
def test_using_a_model_does_not_load_the_training_loop(statement):
    loaded = _loaded_after(statement)
    assert "unetkit.predict" in loaded and "unetkit.train" not in loaded


def test_the_package_loads_its_names_on_first_use():
    assert "unetkit.train" not in _loaded_after("import unetkit; unetkit.RunConfig")
    assert "unetkit.train" in _loaded_after("import unetkit; unetkit.fit")


def test_leaf_modules_import_nothing_from_unetkit():
    assert _loaded_after("import unetkit.fsio, unetkit.palette") == {"unetkit", "unetkit.fsio", "unetkit.palette"}


def test_unknown_package_attribute_is_an_attribute_error():
    import unetkit

    with pytest.raises(AttributeError, match="no_such_name"):
        unetkit.no_such_name  # noqa: B018
    assert set(unetkit.__all__) == set(unetkit._EXPORTS) | {"__version__"}
    assert set(unetkit.__all__) <= set(dir(unetkit))
    for name in unetkit.__all__:
        assert getattr(unetkit, name) is not None
