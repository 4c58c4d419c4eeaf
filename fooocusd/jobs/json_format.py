"""``.json`` job files: what scripts write most easily, with the keys a ``.toml`` file takes.

- An object is one job: ``{"prompt": "a red fox", "images": 2}``; the aliases other tools use
  work too (Fooocus-API's ``image_number``, ``style_selections``…).
- ``{"jobs": [{…}, {…}], "seed": 7}`` is several jobs sharing the keys beside ``jobs``; a bare
  list ``[{…}, {…}]`` is several jobs with nothing shared.
- A fooocusd sidecar, or Fooocus's own parameters JSON, dropped as it is, makes its image again
  (as when pasted into a ``.txt``: ``pasted_settings``).
"""

from __future__ import annotations

import json
from typing import Any

from fooocusd.errors import InvalidInput
from fooocusd.jobs.pasted_settings import pasted_settings
from fooocusd.jobs.spec import JobSpec
from fooocusd.jobs.toml_format import JobListSyntax, specs_from_document
from fooocusd.jobs.txt_format import pasted_to_spec

JSON_JOBS = JobListSyntax(
    key="jobs",
    label="job",
    not_a_list='give "jobs" a list of objects: {"jobs": [{"prompt": "a fox"}, {"prompt": "an owl"}]}',
    empty='add at least one object to "jobs"',
)


def parse_json(text: str, source_name: str) -> list[JobSpec]:
    """Parse a ``.json`` job file into job specs. Raises ``InvalidInput`` naming the key or position."""
    try:
        document = json.loads(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{source_name} is not valid JSON: {exc.msg}",
            where=f"line {exc.lineno}, column {exc.colno}",
            hint='fix the syntax there; keys and text need double quotes, e.g. {"prompt": "a red fox"}',
        ) from exc
    if isinstance(document, list):
        document = {JSON_JOBS.key: document}
    if not isinstance(document, dict):
        raise InvalidInput(
            f"{source_name}: a JSON job file holds an object or a list of objects, not {_kind(document)}",
            where="the file",
            hint='write {"prompt": "a red fox"}, or a list of such objects',
        )
    if _is_recipe(document):
        lines = text.removeprefix("\ufeff").splitlines()
        pasted = pasted_settings(lines, source_name)
        if pasted is not None:
            return [pasted_to_spec(pasted, lines, source_name)]
    return specs_from_document(document, source_name, JSON_JOBS)


def _is_recipe(document: dict[str, Any]) -> bool:
    """A fooocusd sidecar, or Fooocus's parameters: keys no job file of ours would use."""
    sidecar = "schema" in document and "input_file" in document
    fooocus = "base_model" in document and ("resolution" in document or "metadata_scheme" in document)
    return sidecar or fooocus


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__
