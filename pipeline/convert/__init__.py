"""Model conversion steps (plain functions; orchestration lives elsewhere)."""
