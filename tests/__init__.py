"""Tests for edd-gateway, run with trial."""
