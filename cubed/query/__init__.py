"""The query compiler: parse -> plan -> render, with plain data between the stages."""
