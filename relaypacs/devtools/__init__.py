"""Developer tools: synthetic DICOM studies and hostile files (:mod:`relaypacs.devtools.synth`)."""
