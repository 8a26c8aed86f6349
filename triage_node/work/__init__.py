"""Workers: claim jobs from the store and run them (score, report, deliver)."""
