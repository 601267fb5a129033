"""`tandem operator`: flags, kopf settings (peering, progress storage) and the CLI dispatch."""

from __future__ import annotations

import argparse
import logging

import kopf
import pytest

from tandem import cli as tandem_cli
from tandem_operator import cli
from tandem_operator.context import OperatorOptions, configure_settings


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_become_options():
    options = cli.options_from_args(_args("-n", "serving", "-n", "batch", "--peering", "tandem",
                                          "--priority", "5", "--worker-image", "img:2"))
    assert options.namespaces == ["serving", "batch"] and not options.is_clusterwide
    assert (options.peering_name, options.priority, options.worker_image) == ("tandem", 5, "img:2")
    assert cli.options_from_args(_args("-A", "--liveness-port", "0")).liveness_port is None


@pytest.mark.parametrize("argv", [(), ("-A", "-n", "serving")])
def test_the_watched_namespaces_must_be_one_choice(argv, capsys):
    assert cli.run(_args(*argv)) == 2
    assert "namespaces" in capsys.readouterr().err


def test_peering_is_clusterwide_and_mandatory_when_named():
    settings = kopf.OperatorSettings()
    configure_settings(settings, OperatorOptions(namespaces=["serving"], peering_name="tandem",
                                                 priority=10))
    assert settings.peering.clusterwide and settings.peering.mandatory
    assert (settings.peering.name, settings.peering.priority) == ("tandem", 10)
    assert not settings.peering.standalone
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings.scanning.disabled and settings.posting.level == logging.INFO

    standalone = kopf.OperatorSettings()
    configure_settings(standalone, OperatorOptions(is_clusterwide=True))
    assert standalone.peering.standalone


def test_tandem_cli_dispatches_the_operator_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        tandem_cli.main(["operator", "--help"])
    assert exit_info.value.code == 0
    assert "--peering" in capsys.readouterr().out
