"""The layering of the code (``.importlinter``) and the command line's one-module-per-command."""

import argparse
import configparser
import pathlib
import pkgutil
import subprocess
import sys

import pytest
from importlinter.cli import lint_imports

import dns_tf
from dns_tf import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
APPS = {"dns_tf.cli", "dns_tf.demo", "dns_tf.bench"}


def test_import_contracts_are_kept(monkeypatch):
    monkeypatch.chdir(REPO)
    assert lint_imports(config_filename=str(REPO / ".importlinter"), no_cache=True) == 0


def test_the_library_contract_covers_every_library_module():
    """A new module of ``dns_tf`` is either listed as library (and held to its contract) or is
    one of the apps; it cannot slip between the two."""
    config = configparser.ConfigParser()
    config.read(REPO / ".importlinter")
    library = set(config["importlinter:contract:library"]["source_modules"].split())
    top_level = {f"dns_tf.{module.name}" for module in pkgutil.iter_modules(dns_tf.__path__)}
    assert top_level == library | APPS, (top_level - library - APPS, library - top_level)


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_command_module_registers_its_command(name):
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    cli.command_module(name).register(subparsers)
    assert list(subparsers.choices) == [name]
    assert cli.COMMANDS[name] in " ".join(parser.format_help().split())


def test_help_and_light_commands_do_not_load_tensorflow():
    code = ("import sys; from dns_tf.cli import build_parser; build_parser('');"
            "build_parser('download'); print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
