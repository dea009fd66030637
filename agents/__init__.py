"""LangGraph agents: the graphs, their state and their prompts (prompts live in ``prompts/``)."""
