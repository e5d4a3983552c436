"""The config's command-line adapter: flags and a command's own defaults reach the config."""
import argparse

import pytest

from core.config import DistillConfig, add_config_arguments, config_from_args, set_config_defaults


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser


def test_a_commands_own_default_reaches_the_config_and_a_flag_still_wins():
    parser = _parser()
    set_config_defaults(parser, input_scale=0.5)
    assert config_from_args(parser.parse_args([])).input_scale == 0.5
    assert config_from_args(parser.parse_args(["--scale", "0.25"])).input_scale == 0.25
    assert config_from_args(_parser().parse_args([])).input_scale == DistillConfig().input_scale


def test_a_default_for_a_field_that_does_not_exist_is_an_error():
    with pytest.raises(TypeError, match="scale"):
        set_config_defaults(_parser(), scale=0.5)


def test_the_demo_runs_at_half_size():
    from sdk import demo

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    assert config_from_args(parser.parse_args([])).input_scale == 0.5
