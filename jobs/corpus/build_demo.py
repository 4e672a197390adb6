"""Build jobs/corpus/demo.txt: docstrings of Python standard-library modules, offline and reproducibly.

    .venv/bin/python jobs/corpus/build_demo.py            # writes jobs/corpus/demo.txt
    .venv/bin/python jobs/corpus/build_demo.py --check    # exit 1 if the checked-in file differs

Source: the ``.py`` files of the running Python's standard library (``sysconfig`` "stdlib"),
read with :mod:`ast` (nothing is imported or executed). Every module, class and function
docstring of the modules in ``MODULES`` is written, in source order (at most ``PER_MODULE`` bytes
per module, ``LIMIT`` in all), as::

    <module>.<qualified name>
    <docstring, as inspect.cleandoc leaves it>
    <blank line>

Licence: the Python standard library and its docstrings are under the Python Software Foundation
License Version 2 (PSF-2.0), a permissive, GPL-compatible licence (see LICENSE.txt beside the
stdlib). ``MODULES`` leaves out the few pure-Python modules that carry a licence of their own
(asynchat, asyncore, http.cookies, trace, uu, xmlrpc) and the test suite.

Docstrings change between Python versions, so the output is checked in (with the version that
built it in jobs/corpus/README.md) and the demo trains on the same bytes on every machine.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import sys
import sysconfig
from pathlib import Path

OUT = Path(__file__).with_name("demo.txt")
LIMIT = 300_000  # bytes: the demo trains on 2 CPUs in minutes
PER_MODULE = 6_000  # bytes at most from one module
MODULES = [
    "abc", "argparse", "base64", "bisect", "calendar", "cmd", "codecs", "collections/__init__", "colorsys",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "difflib", "enum", "filecmp", "fnmatch",
    "fractions", "functools", "getopt", "gettext", "glob", "gzip", "heapq", "hmac", "html/__init__",
    "inspect", "ipaddress", "json/__init__", "json/decoder", "json/encoder", "locale", "logging/__init__",
    "mimetypes", "numbers", "operator", "optparse", "pathlib", "pprint", "queue", "random", "re/__init__",
    "sched", "secrets", "shlex", "shutil", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "traceback", "types", "typing", "urllib/parse", "uuid",
    "warnings", "weakref", "zipfile",
]


def module_name(rel: str) -> str:
    return rel.removesuffix("/__init__").replace("/", ".")


def docstrings(path: Path, module: str):
    """(qualified name, docstring) of the module and every class and function in it, in source order."""
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc:
                    yield name, doc
                yield from walk(child, name)

    doc = ast.get_docstring(tree, clean=True)
    if doc:
        yield module, doc
    yield from walk(tree, module)


def build(limit: int = LIMIT, per_module: int = PER_MODULE) -> bytes:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out, size = [], 0
    for rel in MODULES:
        taken = 0
        for name, doc in docstrings(stdlib / f"{rel}.py", module_name(rel)):
            entry = f"{name}\n{doc.strip()}\n\n".encode("utf-8")
            if taken + len(entry) > per_module:
                break  # every module gets its share, so the corpus spans them all
            if size + len(entry) > limit:
                return b"".join(out)
            out.append(entry)
            size += len(entry)
            taken += len(entry)
    return b"".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the checked-in file instead of writing it")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    data = build()
    digest = hashlib.sha256(data).hexdigest()
    if args.check:
        same = args.out.read_bytes() == data
        print(f"{args.out}: {'identical' if same else 'DIFFERS'} (Python {sys.version.split()[0]}, sha256 "
              f"{digest[:12]})")
        return 0 if same else 1
    args.out.write_bytes(data)
    print(f"{args.out}: {len(data):,} bytes, sha256 {digest}, Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
