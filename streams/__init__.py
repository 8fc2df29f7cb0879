"""segflow's streaming shell: event contracts, topics, the Faust app, the CLI."""
