"""The GLM architecture as standalone, Hub-style code (``configuration_glm`` + ``modeling_glm``).

These modules import only torch and transformers (and each other, relatively): ``save_pretrained``
copies them next to the weights (``auto_map`` in config.json), so an exported ``hf/`` folder loads
with ``trust_remote_code=True`` where pretrainlab is not installed. pretrainlab itself uses them
through :mod:`pretrainlab.models.glm`. Keep this ``__init__`` empty: importing a submodule must not
pull in the other (the configuration is registered on its own, see ``models/registration.py``).
"""
