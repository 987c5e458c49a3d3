"""Validates kiln's OpenAPI document against the OpenAPI 3.1 specification.

usage: python3 openapi_check.py BASE_URL   (e.g. http://127.0.0.1:8000)
"""
import json
import sys
import urllib.request

from openapi_spec_validator import validate

with urllib.request.urlopen(f"{sys.argv[1]}/openapi.json") as response:
    document = json.load(response)
if not document["openapi"].startswith("3.1"):
    sys.exit(f"FAILED: openapi is {document['openapi']}, not 3.1")
validate(document)
print(f"openapi {document['openapi']}: valid, {len(document['paths'])} paths")
