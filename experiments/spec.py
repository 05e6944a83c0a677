"""The one reader of experiment YAML for every stage: the build, the runner and its siblings
(through experiments/grid.py), aggregation and plotting (analysis/meta.py) and the workflow
(``section``, for workflow/rules/common.smk).

It loads a YAML, resolves ``extends:`` (another experiment's YAML as the base, overridden key by
key as smoke overrides are), validates it against experiments/schema/experiment.schema.yaml, applies its
``smoke:`` overrides (``grid``, ``timing`` and ``filter`` merged field by field, every other key
replaced) and fills in the defaults, returning plain data. PyYAML and jsonschema only, no torch:
analysis and plotting run on machines without it.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SCHEMA_PATH = HERE / "schema" / "experiment.schema.yaml"
MODELS_PATH = HERE / "models.yaml"

# queue_ahead on by default: without it a kernel shorter than its host launch is timed at the
# launch rate (results/repeatability/h200-figure11-queue-ahead); rows say how they were timed.
TIMING_DEFAULTS = {"warmup": 1, "repeats": 3, "calls": 5, "l2_flush": False, "cuda_graph": False, "interleave": False,
                   "queue_ahead": True}
GRID_DEFAULTS = {"chunk_index": "all", "skip_context_below_chunk": True, "page_size": 16}
MEMORY_FILL_DEFAULTS = {"memory_fraction": 0.9}
MERGED_KEYS = ("grid", "timing", "filter")  # smoke merges these field by field; others replace


class ExperimentError(ValueError):
    """Bad experiment input (YAML, schema, model names, shard spec); message names file and field."""


def load_yaml(path) -> object:
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise ExperimentError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ExperimentError(f"{path}: invalid YAML: {e}") from None


def model_catalogue() -> dict:
    """experiments/models.yaml: model name -> whole-model attention shape."""
    return load_yaml(MODELS_PATH) or {}


# ----------------------------------------------------------------------------- validation

def _field_path(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _leaf_errors(err):
    """The most specific error under a oneOf/anyOf failure (its own message is vague): ignore the
    branches whose type does not even match, then take the deepest remaining error."""
    import jsonschema

    if not err.context:
        return [err]
    wrong_branch = {"type", "const", "enum"}
    fitting = [e for e in err.context if not (e.validator in wrong_branch and not e.relative_path)]
    if fitting:
        best = max(fitting, key=lambda e: len(e.relative_path))
    else:
        best = jsonschema.exceptions.best_match(err.context)
    return _leaf_errors(best) if best is not None else [err]


def validate(doc, where, schema=None) -> None:
    """Raise ExperimentError naming every field of ``doc`` the schema rejects (``where`` first)."""
    import jsonschema

    schema = load_yaml(SCHEMA_PATH) if schema is None else schema
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        msgs = []
        for e in errors:
            for leaf in _leaf_errors(e):
                msg = f"{where}: {_field_path(leaf.absolute_path)}: {leaf.message}"
                if msg not in msgs:
                    msgs.append(msg)
        raise ExperimentError("\n".join(msgs))


# ----------------------------------------------------------------------------- reading

def overlay(base: dict, over: dict) -> dict:
    """``base`` with the keys of ``over`` applied: ``grid``, ``timing`` and ``filter`` merged field
    by field, every other key replaced (how smoke overrides and ``extends:`` apply)."""
    out = dict(base)
    for k, v in over.items():
        if k in MERGED_KEYS and isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = copy.deepcopy(v)
    return out


def merge_smoke(doc: dict) -> dict:
    """``doc`` with its ``smoke:`` overrides applied (and the smoke section itself dropped)."""
    return overlay({k: v for k, v in doc.items() if k != "smoke"}, doc.get("smoke") or {})


def base_path(name: str, where) -> Path:
    """The YAML an ``extends: name`` refers to: a paper target (experiments/<name>.yaml) or a
    study (experiments/studies/<name>.yaml)."""
    for candidate in (HERE / f"{name}.yaml", HERE / "studies" / f"{name}.yaml"):
        if candidate.exists():
            return candidate
    raise ExperimentError(f"{where}: extends: no experiment {name!r} (looked for experiments/{name}.yaml and "
                          f"experiments/studies/{name}.yaml)")


def resolve_extends(doc, path, seen=()) -> object:
    """``doc`` with its ``extends:`` base folded in: the base's keys, then ``doc``'s (grid, timing and
    filter merged field by field, the smoke sections merged the same way); the name and description
    are ``doc``'s own. Bases may extend further; a cycle is an error."""
    if not isinstance(doc, dict) or "extends" not in doc:
        return doc
    name = doc["extends"]
    if not isinstance(name, str):
        raise ExperimentError(f"{path}: extends: must be the name of another experiment, got {name!r}")
    base_file = base_path(name, path)
    if base_file.resolve() in seen or base_file.resolve() == Path(path).resolve():
        raise ExperimentError(f"{path}: extends: {name!r} extends back to this file (a cycle)")
    base = resolve_extends(load_yaml(base_file), base_file, (*seen, Path(path).resolve()))
    if not isinstance(base, dict):
        raise ExperimentError(f"{base_file}: top level must be a mapping (the base of {path})")
    out = overlay({k: copy.deepcopy(v) for k, v in base.items() if k not in ("name", "description")},
                  {k: v for k, v in doc.items() if k != "extends"})
    if isinstance(base.get("smoke"), dict) and isinstance(doc.get("smoke"), dict):
        out["smoke"] = overlay(copy.deepcopy(base["smoke"]), doc["smoke"])
    return out


