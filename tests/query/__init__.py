"""Tests of the query request parser and the date module."""
