"""The data model: YAML files -> validated, compiled cubes."""
