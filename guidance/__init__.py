"""Pure-torch core of Attention Align: maps, losses, schedules and the update loop. No ComfyUI imports."""
