"""Toy compositional world: procedurally drawn scenes of coloured shapes with captions (``toy.scenes``) and an
exact judge that reads an image back into objects and scores it against a prompt (``toy.judge``).

Pure numpy + PIL + stdlib; nothing here imports ComfyUI or torch.
"""
