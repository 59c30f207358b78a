"""The PACS over DICOMweb: search (QIDO-RS), retrieve into memory (WADO-RS) and store (STOW-RS), with clear errors;
and a local Orthanc for development and tests (:mod:`.orthanc`)."""
