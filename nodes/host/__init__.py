"""The ComfyUI integration: everything that speaks the host's protocols, so that ``nodes/`` shows only the nodes and
``guidance/`` only the mathematics. A map, in the order a call travels:

* ``backend.py`` — the model side: which attention layers a model has (UNet attn2 layers, DiT joint blocks), their
  levels, and how the routers are installed on a clone (:class:`~.backend.Backend`, one adapter per network kind).
* ``routers.py`` — the stateless patches on those layers (UNet attn2 replace, DiT block replace and attention
  override, Modulation's attn1 replace): each attention call, read from ComfyUI's options into one
  :class:`~...guidance.attention.LayerCall`, goes to the run's observers and edits.
* ``attach.py`` / ``context.py`` — a method attached to a clone (its ``OUTER_SAMPLE`` wrapper) and the run context
  that wrapper creates for each sampling run (the :class:`~.context.Session`, found by the routers under
  ``transformer_options[PASS_KEY]``); finished runs publish records to a :class:`~.context.RunBoard`.
* ``guided.py`` — what each kind of GUIDANCE (or a capture) attaches.
* ``gradient_run.py`` — gradient guidance's per-run state and its SAMPLER_SAMPLE wrapper; ``sampler_control.py`` (where
  an update lands in each sampler), ``samplers.py`` (which sampler takes which path), ``gradient_pass.py`` (the extra
  positive-only pass with graph), ``fast.py`` (fast mode's CALC_COND_BATCH wrapper), ``weights.py`` (inference
  tensors), ``progress.py`` (the progress bar).
* ``clip.py`` (the text encoders' self-attention), ``words.py`` / ``spacy_parser.py`` (subjects and groups from
  words), ``inputs.py`` (the inputs the method nodes share), ``render.py`` (images of maps and plots).

Modules without ComfyUI imports (``context.py``, ``routers.py``, ``sampler_control.py``) are tested without the host.
"""
