"""Everything between files and tensors, and the Ray jobs that run it.

    config.py, presets/  the one run config (typed, validated) and its presets
    constants.py         signal and symbolic constants, with units
    io/                  storage URIs (local, s3://), audio decoding, written scores (notation),
                         performance MIDI, note arrays, corpus readers, the labels-table reader
    features/            pure per-recording transforms, no Ray: CQT, OctupleMIDI, transcription,
                         alignment, note attributes, pseudo-labels, segments, augmentation,
                         splits, the Parquet row contract, and the processor (recording -> rows)
    preprocess.py        Ray Data: corpus -> feature shards
    training/            batches, the per-worker loop (plain torch), the TorchTrainer driver
    evaluation/          metrics, baselines, plots, and checkpoint + features -> report
    demo_corpus/         the generated demo corpus: pieces, renditions, deviations, labels

Ray is imported only by the job drivers (preprocess.py, training/run.py).
"""
