"""The training side of lora_edu: one loop, and the ``finetune_*`` function of each kind of task.

Read it in this order (each module imports only those above it, plus the layers below training:
``config``, ``defaults``, ``lora``, ``models``, ``data``, ``generate``, ``distill``):

* ``metrics``: scores of predictions (accuracy, entity F1, class shares, the collapse rule);
  numpy only, no torch;
* ``loop``: seeding, ``prepare_model`` (which parameters train for each method), ``fit`` (the
  one training loop), ``predict`` and the evaluation helpers, the batch builders (collates);
* ``run``: the settings of one ``finetune_*`` call as objects (``TrainSettings``,
  ``LoopSettings``) and ``_run``, which trains with them and writes the record;
* ``chunked_loss``: a causal LM's next-token loss a few hundred tokens at a time (memory);
* ``text`` (sentence and token classification), ``images`` (TinyViT: ``finetune_vit`` and
  ``pretrained_vit``), ``causal_lm`` (prompt → response): one kind of task each.

``lora_edu.train`` re-exports every public name of these modules: import from there. This
package's ``__init__`` imports nothing, so importing one module never loads the others.
"""
