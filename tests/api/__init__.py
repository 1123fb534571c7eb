"""Tests of cubed.api."""
