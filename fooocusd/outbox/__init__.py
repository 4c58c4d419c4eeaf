"""The outbox: finished images, each published atomically with a metadata sidecar.

Flow per image: ``render_name`` + ``choose_free_name`` pick a name, ``build_record`` describes
the image, ``write_image_with_sidecar`` publishes the image and then its ``.json`` sidecar.
"""

from fooocusd.outbox.atomic import cleanup_stale_temps, publish_bytes
from fooocusd.outbox.metadata import ImageFacts, a1111_parameters, build_record, fooocus_scheme
from fooocusd.outbox.naming import (
    TEMPLATE_FIELDS,
    choose_free_name,
    name_fields,
    render_name,
    sidecar_path_for,
    validate_template,
)
from fooocusd.outbox.reader import parse_a1111_parameters, read_embedded_metadata
from fooocusd.outbox.writer import extension_for, write_image_with_sidecar

__all__ = [
    "TEMPLATE_FIELDS",
    "ImageFacts",
    "a1111_parameters",
    "build_record",
    "choose_free_name",
    "cleanup_stale_temps",
    "extension_for",
    "fooocus_scheme",
    "name_fields",
    "parse_a1111_parameters",
    "publish_bytes",
    "read_embedded_metadata",
    "render_name",
    "sidecar_path_for",
    "validate_template",
    "write_image_with_sidecar",
]
