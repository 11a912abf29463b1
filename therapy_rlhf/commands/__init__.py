"""One module per ``therapy-rlhf`` subcommand (see ``therapy_rlhf.cli``)."""
