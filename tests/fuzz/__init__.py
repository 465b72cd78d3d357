"""Fuzz tests of every file and value pfdeploy reads (see harness.py)."""
