#!/usr/bin/env python3
"""Writes docs/reference/python.md from the installed tripmine package's docstrings and
signatures (`make docs` runs it in the torch test venv; crates/python/tests/test_docs.py fails
when the checked-in page differs from what this prints).

Usage: python scripts/python_reference.py [--out docs/reference/python.md] [--check]
"""
import argparse
import inspect
import sys

import tripmine
import tripmine.pml
import tripmine.ray
import tripmine.torch

MODULES = [tripmine, tripmine.pml, tripmine.torch, tripmine.ray]


def signature(obj):
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def doc(obj):
    return inspect.cleandoc(obj.__doc__ or "").strip()


def block(text):
    """Docstrings keep their layout: shown as preformatted text."""
    return f"```text\n{text}\n```\n" if text else ""


def public_methods(cls):
    for name, member in cls.__dict__.items():
        if name.startswith("_") or not callable(member) or not member.__doc__:
            continue
        yield name, member


def page():
    out = ["# Python\n", "<!-- Generated from the package's docstrings by `make docs`; do not edit. -->\n"]
    for module in MODULES:
        out.append(f"## `{module.__name__}`\n")
        out.append(block(doc(module)))
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                out.append(f"### class `{module.__name__}.{name}{signature(obj)}`\n")
                out.append(block(doc(obj)))
                for method, member in public_methods(obj):
                    out.append(f"#### `{name}.{method}{signature(member)}`\n")
                    out.append(block(doc(member)))
            elif callable(obj):
                out.append(f"### `{module.__name__}.{name}{signature(obj)}`\n")
                out.append(block(doc(obj)))
            else:
                out.append(f"### `{module.__name__}.{name}`\n")
                out.append(f"```text\n{obj!r}\n```\n")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/reference/python.md")
    args = ap.parse_args()
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(page())
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
