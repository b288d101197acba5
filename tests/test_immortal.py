"""chatd/immortal.py: the fork server's heap made immortal where CPython has immortal
objects (3.12, 3.13), left alone elsewhere. Run in a fresh interpreter: what it makes
immortal is never freed."""

from __future__ import annotations

import json
import subprocess
import sys

from chatd import immortal

SCRIPT = r"""
import gc, json, sys
from chatd import immortal

CONSTANT = ("a tuple", "of constants", 1.5)
TABLE = {"key": ["a", "list"]}

class Thing:
    def method(self):
        return ("made", "each call", 2.5)

def refs(obj):
    return sys.getrefcount(obj)

changed = immortal.immortalize()
before = {"func": refs(Thing.method), "const": refs(Thing.method.__code__.co_consts[-1]),
          "table": refs(TABLE), "list": refs(TABLE["key"]), "class": refs(Thing),
          "tuple": refs(CONSTANT)}
fresh = [Thing() for _ in range(3)]
# Immortal objects work as before: mutated, called, dropped.
TABLE["key"].append("more")
TABLE["new"] = fresh[0]
results = [t.method() for t in fresh]
del TABLE["key"]
# immortalize()'s own bookkeeping must not outlive it (made immortal, it never would).
kept = [o for o in gc.get_objects() if type(o) is set and len(o) > 1000]
print(json.dumps({"kept_sets": len(kept), "changed": changed,
                  "supported": immortal.supported(), "refs": before,
                  "fresh": refs(fresh[1]), "table": sorted(TABLE), "results": len(results),
                  "immortal": immortal.IMMORTAL}))
"""


def run() -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout)


def test_the_heap_is_immortal_where_cpython_has_immortal_objects() -> None:
    out = run()
    assert out["table"] == ["new"] and out["results"] == 3
    assert out["kept_sets"] == 0
    assert out["fresh"] < 10  # what is made afterwards is counted as ever
    if not immortal.supported():
        assert out["changed"] == 0
        assert all(n < 100 for n in out["refs"].values())
        return
    assert out["supported"] and out["changed"] > 1000
    assert out["refs"] == {name: out["immortal"] for name in out["refs"]}


def test_supported_on_the_interpreters_with_that_count() -> None:
    expected = sys.version_info[:2] in ((3, 12), (3, 13)) and \
        sys.getrefcount(None) == immortal.IMMORTAL
    assert immortal.supported() == expected
