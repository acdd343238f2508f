"""Sensor rules: a safe condition language, prompt templates, and the rule set."""

from appliance.rules.expr import Condition, ExpressionError, parse_condition
from appliance.rules.ruleset import RuleSet, Trigger, event_topic
from appliance.rules.template import PromptTemplate, parse_template

__all__ = ["Condition", "ExpressionError", "PromptTemplate", "RuleSet", "Trigger",
           "event_topic", "parse_condition", "parse_template"]
