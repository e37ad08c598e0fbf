"""The end-to-end fallback: a trainable backbone and any stage-two head trained from decoded videos, made
cheaper by multigrid batch shapes (Wu et al., CVPR 2020; reference/methods.md §4).

    videos --stages.video (decode, clip-consistent augmentation at the iteration's shape)--> pixels
      --stages.models backbone (all or the last N blocks learn; pos-emb resized to the crop)--> tensors
      --stages.train head (temporal pos-emb resized to the clip length)--> logits
      --stages.train.loop.fit (the schedule of multigrid.py: shapes per iteration, LR per step)

Modules: ``multigrid`` (the schedule, pure), ``config`` (typed config), ``data`` (schedule-following
batches), ``model`` (backbone + head), ``stage`` (``run_e2e``). A checkpoint's backbone feeds
``stages.extract`` (``backbone.weights_file``) and its head initialises stage two (``head.init_from``).
"""