def read_document(path, smoke: bool = False, strict: bool = True) -> dict:
    """The experiment document of ``path`` as plain data, with its smoke overrides when ``smoke``.

    ``strict`` (the runner's reading): the YAML must pass the schema, be named after its file and,
    for a smoke run, have a smoke section; the merged document is validated again. Otherwise (what
    analysis and plotting need): only the YAML is parsed, the overrides are applied if any, and
    a missing field is left to ``meta``'s defaults."""
    path = str(path)
    doc = resolve_extends(load_yaml(path), path)
    if not strict:
        doc = doc or {}
        return merge_smoke(doc) if smoke else {k: v for k, v in doc.items() if k != "smoke"}
    if not isinstance(doc, dict):
        raise ExperimentError(f"{path}: top level must be a mapping, got {type(doc).__name__}")
    schema = load_yaml(SCHEMA_PATH)
    validate(doc, path, schema)
    stem = Path(path).stem
    if doc["name"] != stem:
        raise ExperimentError(f"{path}: name: {doc['name']!r} must equal the file name {stem!r} (targets, raw "
                              f"folders and tables are named after the file)")
    if not smoke:
        return {k: v for k, v in doc.items() if k != "smoke"}
    if not doc.get("smoke"):
        raise ExperimentError(f"{path}: smoke: section missing; a smoke run (CPU, Triton interpreter) needs "
                              f"tiny shapes: add a smoke: section (see experiments/figure11.yaml)")
    doc = merge_smoke(doc)
    validate(doc, f"{path} (with smoke overrides)", schema)
    return doc


def grid_with_defaults(grid: dict) -> dict:
    """A ``grid:`` section with the defaults of its optional fields filled in."""
    grid = {**GRID_DEFAULTS, **grid}
    if isinstance(grid["decode_batch"], dict) and "memory_fill" in grid["decode_batch"]:
        grid["decode_batch"] = {"memory_fill": {**MEMORY_FILL_DEFAULTS, **grid["decode_batch"]["memory_fill"]}}
    return grid


def section(path, key: str, smoke: bool = False):
    """The ``key:`` section of the experiment at ``path`` (with its smoke override in smoke runs),
    or None, also when there is no such file (figure 7's microbenchmark has none). For the
    workflow's ``experiment_section``."""
    if not Path(path).exists():
        return None
    return read_document(path, smoke=smoke, strict=False).get(key)


def meta(path, smoke: bool = False) -> dict:
    """What analysis and plotting need of an experiment: ``name``, ``plot``, ``baseline``,
    ``min_part_fraction`` (0 turns the paper's filter off) and ``method_of`` (label -> registered
    method, for labelled variants), with the smoke overrides when ``smoke``."""
    from kernels.catalogue import DEFAULT_BASELINE, DEFAULT_MIN_PART_FRACTION  # plain data, no torch

    path = Path(path)
    doc = read_document(path, smoke=smoke, strict=False)
    filt = doc.get("filter") or {}
    return {
        "name": doc.get("name", path.stem),
        "plot": doc.get("plot") or "generic",
        "baseline": doc.get("baseline") or DEFAULT_BASELINE,
        "min_part_fraction": float(filt.get("min_part_fraction", DEFAULT_MIN_PART_FRACTION)),
        "method_of": {m["name"]: m["method"] for m in doc.get("methods") or [] if isinstance(m, dict)},
    }


__all__ = ["ExperimentError", "read_document", "resolve_extends", "overlay", "merge_smoke", "validate", "section",
           "meta", "load_yaml", "model_catalogue", "grid_with_defaults", "TIMING_DEFAULTS", "GRID_DEFAULTS", "MEMORY_FILL_DEFAULTS",
           "MERGED_KEYS"]
