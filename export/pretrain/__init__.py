"""`jitnet pretrain`: train the student offline on real labelled images, from several sources at once.

The paper starts online distillation from a JITNet pre-trained on COCO: the
student then only has to specialise to its camera, not learn what a person
looks like from scratch.  This package is that offline step, one module a job:

- :mod:`~export.pretrain.views`: what one training example looks like (the
  supplement's augmentation, :mod:`export.augment`, over :mod:`export.datasets`);
- :mod:`~export.pretrain.splits`: which images train and which validate;
- :mod:`~export.pretrain.loop`: the SGD loop, with the online update's loss
  (per-pixel cross-entropy, 5x weight inside dilated object boxes, 0 where
  the annotation says nothing) and optimizer (SGD with momentum);
- :mod:`~export.pretrain.checkpoint`: the student file and the resume file,
  written atomically every epoch, so a killed run goes on where it stopped;
- :mod:`~export.pretrain.card`: the model card (sources, licences, recipe,
  validation IoU per group, sha256), written once when the run finishes;
- :mod:`~export.pretrain.cli`: the command's flags and its run.

JITNet normalises with batch statistics, so batches larger than one are
fine here even though the device trains and predicts on one frame at a time.
"""
