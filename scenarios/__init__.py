"""Scripted evaluation scenarios: the YAML format, graders, runner and built-in suites."""
