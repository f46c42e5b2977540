"""Wire contracts shared by the services: pydantic models, the zoom tool schema, and the
generated JSON Schemas under ``schemas/``."""
