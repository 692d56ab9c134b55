"""Tasks as plug-ins: one module per kind of task, each declaring its ``TaskSpec``s and
registering them by name (``registry``); the runner, the store and the report use the registry
and never import a task module.

- ``common``: what several kinds share (subsets with a fixed seed, held-out ``-dev`` splits, the
  base-size encoder of the ``full`` profile);
- ``text``: SST-2 (headline, pilot, distillation and compression set-ups, the fully fine-tuned
  teacher);
- ``token``: CoNLL-2003 and the small sparse NER set;
- ``images``: the MNIST-pretrained TinyViT on scikit-learn's digits, single-object localisation,
  image–text matching;
- ``generation``: SmolLM2 on E2E NLG;
- ``styles``: style adapters of the digit denoiser, and the kept adapters they stand for.
"""

from lora_edu.tasks.registry import TaskSpec, register_task, task_names, task_spec

__all__ = ["TaskSpec", "register_task", "task_names", "task_spec"]
