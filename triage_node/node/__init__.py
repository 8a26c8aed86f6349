"""What `serve`, `receive` and `work` start: the node process, scheduler, health, systemd."""
