"""Configuration: one YAML file loaded into frozen, typed settings in one place."""

from appliance.config.loader import find_config, load_settings, parse_settings
from appliance.config.schema import Settings

__all__ = ["Settings", "find_config", "load_settings", "parse_settings"]
