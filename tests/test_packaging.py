"""The wheel must carry every subpackage and the recipes (`audiosep demo` needs them after `pip install .`)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_and_recipes_are_packaged() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "audiosep").rglob("__init__.py")
    }
    assert on_disk <= listed, f"not packaged: {sorted(on_disk - listed)}"
    assert config["package-dir"]["audiosep.recipes"] == "recipes"
    assert (ROOT / "recipes" / "demo" / "convtasnet_tiny.yaml").is_file()
