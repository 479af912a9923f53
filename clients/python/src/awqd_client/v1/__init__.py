"""Generated from proto/awq/v1 by tools/protogen.py; do not edit."""
