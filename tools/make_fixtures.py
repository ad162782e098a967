#!/usr/bin/env python3
"""Regenerates the committed model fixtures and goldens under tests/fixtures/.

Pinned versions (tools/requirements-fixtures.txt): torch==2.11.0, torchaudio==2.11.0,
transformers==5.24.0, tokenizers==0.23.3, safetensors==0.8.0. The script refuses to run with
other versions unless --any-version is given, because goldens from another version may differ
in the last bits and then nobody can tell a regression from a version drift.

    python -m venv /tmp/fx && /tmp/fx/bin/pip install -r tools/requirements-fixtures.txt
    /tmp/fx/bin/python tools/make_fixtures.py            # every generator
    /tmp/fx/bin/python tools/make_fixtures.py fbank ast  # only these

Generator modules: every ``tools/fixtures/<name>.py`` whose name does not start with ``_`` is a
generator and must define

    def generate(root: pathlib.Path) -> None

where ``root`` is ``tests/fixtures``. A generator writes

* ``root/models/<model>/``: a tiny random-initialised checkpoint as ``save_pretrained`` leaves it
  (config.json, model.safetensors; tokenizer.json for text models), and
* ``root/golden/<name>.safetensors``: the inputs it fed and the outputs it expects,

and must be deterministic: call ``_common.seed(…)`` first and draw every random number from torch
(CPU). Helpers shared by the generators live in ``tools/fixtures/_common.py``. Everything is tiny:
the whole repository must stay under 5 MB, so keep each generator's output to a few hundred KB.
"""

import argparse
import importlib
import importlib.util
import pathlib
import sys

PINNED = {"torch": "2.11.0", "torchaudio": "2.11.0", "transformers": "5.24.0"}

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent / "tests" / "fixtures"


def check_versions() -> list[str]:
    problems = []
    for name, want in PINNED.items():
        mod = importlib.import_module(name)
        have = mod.__version__.split("+")[0]
        if have != want:
            problems.append(f"{name} {mod.__version__} (want {want})")
    return problems


def load_generator(name: str):
    # Loaded by path under a private name: `ast` and others would otherwise resolve to the stdlib.
    path = HERE / "fixtures" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"sera_fixture_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="generators to run (default: all)")
    ap.add_argument("--any-version", action="store_true", help="run even if versions differ from the pins")
    args = ap.parse_args()

    problems = check_versions()
    if problems and not args.any_version:
        print("version mismatch: " + ", ".join(problems) + "; install tools/requirements-fixtures.txt", file=sys.stderr)
        return 2

    sys.path.insert(0, str(HERE / "fixtures"))
    available = sorted(p.stem for p in (HERE / "fixtures").glob("*.py") if not p.stem.startswith("_"))
    names = args.names or available
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"unknown generator(s) {unknown}; available: {available}", file=sys.stderr)
        return 2
    (ROOT / "models").mkdir(parents=True, exist_ok=True)
    (ROOT / "golden").mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f"== {name}", flush=True)
        load_generator(name).generate(ROOT)
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file() and ("models" in p.parts or "golden" in p.parts))
    print(f"tests/fixtures/models + golden: {total / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
