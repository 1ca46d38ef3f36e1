"""How runs start: schedules, idempotency keys and concurrency limits (issue 13)."""
