"""Workers: claim jobs from the store and run them (score now; report and deliver in issue 5)."""
