"""Chain-of-thought tools (think, calculator, search_memory, remember, final_answer).

``Tool`` and ``@tool`` define a tool; ``action_schema``/``parse_action`` turn a tool list into the one JSON
schema the model's next action must follow, and the model's JSON back into a call.
"""

from strop.tools.base import Tool, ToolError, action_schema, parse_action, tool
from strop.tools.builtin import BUILTIN_TOOLS, think
from strop.tools.calculator import CalculatorError, calculator, evaluate

__all__ = ["BUILTIN_TOOLS", "CalculatorError", "Tool", "ToolError", "action_schema", "calculator", "evaluate",
           "parse_action", "think", "tool"]
