#!/usr/bin/env python3
"""Makes schema-1.8.0.json from a compiled OCSF schema.

    pip install ocsf-lib==0.10.4
    git clone <the ocsf-schema repository>; git -C ocsf-schema checkout 3dcb905d  # v1.8.0 prep
    python3 -m ocsf.compile ocsf-schema > ocsf-1.8.0.json
    python3 make_schema.py ocsf-1.8.0.json

Keeps what validate.py reads: the version; per class its uid and attributes, per object its
attributes (each with type, requirement, is_array, enum values, profile); the types' parents.
"""

import json
import os
import sys


def slim(attr):
    out = {k: attr[k] for k in ("type", "requirement", "is_array", "profile", "object_type") if attr.get(k) is not None}
    if attr.get("enum"):
        out["enum"] = {k: {} for k in attr["enum"]}
    return out


def main(path):
    with open(path) as f:
        s = json.load(f)
    out = {
        "version": s["version"],
        "classes": {
            name: {"uid": c["uid"], "category_uid": c.get("category_uid"), "attributes": {k: slim(a) for k, a in c["attributes"].items()}}
            for name, c in s["classes"].items()
        },
        "objects": {name: {"attributes": {k: slim(a) for k, a in o["attributes"].items()}} for name, o in s["objects"].items()},
        "types": {k: {"type": v.get("type")} if isinstance(v, dict) else {} for k, v in s["types"].items()},
    }
    data = (json.dumps(out, sort_keys=True, indent=1) + "\n").encode()
    target = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"schema-{s['version']}.json")
    with open(target, "wb") as f:
        f.write(data)
    print(f"{target}: {len(data)} bytes of schema")


if __name__ == "__main__":
    main(sys.argv[1])
