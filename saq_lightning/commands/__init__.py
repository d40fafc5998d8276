"""Pipeline subcommands (see ``saq_lightning.cli.PIPELINE_COMMANDS``)."""
