"""Generated data with known answers: region-feature collections for tests and training smoke runs
(:mod:`~dns_tf.synthetic.features`) and labelled collections of real video files for the demo
(:mod:`~dns_tf.synthetic.videos`)."""
