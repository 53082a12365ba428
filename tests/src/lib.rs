//! Whole-system tests for kmm-fleet; the tests live under `tests/tests/`.
