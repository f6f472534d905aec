"""Build pixarc-weights: copy every learned plugin's ``weights/`` folder from the repository
into the package ``pixarc_weights/<plugin module>/`` (each with its ``weights.json``)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PLUGINS = HERE.parent.parent / "plugins"


class CopyWeights(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "pixarc_weights"
        copied = 0
        for folder in sorted(PLUGINS.glob("pixarc_*/weights")):
            if not (folder / "weights.json").exists():
                continue
            dest = target / folder.parent.name
            dest.mkdir(parents=True, exist_ok=True)
            for f in folder.iterdir():
                if f.suffix in (".pt", ".json"):
                    shutil.copy2(f, dest / f.name)
                    copied += 1
        if not copied:
            raise SystemExit(f"no weights found under {PLUGINS}: build from a pixarc checkout")


setup(cmdclass={"build_py": CopyWeights})
