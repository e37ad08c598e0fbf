"""Preloaded first by stage one's fork server (never imported by the extraction process itself): from
here on, the fork server dies with the process that started it (``lifeline.die_with_parent``)."""

from stages.extract.lifeline import die_with_parent

die_with_parent()
