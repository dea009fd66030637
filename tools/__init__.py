"""Chain-of-thought tools (think, calculator, search_memory, remember, final_answer)."""
