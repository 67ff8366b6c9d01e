"""The DnS training programs (``dns-tf train``), one module per idea.

``teacher``   ViSiL on labelled triplets (triplet loss + similarity regularisation)
``pairs``     teacher- (or student-) labelled pairs of a collection, authors' pickle layout
``distill``   :class:`~training.distill.Distiller`: students learn the teacher's similarities
``selector``  the selector learns where the coarse and fine students disagree
``trainer``, ``triplets``, ``runner``, ``callbacks``, ``distribute``, ``scoring``: what they share
(custom ``train_step``, ``fit`` with resume and callbacks, ``tf.distribute``, pair scoring)
``config``    the programs' frozen dataclass configs; ``command`` the command line

Nothing is imported here, so ``dns-tf`` starts without TensorFlow.
"""
