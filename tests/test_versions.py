"""chatd/versions.py: the fork server's classes and module namespaces get their version
numbers before it forks. Run in a fresh interpreter, where a class made and a module set
up have none until something caches a lookup of theirs; the fields are read where
CPython 3.11-3.13 keep them on 64-bit builds (tp_version_tag, and dk_version of the
namespace's keys)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

SCRIPT = r"""
import ctypes, json, sys, types
from chatd import versions

class Thing:
    def method(self):
        return 1

class Other(Thing):
    pass

module = types.ModuleType("a_probe_module")
module.value = 1
sys.modules[module.__name__] = module

def tag(cls):  # PyTypeObject.tp_version_tag
    return ctypes.c_uint.from_address(id(cls) + 384).value

def keys_version(namespace):  # PyDictObject.ma_keys -> PyDictKeysObject.dk_version
    keys = ctypes.c_void_p.from_address(id(namespace) + 32).value
    return ctypes.c_uint32.from_address(keys + 12).value

def fields():
    return [tag(Thing), tag(Other), keys_version(module.__dict__)]

before = fields()
classes, modules = versions.assign()
print(json.dumps({"before": before, "after": fields(), "classes": classes,
                  "modules": modules, "results": [Other().method(), module.value]}))
"""


@pytest.mark.skipif(struct.calcsize("P") != 8 or sys.implementation.name != "cpython",
                    reason="the fields are read where 64-bit CPython keeps them")
def test_classes_and_module_namespaces_get_their_versions() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60, check=True)
    out = json.loads(done.stdout)
    assert out["before"] == [0, 0, 0]  # none yet: what a session would write
    assert all(out["after"]), out
    assert out["classes"] > 100 and out["modules"] > 10
    assert out["results"] == [1, 1]  # and they work as before
