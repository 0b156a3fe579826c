"""Test support: fixtures and helpers that start real parts."""
