"""Tests of cubed.model."""
