"""Near-duplicate audit of downstream test sets against the pretraining pool.

The paper removed every downstream test image with a near-duplicate in JFT
before reporting. This package does that reviewably and at scale:

* :mod:`~data_tools.dedup.embedders`: image -> unit vector, by name
  (``pixels``: model-free DCT descriptor; ``backbone``: pooled features of a
  pretrained ``backbone.pt``, optionally PCA-reduced); decoding in worker
  processes in :mod:`~data_tools.dedup.prepare`; query views (mirror, crops,
  rotations; the pool's stored centre crop) in :mod:`~data_tools.dedup.views`;
* :mod:`~data_tools.dedup.pool`, :mod:`~data_tools.dedup.extract` and
  :mod:`~data_tools.dedup.store`: the pool
  embedded block by block (one block per shard) into float16 ``.npy`` files,
  split across ranks, restartable;
* :mod:`~data_tools.dedup.index`: FAISS exact or IVF-PQ index, built in parts
  and merged on disk; candidates re-scored with exact cosine;
  :mod:`~data_tools.dedup.build` runs the steps of ``dedup index``;
* :mod:`~data_tools.dedup.audit`, :mod:`~data_tools.dedup.calibration`,
  :mod:`~data_tools.dedup.report`, :mod:`~data_tools.dedup.testsets`: per test
  set neighbours, threshold calibration, gallery, cleaned test set; crop
  alignment of borderline pairs on the test side (:mod:`~data_tools.dedup.align`)
  and the pool side (:mod:`~data_tools.dedup.pool_align`);
* :mod:`~data_tools.dedup.heldout`: cross-validated precision and recall of
  the calibrated threshold with Clopper-Pearson intervals;
* :mod:`~data_tools.dedup.labels`: a stratified sample of pairs for a person
  to mark (real data has no ground truth) and the copies left in ``clean/``.

Commands: ``datascale dedup index``, ``datascale dedup audit`` and ``datascale dedup label``
(:mod:`~data_tools.dedup.cli`). Heavy modules (faiss, torch) are imported by
the functions that need them.
"""

STAGE_INDEX = "dedup_index"
STAGE_AUDIT = "dedup_audit"
