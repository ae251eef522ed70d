"""``python -m gradcheck_service.report``: regenerate the committed JSON Schema."""

from .schema import SCHEMA_PATH, write_json_schema

write_json_schema()
print(SCHEMA_PATH)
