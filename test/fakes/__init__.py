"""Fake corpora and data dirs in the official layouts, shared by the unit and recipe tests."""
