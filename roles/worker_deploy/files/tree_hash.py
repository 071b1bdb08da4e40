"""Version and content hash of a prng_workers package (i20: same code on every host).

Usage: tree_hash.py SOURCE_DIR   (the folder holding prng_workers/, on the controller)
       tree_hash.py --installed  (the package the running interpreter imports)
Prints one JSON line {"version", "tree_hash", "files", "path"}; exit 2 with an
`error: ...` line when the package cannot be found.
"""

import hashlib
import json
import os
import re
import sys


def tree_hash(pkg_dir):
    h = hashlib.sha256()
    count = 0
    for dirpath, dirnames, filenames in os.walk(pkg_dir):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, pkg_dir).replace(os.sep, "/")
            with open(path, "rb") as fh:
                h.update(rel.encode() + b"\0" + fh.read() + b"\0")
            count += 1
    return h.hexdigest(), count


def main(argv):
    if argv[1:] == ["--installed"]:
        try:
            import prng_workers
        except ImportError as exc:
            sys.stderr.write(f"error: prng_workers not importable: {exc}\n")
            return 2
        pkg_dir = os.path.dirname(os.path.abspath(prng_workers.__file__))
        version = getattr(prng_workers, "__version__", None)
    elif len(argv) == 2:
        pkg_dir = os.path.join(argv[1], "prng_workers")
        try:
            with open(os.path.join(pkg_dir, "__init__.py")) as fh:
                m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", fh.read(), re.M)
        except OSError as exc:
            sys.stderr.write(f"error: no worker package at {argv[1]}: {exc}\n")
            return 2
        version = m.group(1) if m else None
    else:
        sys.stderr.write("error: usage: tree_hash.py SOURCE_DIR | --installed\n")
        return 2
    digest, count = tree_hash(pkg_dir)
    print(json.dumps({"version": version, "tree_hash": digest, "files": count, "path": pkg_dir}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
