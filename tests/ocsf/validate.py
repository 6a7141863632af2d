#!/usr/bin/env python3
"""Validates OCSF events (one JSON object per line) against the OCSF 1.8.0 schema.

The schema is schema-1.8.0.json beside this file: the schema as the `ocsf-lib` package
(PyPI, `python3 -m ocsf.compile`) compiles it from the ocsf-schema repository at its v1.8.0
release, cut down to what validation reads (classes, objects, types; for each attribute its
type, requirement, array-ness, enum values and profile).

Checked for every event, recursively through objects: the class exists (class_uid), the
category and type_uid agree with it, every required attribute is there (profile attributes
only when metadata.profiles names the profile), no attribute the class or object does not
define, every value of the attribute's type (integers, strings, booleans, floats, objects,
arrays), and every enum value one the schema lists (`unmapped` and other `object` attributes
are free-form, as OCSF says). Exit status 1 with one line per problem; 0 when every event is
valid.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

with open(os.path.join(HERE, "schema-1.8.0.json"), encoding="utf-8") as f:
    SCHEMA = json.load(f)

CLASSES = {c["uid"]: (name, c) for name, c in SCHEMA["classes"].items()}
INTEGER = {"integer_t", "long_t", "timestamp_t", "port_t"}
NUMBER = {"float_t"}
BOOLEAN = {"boolean_t"}


def base_type(t):
    """A scalar type's base (e.g. ip_t -> string_t), or None for an object name."""
    seen = set()
    while t in SCHEMA["types"] and t not in seen:
        seen.add(t)
        parent = SCHEMA["types"][t].get("type")
        if not parent:
            return t
        t = parent
    return t if t.endswith("_t") else None


def check_value(path, attr, value, profiles, problems):
    t = attr["type"]
    if attr.get("is_array"):
        if not isinstance(value, list):
            problems.append(f"{path}: not an array")
            return
        for i, v in enumerate(value):
            check_scalar_or_object(f"{path}[{i}]", t, attr, v, profiles, problems)
        return
    check_scalar_or_object(path, t, attr, value, profiles, problems)


def check_scalar_or_object(path, t, attr, value, profiles, problems):
    if t == "object":
        if not isinstance(value, dict):
            problems.append(f"{path}: not an object")
        return
    if t == "json_t":
        return
    if t in SCHEMA["objects"]:
        if not isinstance(value, dict):
            problems.append(f"{path}: not an object ({t})")
            return
        check_object(path, SCHEMA["objects"][t]["attributes"], value, profiles, problems)
        return
    b = base_type(t)
    if b in INTEGER:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif b in NUMBER:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif b in BOOLEAN:
        ok = isinstance(value, bool)
    elif b == "string_t":
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        problems.append(f"{path}: {value!r} is not of type {t}")
        return
    enum = attr.get("enum")
    if enum and str(value) not in enum:
        problems.append(f"{path}: {value!r} is not one of {sorted(enum)}")


def check_object(path, attributes, value, profiles, problems):
    for name, attr in attributes.items():
        if attr.get("requirement") == "required" and name not in value:
            if attr.get("profile") and attr["profile"] not in profiles:
                continue
            problems.append(f"{path}.{name}: required, missing")
    for name, v in value.items():
        if name not in attributes:
            problems.append(f"{path}.{name}: not an attribute of this class or object")
            continue
        check_value(f"{path}.{name}", attributes[name], v, profiles, problems)


def check_event(event):
    problems = []
    if not isinstance(event, dict):
        return ["not a JSON object"]
    uid = event.get("class_uid")
    if uid not in CLASSES:
        return [f"class_uid {uid!r} is no OCSF 1.8.0 class"]
    name, cls = CLASSES[uid]
    profiles = set(event.get("metadata", {}).get("profiles", []) or [])
    check_object(name, cls["attributes"], event, profiles, problems)
    if event.get("category_uid") != uid // 1000:
        problems.append(f"{name}.category_uid: {event.get('category_uid')!r}, the class's is {uid // 1000}")
    activity = event.get("activity_id")
    if isinstance(activity, int) and event.get("type_uid") != uid * 100 + activity:
        problems.append(f"{name}.type_uid: {event.get('type_uid')!r}, not class_uid * 100 + activity_id")
    if event.get("metadata", {}).get("version") != SCHEMA["version"]:
        problems.append(f"{name}.metadata.version: not {SCHEMA['version']}")
    return problems


def main():
    bad = 0
    count = 0
    for path in sys.argv[1:]:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                count += 1
                try:
                    event = json.loads(line)
                except ValueError as e:
                    print(f"{path}:{number}: not JSON: {e}")
                    bad += 1
                    continue
                for problem in check_event(event):
                    print(f"{path}:{number}: {problem}")
                    bad += 1
    if count == 0:
        print("no events")
        return 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
