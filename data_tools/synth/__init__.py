"""The synthetic JFT-like world (``datascale synth``).

A seeded generator of a small visual world with JFT's statistics: a class
hierarchy of procedurally drawn objects (shape family > colour > texture >
variant), a Zipf-like long tail, multi-label images with controlled label
noise (true labels kept), a dense clean eval set, downstream detection /
segmentation / pose datasets in COCO and VOC formats drawn from the same
world, and planted near-duplicates of downstream test images in the
pretraining pool. Layout: docs/formats.md, "The synthetic world".

Modules: ``config`` (schema), ``vocab`` (classes), ``noise`` (label noise),
``render`` and ``figures`` (drawing), ``scenes`` (placement), ``items`` (one
image of each kind), ``downstream`` (COCO/VOC), ``duplicates`` (planted copies),
``world`` (parallel generation), ``report`` (world.json, card.md), ``cli``
(``datascale synth``).
"""
